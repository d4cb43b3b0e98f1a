"""The ``blockframe`` command line. Translates errors into one-line messages and exit codes:
0 success, 1 operational failure (damage, conflict, I/O), 2 usage or config error,
130 interrupted."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from blockframe import __version__
from blockframe.archive import Archive, Entry, RestoreReport, open_location
from blockframe.archive.restore import atomic_output
from blockframe.config import Config, format_size, load_config, token_from
from blockframe.errors import BlockFrameError, NotFoundError, OutputError, UsageError
from blockframe.format.names import display_name

log = logging.getLogger("blockframe")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit 2, as for every other usage error.
        self.exit(2, f"blockframe: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="blockframe", description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--config", metavar="PATH", help="config file (default: see README)")
    p.add_argument("--version", action="version", version=f"blockframe {__version__}")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    noise.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    c = sub.add_parser("commit", help="archive a file or every file under a directory")
    c.add_argument("-f", "--file", required=True, metavar="PATH")
    c.add_argument("-a", "--archive", metavar="DIR")
    c.add_argument("--name", help="object name for a single file (default: its base name)")
    c.add_argument("--replace", action="store_true", help="replace an object of the same name")

    ls = sub.add_parser("list", help="list archived objects")
    ls.add_argument("-a", "--archive", metavar="DIR")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    r = sub.add_parser("restore", help="write a verified copy of an object")
    r.add_argument("name", metavar="NAME")
    r.add_argument("-o", "--output", metavar="PATH", help="file, directory, or - for stdout")
    r.add_argument("-a", "--archive", metavar="DIR")
    r.add_argument("--force", action="store_true", help="overwrite an existing output file")

    mt = sub.add_parser("mount", help="mount the archive read-only (foreground, Ctrl+C unmounts)")
    mt.add_argument(
        "-m",
        "--mountpoint",
        metavar="PATH",
        help="directory (on Windows: a free drive letter such as Z:, or a new directory)",
    )
    source = mt.add_mutually_exclusive_group()
    source.add_argument("-a", "--archive", metavar="DIR")
    source.add_argument("-r", "--remote", metavar="URL", help="a BlockFrame server")
    mt.add_argument(
        "--pin",
        metavar="PIN",
        help="with --remote: the archive's pin (from `serve` or `list --json`); refuse any other",
    )
    mt.add_argument(
        "--allow-other", action="store_true", help="let other users (e.g. an SMB/NFS server) read"
    )

    sv = sub.add_parser("serve", help="share the archive read-only over HTTP (foreground)")
    sv.add_argument("-a", "--archive", metavar="DIR")
    sv.add_argument("-p", "--port", type=int, metavar="PORT", help="default: server.default_port")
    sv.add_argument("--host", metavar="HOST", help="bind address (default: server.host, 127.0.0.1)")
    sv.add_argument(
        "--allow-no-token",
        action="store_true",
        help="serve a non-loopback address without a token (anyone who reaches it reads all)",
    )

    h = sub.add_parser("health", help="scrub, repair and report the whole archive")
    h.add_argument("-a", "--archive", metavar="DIR")
    h.add_argument("--json", action="store_true", help="machine-readable report")
    h.add_argument("--dry-run", action="store_true", help="verify and report only; change nothing")
    h.add_argument(
        "--older-than", metavar="DURATION", help="only objects not verified within (7d, 12h, 30m)"
    )
    h.add_argument("--max-time", metavar="DURATION", help="stop after this long, stalest first")
    return p


class _SafeFormatter(logging.Formatter):
    """Log lines with names and paths escaped (:func:`display_name`): an archive's names
    are data from anyone and must not drive the terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = display_name(record.message)
        return super().formatMessage(record)


