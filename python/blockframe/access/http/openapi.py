"""The OpenAPI 3.0 description of ``blockframe serve`` and its Swagger UI page.

The UI's assets come from the installed ``swagger-ui-bundle`` package (no CDN: servers
are often offline); the page loads them from ``/docs/static/`` and the description from
``/openapi.json``.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from blockframe import __version__
from blockframe.errors import ArchiveError
from blockframe.format.names import NAME_PATTERN

OCTET = "application/octet-stream"


def swagger_ui_dir() -> str:
    """The Swagger UI dist directory shipped by the ``swagger-ui-bundle`` package."""
    vendor = importlib.resources.files("swagger_ui_bundle") / "vendor"
    dists = sorted(p.name for p in vendor.iterdir() if p.name.startswith("swagger-ui-"))
    if not dists:
        raise ArchiveError("swagger-ui-bundle is installed without its dist files")
    return str(vendor / dists[-1])


DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>BlockFrame API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  deepLinking: true
});
</script>
</body>
</html>
"""


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def _err(text: str) -> dict[str, Any]:
    return {"description": text, "content": _json("Error")}


def _bytes_responses(what: str, etag: bool) -> dict[str, Any]:
    binary = {OCTET: {"schema": {"type": "string", "format": "binary"}}}
    common = {
        "Accept-Ranges": {"schema": {"type": "string", "enum": ["bytes"]}, "required": True},
        "Content-Length": {"schema": {"type": "integer", "minimum": 0}, "required": True},
    }
    if etag:
        common["ETag"] = {
            "description": "The file's BLAKE3 content hash, quoted.",
            "schema": {"type": "string"},
            "required": True,
        }
    content_range = {
        "description": "bytes FIRST-LAST/SIZE",
        "schema": {"type": "string"},
        "required": True,
    }
    return {
        "200": {"description": f"The whole {what}.", "headers": common, "content": binary},
        "206": {
            "description": f"The requested range of the {what}.",
            "headers": {**common, "Content-Range": content_range},
            "content": binary,
        },
        "400": _err("Invalid object name (empty, `.` or `..` segment, backslash, control)."),
        "401": _err("Missing or wrong bearer token (when the server has one)."),
        "404": _err("No such object (or shard)."),
        "416": {
            "description": "Range not satisfiable or malformed.",
            "headers": {
                "Content-Range": {
                    "description": "bytes */SIZE",
                    "schema": {"type": "string"},
                    "required": True,
                }
            },
            "content": _json("Error"),
        },
    }


