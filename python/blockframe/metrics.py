"""The process's counters (Prometheus), incremented where the events happen: damage found
and shards rewritten by :class:`blockframe.archive.ArchivedObject`, bytes and requests by
``blockframe serve``, which exposes them at ``/metrics``.

They live in a registry of their own (:data:`REGISTRY`), not prometheus_client's default
one, so an application that embeds blockframe exposes them only if it asks to.
prometheus_client appends ``_total`` to a counter's name: ``bytes_served`` below is
exposed as ``blockframe_bytes_served_total``.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# The text exposition format generate_latest writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = CollectorRegistry(auto_describe=True)

bytes_served = Counter(
    "blockframe_bytes_served",
    "Verified file bytes and raw shard bytes sent.",
    registry=REGISTRY,
)
reads_repaired = Counter(
    "blockframe_reads_repaired",
    "Damaged shards found by reads: the bytes were rebuilt from parity in memory and "
    "the shard queued for repair on disk.",
    registry=REGISTRY,
)
shards_repaired = Counter(
    "blockframe_shards_repaired",
    "Damaged shards rewritten on disk.",
    registry=REGISTRY,
)
integrity_errors = Counter(
    "blockframe_integrity_errors",
    "Reads refused because damage exceeded what parity can rebuild.",
    registry=REGISTRY,
)
streams_aborted = Counter(
    "blockframe_streams_aborted",
    "Responses cut short because a later piece failed.",
    registry=REGISTRY,
)
http_requests = Counter(
    "blockframe_http_requests",
    "HTTP requests answered, by status code.",
    ["status"],
    registry=REGISTRY,
)
connections_closed = Counter(
    "blockframe_connections_closed",
    "Connections serve closed to protect itself, by reason: header_timeout (request "
    "headers too slow), evicted (idle, to make room at the cap), limit (at the cap with "
    "every connection busy: 503), out_of_descriptors (closed at accept), send_timeout (the "
    "client stopped reading).",
    ["reason"],
    registry=REGISTRY,
)
for _reason in ("header_timeout", "evicted", "limit", "out_of_descriptors", "send_timeout"):
    connections_closed.labels(_reason)  # every reason exposed from the start, at 0
objects = Gauge("blockframe_objects", "Objects served.", registry=REGISTRY)


class _Exposed(Collector):
    """The registry less the ``*_created`` samples prometheus_client adds to each counter
    (a start time per series, not one of our metrics), labelled series sorted by label."""

    def collect(self) -> Iterable[Metric]:
        for metric in REGISTRY.collect():
            kept = [s for s in metric.samples if not s.name.endswith("_created")]
            metric.samples = sorted(kept, key=lambda s: sorted(s.labels.items()))
            yield metric


def render() -> bytes:
    """Every metric in the Prometheus text format (:data:`CONTENT_TYPE`)."""
    return generate_latest(_Exposed())