def _setup_logging(cfg: Config, args: argparse.Namespace) -> None:
    level = {"trace": logging.DEBUG, "warn": logging.WARNING}.get(
        cfg.logging_level, getattr(logging, cfg.logging_level.upper(), logging.INFO)
    )
    if args.verbose:
        level = logging.DEBUG
    if args.quiet:
        level = logging.ERROR
    handler = logging.StreamHandler()
    handler.setFormatter(_SafeFormatter("blockframe: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # httpx logs every request at INFO: one line per shard range of a remote mount.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on a terminal; nothing when stderr is piped."""
    if not sys.stderr.isatty():
        yield None
        return
    # rich is imported only when drawing: it costs ~30 ms of every start.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)


def _archive(cfg: Config, args: argparse.Namespace) -> Archive:
    """--archive (a directory or s3:// URL), else [archive] volumes, else directory."""
    return open_location(args.archive, cfg)


def cmd_commit(cfg: Config, args: argparse.Namespace) -> int:
    archive = _archive(cfg, args)
    src = Path(args.file)
    if src.is_dir():
        if args.name:
            raise UsageError("--name applies to a single file, not a directory")

        def bar(name: str, size: int) -> Callable[[int], None] | None:
            return None

        results, failures = archive.commit_tree(src, args.replace, bar)
        for res in results:
            _say_commit(res.status, res.name, res.entry.size, res.entry.manifest.tier)
        for name, e in failures:
            _error(f"{name}: {e}")
        return max((e.exit_code for _, e in failures), default=0)
    size = src.stat().st_size if src.is_file() else 0
    with progress_bar(f"commit {src.name}", size) as cb:
        res = archive.commit(src, args.name, args.replace, cb)
    _say_commit(res.status, res.name, res.entry.size, res.entry.manifest.tier)
    return 0


def _say_commit(status: str, name: str, size: int, tier: int) -> None:
    if status == "unchanged":
        print(f"unchanged: {display_name(name)} is already archived with identical content")
    else:
        print(f"{status}: {display_name(name)} ({format_size(size)}, tier {tier})")


def cmd_list(cfg: Config, args: argparse.Namespace) -> int:
    index = _archive(cfg, args).scan()
    entries = sorted(index.entries.values(), key=lambda e: e.name)
    if args.json:
        from blockframe.format.pin import pin_of_docs

        # What `mount --remote URL --pin PIN` checks a server's catalog against.
        pin = pin_of_docs(_pin_docs(entries))
        problems = [{"path": p.path, "reason": p.reason} for p in index.problems]
        out = sys.stdout
        out.write(f'{{\n  "pin": {json.dumps(pin)},\n  "objects": [')
        lines = _object_lines(entries)
        for start in range(0, len(lines), 1000):
            out.write(
                ("\n    " if not start else ",\n    ") + ",\n    ".join(lines[start : start + 1000])
            )
        out.write("\n  ]" if lines else "]")
        out.write(f',\n  "problems": {_json_list(problems)}\n}}\n')
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold")
    table.add_column("NAME")
    table.add_column("SIZE", justify="right")
    table.add_column("TIER", justify="right")
    table.add_column("STATUS")
    spread = any(e.volumes is not None for e in entries)
    if spread:
        table.add_column("CAN LOSE", justify="right")
    for e in entries:
        # Text, not a str: a name like "[red]x" is no markup.
        row: list[str | Text] = [
            Text(display_name(e.name)),
            format_size(e.size),
            str(e.head.tier),
            e.status,
        ]
        if spread:
            n = e.can_lose()
            row.append(f"{n} volume{'s' if n != 1 else ''}" if n >= 0 else "damaged")
        table.add_row(*row)
    Console(highlight=False, soft_wrap=True).print(table)
    for p in index.problems:
        log.warning("skipped %s: %s", p.path, p.reason)
    return 0


def _json_list(items: list[dict[str, str]]) -> str:
    """A list of flat objects as indented JSON, one object per line."""
    if not items:
        return "[]"
    return "[\n    " + ",\n    ".join(json.dumps(i) for i in items) + "\n  ]"


def _object_lines(entries: list[Entry]) -> list[str]:
    """Each entry's ``list --json`` object (:meth:`Entry.summary` plus its directory) as
    one line of JSON. The files of a pack share most fields: those are encoded once per
    pack, and a file adds its name, size, hash, mtime and mode (at 100,000 files this is
    most of what listing costs)."""
    from json.encoder import encode_basestring_ascii as quote

    lines: list[str] = []
    shared: dict[str, tuple[str, str, str]] = {}
    for e in entries:
        m = e.member
        if m is None or e.volumes is not None:
            lines.append(json.dumps({**e.summary(), "directory": e.dirname}))
            continue
        parts = shared.get(e.dirname)
        if parts is None:
            h = e.head
            parts = shared[e.dirname] = (
                f'"tier": {h.tier}, "status": {quote(e.status)}, "id": {quote(h.id)}',
                f'"created": {quote(h.created)}',
                f'"pack": {quote(e.dirname)}, "directory": {quote(e.dirname)}',
            )
        lines.append(
            f'{{"name": {quote(e.name)}, "size": {m.size}, {parts[0]}, '
            f'"content_hash": {quote(m.content_hash)}, {parts[1]}, '
            f'"mtime_ns": {m.mtime_ns}, "mode": {m.mode}, {parts[2]}}}'
        )
    return lines


def _pin_docs(entries: list[Entry]) -> dict[str, str]:
    """Each listed object's part of the pin, once per object (a pack gives many files)."""
    docs: dict[str, str] = {}
    for e in entries:
        if e.head.name not in docs:
            docs[e.head.name] = e.pin_doc()
    return docs


def cmd_restore(cfg: Config, args: argparse.Namespace) -> int:
    archive = _archive(cfg, args)
    entry = None if args.name.endswith("/") else archive.find(args.name)
    if entry is None:
        return _restore_tree(archive, args)
    size = entry.size
    if args.output == "-":
        with progress_bar(f"restore {args.name}", size) as cb:
            report = archive.restore(entry, sys.stdout.buffer, cb)
        sys.stdout.buffer.flush()
    else:
        out = Path(args.output) if args.output else Path(Path(args.name).name)
        if out.is_dir():
            out = out / Path(args.name).name
        if out.exists() and not out.is_file():
            # A device or pipe (/dev/null, a FIFO, a tape): written to, never replaced.
            try:
                with open(out, "wb") as f, progress_bar(f"restore {args.name}", size) as cb:
                    report = archive.restore(entry, f, cb)
            except OSError as e:
                raise OutputError(f"{out}: cannot write: {e.strerror}") from None
            return _restore_outcome(args.name, entry, report)
        if out.exists() and not args.force:
            raise OutputError(f"{out}: already exists (use --force to overwrite)")
        if not out.parent.is_dir():
            raise OutputError(f"{out.parent}: no such directory")
        with progress_bar(f"restore {args.name}", size) as cb, atomic_output(out) as f:
            report = archive.restore(entry, f, cb)
        log.info("restored %s to %s", args.name, out)
    return _restore_outcome(args.name, entry, report)


def _restore_tree(archive: Archive, args: argparse.Namespace) -> int:
    """``restore DIR``: a directory of the name tree, restored like ``cp -r``."""
    from blockframe.archive.restore_tree import destination, restore_tree, subtree

    index = archive.scan()
    try:
        tree = subtree(index, args.name)
    except NotFoundError:
        raise NotFoundError(f"no object named {args.name!r} in {archive.location}") from None
    if args.output == "-":
        raise UsageError(f"{args.name!r} is a directory: it cannot go to stdout")
    final = destination(tree, Path(args.output) if args.output else None)
    total = sum(e.size for e in tree.files.values())
    with progress_bar(f"restore {tree.name}/", total) as cb:
        report = restore_tree(index, tree, final, args.force, cb)
    for name, why in report.failed:
        log.error("%s: not restored: %s", name, why)
    for problem in report.unrepaired:
        log.error("%s: could not repair %s", tree.name, problem)
    for problem in report.unrepaired_elsewhere:
        log.warning(
            "%s: could not repair the pack %s (damage in files of it not restored here or "
            "named above; run `blockframe health`)",
            tree.name,
            problem,
        )
    log.info(
        "restored %s to %s: %d files, %d directories, %d links",
        tree.name,
        final,
        report.files,
        report.dirs,
        report.links,
    )
    return 1 if report.failed or report.unrepaired else 0


def _restore_outcome(name: str, entry: Entry, report: RestoreReport) -> int:
    """The exit code of a file restore, after saying what could not be repaired. A file
    of a pack restored intact is a success even if the pack keeps damage: every byte of
    this file was verified and written, and the loss lies in other files of the pack."""
    # Repairs themselves are logged as they happen (archive.ArchivedObject.repair).
    for problem in report.unrepaired:
        if entry.member is not None:
            log.warning(
                "%s: restored intact, but its pack %s could not be repaired: %s "
                "(other files of the pack lost bytes; run `blockframe health`)",
                display_name(name),
                entry.dirname,
                problem,
            )
        else:
            log.error("%s: could not repair %s", report.name, problem)
    return 1 if report.unrepaired and entry.member is None else 0


def cmd_mount(cfg: Config, args: argparse.Namespace) -> int:
    # Source priority (seed README): --remote, --archive, mount.default_remote,
    # archive.directory.
    remote = args.remote or (None if args.archive else cfg.mount_default_remote or None)
    if args.pin and not remote:
        raise UsageError("--pin is for a remote archive (--remote or mount.default_remote)")
    from blockframe.access.view import ArchiveView, Source

    source: Source
    if remote:
        from blockframe.archive.remote import RemoteArchive

        source = RemoteArchive(remote, token=token_from(cfg.server_token), pin=args.pin)
    else:
        source = _archive(cfg, args)
    mountpoint = Path(args.mountpoint) if args.mountpoint else cfg.mount_default_mountpoint
    # [cache] max_segments counts 32 MiB segments (seed README); the smaller budget wins.
    budget = min(cfg.cache_max_size, cfg.cache_max_segments * 32 * 2**20)
    # A remote archive is repaired by its server (its mount or `health`), not by us.
    view = ArchiveView(source, cache_bytes=budget, repair=not remote)
    if sys.platform == "win32":
        # winfspy when it imports, else the FUSE adapter on WinFsp's FUSE layer.
        from blockframe.access.windows import mount
    else:
        from blockframe.access.fuse import mount
    mount(view, mountpoint, allow_other=args.allow_other)
    print(f"blockframe: unmounted {mountpoint}", file=sys.stderr)
    return 0


def cmd_serve(cfg: Config, args: argparse.Namespace) -> int:
    from blockframe.access.http import app as serve

    port = cfg.server_default_port if args.port is None else args.port
    if not 0 <= port < 65536:
        raise UsageError(f"--port must be 0-65535, got {port}")
    options = serve.ServerOptions(
        host=args.host or cfg.server_host,
        port=port,
        token=token_from(cfg.server_token),
        cors_origins=cfg.server_cors_origins,
        cache_bytes=min(cfg.cache_max_size, cfg.cache_max_segments * 32 * 2**20),
        header_timeout=cfg.server_header_timeout,
        send_timeout=cfg.server_send_timeout,
        max_connections=cfg.server_max_connections,
        allow_no_token=args.allow_no_token,
    )
    serve.check_exposure(options)  # before the archive is opened or anything bound
    serve.run(_archive(cfg, args), options, verbose=args.verbose)
    print("blockframe: server stopped", file=sys.stderr)
    return 0


def cmd_health(cfg: Config, args: argparse.Namespace) -> int:
    from blockframe import health

    def duration(value: str | None, flag: str) -> float | None:
        return None if value is None else health.parse_duration(value, flag)

    options = health.Options(
        dry_run=args.dry_run,
        older_than=duration(args.older_than, "--older-than"),
        max_time=duration(args.max_time, "--max-time"),
    )
    checker = health.Health(open_location(args.archive, cfg), options)
    plan = checker.plan()
    with progress_bar("health", plan.measure() if sys.stderr.isatty() else 0) as cb:
        report = checker.run(plan, cb)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif not (args.quiet and report.exit_code == 0):
        health.print_report(report, verbose=args.verbose)
    return report.exit_code


COMMANDS = {
    "commit": cmd_commit,
    "list": cmd_list,
    "restore": cmd_restore,
    "mount": cmd_mount,
    "serve": cmd_serve,
    "health": cmd_health,
}


def _error(message: str, what: str = "error") -> None:
    """One line on stderr, whatever the message holds (names and paths are escaped)."""
    print(f"blockframe: {what}: {display_name(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``blockframe`` console script."""
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        _setup_logging(cfg, args)
        return COMMANDS[args.command](cfg, args)
    except BlockFrameError as e:
        _error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        print("blockframe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `| head`); not an error of ours.
        # Python's documented recipe: point stdout at devnull so the interpreter's final
        # flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as e:
        _error(str(e))
        return 1
    except Exception as e:
        # A bug of ours: still one line for the user; the traceback with --verbose.
        log.debug("internal error", exc_info=True)
        _error(f"{type(e).__name__}: {e}", "internal error")
        return 1