def openapi(secured: bool) -> dict[str, Any]:
    """The OpenAPI 3.0 description of every route (``secured``: a token is required)."""
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "Object name; the slashes of names like `dir/sub/file` are sent as "
        "is. Segments are never empty, `.` or `..`; no backslash or control character.",
        "schema": {"type": "string", "pattern": NAME_PATTERN},
    }
    index = {"in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
    range_header = {
        "name": "Range",
        "in": "header",
        "required": False,
        "description": "`bytes=a-b`, `bytes=a-` or `bytes=-n`. Several ranges: the whole "
        "resource is sent (200).",
        "schema": {"type": "string"},
    }
    if_range = {
        "name": "If-Range",
        "in": "header",
        "required": False,
        "description": "An ETag; the Range applies only if it matches the file's.",
        "schema": {"type": "string"},
    }
    security: list[dict[str, list[str]]] = [{"bearerAuth": []}] if secured else []
    unauthorized = {"401": _err("Missing or wrong bearer token (when the server has one).")}
    file_responses = _bytes_responses("file", etag=True)
    file_responses["500"] = _err(
        "The first bytes of the range are damaged beyond what parity can rebuild. (Damage "
        "found later in a response aborts the connection: the body is short.)"
    )
    file_responses["503"] = _err("The archive is unavailable or changed; retry.")
    shard_responses = _bytes_responses("shard file", etag=False)
    shard_responses["503"] = _err("The shard file cannot be read on the server.")

    def op(op_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {
            "operationId": op_id,
            "summary": summary,
            "security": security,
            "responses": responses,
            **extra,
        }

    file_params = [name, range_header, if_range]
    shard_params = [
        name,
        {**index, "name": "stripe"},
        {**index, "name": "shard", "description": "Data shards first, then parity."},
        range_header,
    ]
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "BlockFrame",
            "version": __version__,
            "description": "Read-only access to a BlockFrame archive. File bytes are verified "
            "against the manifest's BLAKE3 chunk hashes before they are sent.",
        },
        "paths": {
            "/api/files": {
                "get": op(
                    "listFiles",
                    "List the objects, sorted by name.",
                    {
                        "200": {
                            "description": "The objects.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/FileInfo"},
                                    }
                                }
                            },
                        },
                        **unauthorized,
                    },
                )
            },
            "/api/files/{name}": {
                "get": op(
                    "getFile",
                    "Download an object, verified (single byte ranges supported).",
                    file_responses,
                    parameters=file_params,
                ),
                "head": op(
                    "headFile",
                    "Size, ETag and range headers of an object.",
                    file_responses,
                    parameters=file_params,
                ),
            },
            "/api/files/{name}/manifest": {
                "get": op(
                    "getManifest",
                    "The object's manifest (an object named `NAME/manifest` wins).",
                    {
                        "200": {"description": "Manifest JSON.", "content": _json("Manifest")},
                        "400": _err("Invalid object name."),
                        **unauthorized,
                        "404": _err("No such object."),
                    },
                    parameters=[name],
                )
            },
            "/api/files/{name}/shards/{stripe}/{shard}": {
                "get": op(
                    "getShard",
                    "Raw, unverified bytes of one shard file (the client verifies).",
                    shard_responses,
                    parameters=shard_params,
                ),
                "head": op(
                    "headShard",
                    "Size of one shard file as stored on the server.",
                    shard_responses,
                    parameters=shard_params,
                ),
            },
            "/api/health": {
                "get": op(
                    "health",
                    "Object and problem counts, last scrub.",
                    {
                        "200": {"description": "Summary.", "content": _json("Health")},
                        **unauthorized,
                    },
                )
            },
            "/metrics": {
                "get": op(
                    "metrics",
                    "Prometheus metrics (text format 0.0.4).",
                    {
                        "200": {
                            "description": "Metrics.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **unauthorized,
                    },
                )
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "FileInfo": {
                    "type": "object",
                    "required": [
                        "name",
                        "size",
                        "tier",
                        "status",
                        "id",
                        "content_hash",
                        "created",
                        "mtime_ns",
                        "mode",
                    ],
                    "properties": {
                        "name": {"type": "string"},
                        # A file of a pack may be empty; an object never is.
                        "size": {"type": "integer", "minimum": 0},
                        "tier": {"type": "integer", "enum": [1, 2, 3]},
                        "status": {"type": "string", "enum": ["ok", "manifest restored"]},
                        "id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                        "content_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        "created": {"type": "string", "format": "date-time"},
                        "mtime_ns": {
                            "description": "The file's modification time (ns since the "
                            "epoch) as committed; the commit time for objects committed "
                            "without it.",
                            "type": "integer",
                        },
                        "mode": {
                            "description": "The file's permission bits as committed "
                            "(0o644 when not recorded).",
                            "type": "integer",
                            "minimum": 0,
                            "maximum": 4095,
                        },
                        "pack": {
                            "description": "For a file stored in a pack: the pack's "
                            "object directory.",
                            "type": "string",
                        },
                        "volumes_can_lose": {
                            "description": "Volume archives only: how many more whole "
                            "volumes the object can lose with every byte still readable "
                            "(-1: data already lost).",
                            "type": "integer",
                            "minimum": -1,
                        },
                        "scrub": {
                            "description": "The latest `blockframe health` outcome for the "
                            "object, or null if it was never scrubbed.",
                            "type": "object",
                            "nullable": True,
                            "required": ["at", "status", "margin"],
                            "properties": {
                                "at": {"type": "string", "format": "date-time"},
                                "status": {
                                    "type": "string",
                                    "enum": ["healthy", "repaired", "damaged", "unusable"],
                                },
                                "margin": {"type": "integer", "nullable": True},
                            },
                        },
                    },
                },
                "Manifest": {
                    "type": "object",
                    "description": "See FORMAT.md.",
                    "required": ["format", "version", "name", "size", "stripes", "checksum"],
                    "properties": {
                        "format": {"type": "string", "enum": ["blockframe-manifest"]},
                        "version": {"type": "integer"},
                        "name": {"type": "string"},
                        "size": {"type": "integer"},
                        "stripes": {"type": "array", "items": {"type": "object"}},
                        "checksum": {"type": "string"},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["objects", "bytes", "problems", "last_scrub"],
                    "properties": {
                        "objects": {"type": "integer", "minimum": 0},
                        "bytes": {"type": "integer", "minimum": 0},
                        "problems": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "Archive entries skipped (not usable objects).",
                        },
                        "last_scrub": {
                            "type": "string",
                            "format": "date-time",
                            "nullable": True,
                            "description": "Latest time `blockframe health` verified an "
                            "object, or null.",
                        },
                    },
                },
            },
        },
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    return doc
