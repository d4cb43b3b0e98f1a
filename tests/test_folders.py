"""Directory commits (issues #13 and #14): small files packed, times, modes, empty
directories and symbolic links recorded, and the folder back whole through restore and the
mount; git and SQLite work on it; damage in a pack is named by file."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from blockframe import _core
from blockframe.testhook import ENV

from conftest import CONFIG_TOML, Env, data

# The small test geometry, with packs: files under 30 KB go into packs (of at most 32 KiB).
CONFIG = CONFIG_TOML + 'pack_max = "30KB"\n'

T0 = 1_700_000_000_123_456_789  # a recorded mtime, to the nanosecond

# name -> (size, mode); directories and links are made by make_tree.
FILES = {
    "proj/a.txt": (3000, 0o640),
    "proj/run.sh": (700, 0o755),
    "proj/zero.txt": (0, 0o644),
    "proj/sub/b.bin": (20_000, 0o644),
    "proj/sub/deep/c.bin": (150_000, 0o600),  # over pack_max: an object of its own
}
LINKS = {"proj/ln-rel": "sub/b.bin", "proj/ln-out": "/nonexistent/outside"}
DIRS = {"proj": 0o755, "proj/sub": 0o750, "proj/sub/deep": 0o755, "proj/empty": 0o700}


def make_tree(root: Path) -> Path:
    for i, (name, (size, mode)) in enumerate(sorted(FILES.items())):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data(size, seed=i))
        path.chmod(mode)
        os.utime(path, ns=(T0, T0 + i * 1_000_000_007))
    for name, target in LINKS.items():
        (root / name).symlink_to(target)
    for i, (name, mode) in enumerate(sorted(DIRS.items(), key=lambda d: -d[0].count("/"))):
        (root / name).mkdir(exist_ok=True)
        (root / name).chmod(mode)
        os.utime(root / name, ns=(T0, T0 - (i + 1) * 999_999_937))
    return root / "proj"


def tree_of(top: Path) -> dict[str, tuple[str, object, int, int | None]]:
    """Every entry under ``top`` (itself included as "."): kind, content or target, mode,
    mtime (files and directories)."""
    out: dict[str, tuple[str, object, int, int | None]] = {}
    for path in [top, *sorted(top.rglob("*"))]:
        rel = path.relative_to(top).as_posix() or "."
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path), 0, None)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", None, stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        else:
            out[rel] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


@pytest.fixture
def env(tmp_path: Path) -> Env:
    (tmp_path / "config.toml").write_text(CONFIG)
    return Env(tmp_path)


@pytest.fixture
def committed(env: Env) -> Path:
    top = make_tree(env.root / "src")
    r = env.run("commit", "-f", str(top))
    assert r.returncode == 0, r.stderr
    return top


def listing(env: Env) -> dict[str, dict[str, object]]:
    r = env.run("list", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["problems"] == []
    return {o["name"]: o for o in doc["objects"]}


def object_dirs(env: Env) -> set[str]:
    return {p.name for p in env.archive_dir.iterdir() if not p.name.startswith(".")}


def test_a_folder_is_committed_with_its_times_and_modes_small_files_packed(
    env: Env, committed: Path
) -> None:
    objects = listing(env)
    assert set(objects) == set(FILES)
    for i, (name, (size, mode)) in enumerate(sorted(FILES.items())):
        o = objects[name]
        assert (o["size"], o["mode"], o["mtime_ns"]) == (size, mode, T0 + i * 1_000_000_007)
        assert ("pack" in o) == (size < 30_000), name
    # One pack and one object for the big file: two object directories, not one per file.
    assert len(object_dirs(env)) == 2
    packs = {o["pack"] for o in objects.values() if "pack" in o}
    assert len(packs) == 1 and next(iter(packs)).startswith("%2Epack%2F")


def test_restore_of_a_directory_behaves_like_cp_r(env: Env, committed: Path) -> None:
    want = tree_of(committed)
    out = env.root / "out"
    r = env.run("restore", "proj", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert tree_of(out) == want
    # An existing directory receives the tree under its base name.
    into = env.root / "into"
    into.mkdir()
    assert env.run("restore", "proj/", "-o", str(into)).returncode == 0
    assert tree_of(into / "proj") == want
    # Nothing existing is overwritten without --force; with it, the whole tree is replaced.
    (into / "proj" / "a.txt").write_bytes(b"edited")
    r = env.run("restore", "proj", "-o", str(into))
    assert r.returncode != 0 and b"exists" in r.stderr and b"--force" in r.stderr
    assert (into / "proj" / "a.txt").read_bytes() == b"edited"
    assert env.run("restore", "proj", "-o", str(into), "--force").returncode == 0
    assert tree_of(into / "proj") == want
    # A subtree, and no staging left anywhere.
    assert env.run("restore", "proj/sub", "-o", str(env.root / "sub")).returncode == 0
    assert tree_of(env.root / "sub") == tree_of(committed / "sub")
    assert not [p for p in env.root.rglob(".*.blockframe-*")]
    # A directory cannot go to stdout; an unknown one is not found.
    r = env.run("restore", "proj", "-o", "-")
    assert r.returncode == 2 and b"is a directory" in r.stderr
    r = env.run("restore", "nope", "-o", str(env.root / "x"))
    assert r.returncode == 2 and b"no object named 'nope'" in r.stderr


def test_a_second_commit_of_the_same_folder_writes_nothing(env: Env, committed: Path) -> None:
    before = object_dirs(env)
    r = env.run("commit", "-f", str(committed))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().count("unchanged:") == len(FILES)
    assert object_dirs(env) == before


def test_changed_files_conflict_unless_replaced_and_wholly_replaced_packs_go(
    env: Env, committed: Path
) -> None:
    before = object_dirs(env)
    (committed / "a.txt").write_bytes(b"new content")
    r = env.run("commit", "-f", str(committed))
    assert r.returncode == 1
    assert b"proj/a.txt" in r.stderr and b"--replace" in r.stderr
    assert object_dirs(env) == before
    r = env.run("commit", "-f", str(committed), "--replace")
    assert r.returncode == 0, r.stderr
    assert "replaced: proj/a.txt" in r.stdout.decode()
    assert env.run("restore", "proj/a.txt", "-o", "-").stdout == b"new content"
    # The old pack still gives the other files: it stays.
    assert before < object_dirs(env)
    # Once every file of the old pack is replaced, it goes.
    for name, (size, _) in FILES.items():
        if size < 30_000:
            (env.root / "src" / name).write_bytes(b"changed " + name.encode())
    assert env.run("commit", "-f", str(committed), "--replace").returncode == 0
    old_pack = next(d for d in before if d.startswith("%2Epack"))
    assert old_pack not in object_dirs(env)
    out = env.root / "out"
    assert env.run("restore", "proj", "-o", str(out)).returncode == 0
    assert tree_of(out) == tree_of(committed)


def test_the_mount_shows_times_modes_empty_directories_and_links(env: Env, committed: Path) -> None:
    from test_mount import start_mount

    m = start_mount(env, env.root / "mnt")
    try:
        top = env.root / "mnt" / "proj"
        got = tree_of(top)
        want = tree_of(committed)
        assert set(got) == set(want)
        for rel, (kind, content, mode, mtime) in want.items():
            assert got[rel][0] == kind, rel
            assert got[rel][1] == content, rel
            if kind != "link":
                assert got[rel][2] == mode & ~0o222, rel  # write bits cleared
                assert got[rel][3] == mtime, rel
        assert os.readlink(top / "ln-out") == "/nonexistent/outside"
        assert (top / "ln-rel").read_bytes() == (committed / "sub/b.bin").read_bytes()
    finally:
        code, err = m.stop()
    assert code == 0, err


def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # The mount shows files as owned by the current user, but restored trees and test
    # directories may not be: let git read them all.
    env.update(
        GIT_CONFIG_COUNT="1",
        GIT_CONFIG_KEY_0="safe.directory",
        GIT_CONFIG_VALUE_0="*",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def _check_git_and_sqlite(top: Path, log: str) -> None:
    r = _git("--git-dir", str(top / "repo.git"), "log", "--oneline")
    assert r.returncode == 0, r.stderr
    assert r.stdout == log
    r = _git("--git-dir", str(top / "repo.git"), "fsck", "--full")
    assert r.returncode == 0, r.stderr
    assert (top / "repo.git/refs/tags").is_dir()  # empty in the repository: kept
    r = subprocess.run(
        ["sqlite3", f"file:{top / 'db.sqlite'}?immutable=1", "pragma integrity_check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r
    with sqlite3.connect(f"file:{top / 'db.sqlite'}?immutable=1", uri=True) as db:
        assert db.execute("select count(*), sum(n) from t").fetchone() == (500, 124750)


def test_a_git_repository_and_a_sqlite_database_work_through_the_mount_and_restore(
    env: Env,
) -> None:
    from test_mount import start_mount

    work = env.root / "work"
    work.mkdir()
    assert _git("init", "-q", cwd=work).returncode == 0
    for i in range(3):
        (work / f"f{i}.txt").write_text(f"version {i}\n" * 200)
        assert _git("add", ".", cwd=work).returncode == 0
        assert _git("commit", "-q", "-m", f"change {i}", cwd=work).returncode == 0
    top = env.root / "src" / "data"
    top.mkdir(parents=True)
    assert _git("clone", "-q", "--bare", str(work), str(top / "repo.git")).returncode == 0
    log = _git("--git-dir", str(top / "repo.git"), "log", "--oneline").stdout
    assert log.count("\n") == 3
    with sqlite3.connect(top / "db.sqlite") as db:
        db.execute("create table t (n integer, s text)")
        db.executemany("insert into t values (?, ?)", [(i, "x" * i) for i in range(500)])
    db.close()
    _check_git_and_sqlite(top, log)
    r = env.run("commit", "-f", str(top))
    assert r.returncode == 0, r.stderr

    m = start_mount(env, env.root / "mnt")
    try:
        _check_git_and_sqlite(env.root / "mnt" / "data", log)
    finally:
        code, err = m.stop()
    assert code == 0, err
    out = env.root / "restored"
    assert env.run("restore", "data", "-o", str(out)).returncode == 0
    _check_git_and_sqlite(out, log)
    assert tree_of(out) == tree_of(top)


def _pack(env: Env) -> tuple[Path, dict[str, object]]:
    (pack,) = [d for d in env.archive_dir.iterdir() if d.name.startswith("%2Epack")]
    return pack, json.loads((pack / "manifest.json").read_text())


def test_a_file_is_cut_out_of_a_pack_with_the_recipe_of_format_md(
    env: Env, committed: Path
) -> None:
    text = (Path(__file__).parent.parent / "FORMAT.md").read_text()
    section = text[text.index("**Cutting a file out of a pack without BlockFrame.**") :]
    recipe = re.search(r"```sh\n(.*?)```", section, re.S)
    assert recipe is not None
    pack, _ = _pack(env)
    script = (
        recipe.group(1)
        .replace("'%2Epack%2F<32 hex>_<id>'", f"'{pack}'")
        .replace('"photos/a.jpg"', '"proj/sub/b.bin"')
        .replace("of=a.jpg", f"of={env.root / 'cut.bin'}")
        .replace("/tmp/pack", str(env.root / "pack.bin"))
    )
    script = "\n".join(line for line in script.splitlines() if not line.startswith("b3sum"))
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cut = (env.root / "cut.bin").read_bytes()
    assert cut == (committed / "sub/b.bin").read_bytes()
    assert _core.blake3(cut).hex() == listing(env)["proj/sub/b.bin"]["content_hash"]


def test_damage_in_a_pack_is_repaired_or_named_by_file(env: Env, committed: Path) -> None:
    pack, doc = _pack(env)
    stripe = doc["stripes"][0]
    files = [f for f in doc["files"] if f["type"] == "file" and f["size"]]
    # Repairable: one data shard deleted. Restore gives every byte back and repairs it.
    first = pack / stripe["data"][0]["path"]
    first.unlink()
    out = env.root / "out"
    assert env.run("restore", "proj", "-o", str(out)).returncode == 0
    assert tree_of(out) == tree_of(committed)
    assert first.is_file()
    # Beyond repair: every data shard but the first lost (three, with two parity shards).
    # Files wholly in the first shard come back; the others are named, by health and by
    # restore.
    assert len(stripe["data"]) == 4, "the pack is spread over a whole block"
    survivor = 0
    for sh in stripe["data"][1:]:
        (pack / sh["path"]).unlink()
    start = sum(sh["size"] for sh in stripe["data"][:survivor])
    end = start + stripe["data"][survivor]["size"]
    intact = {f["name"] for f in files if start <= f["offset"] and f["offset"] + f["size"] <= end}
    lost = {f["name"] for f in files} - intact
    assert lost, "the geometry must spread the pack over several shards"

    r = env.run("health", "--json")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    (obj,) = [o for o in report["objects"] if o["directory"] == pack.name]
    assert {f["name"] for f in obj["files_lost"]} == lost
    out2 = env.root / "out2"
    r = env.run("restore", "proj", "-o", str(out2))
    assert r.returncode == 1
    for name in lost:
        assert name.encode() in r.stderr
        assert not (out2 / name.removeprefix("proj/")).exists()
    for name in intact:
        assert (out2 / name.removeprefix("proj/")).read_bytes() == (
            committed / name.removeprefix("proj/")
        ).read_bytes()
    # The big file is an object of its own and untouched by the pack's damage.
    assert (out2 / "sub/deep/c.bin").read_bytes() == (committed / "sub/deep/c.bin").read_bytes()


def test_a_folder_of_small_files_takes_little_more_room_than_itself(tmp_path: Path) -> None:
    """The default geometry: at most 1.25x the folder's allocated size (issue #13)."""
    (tmp_path / "config.toml").write_text('[archive]\ndirectory = "archive"\n')
    env = Env(tmp_path)
    top = tmp_path / "src" / "many"
    rng = __import__("random").Random(13)
    for d in range(10):
        for f in range(40):
            path = top / f"d{d}" / f"f{f}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data(rng.randint(1024, 65536), seed=d * 100 + f))
    r = env.run("commit", "-f", str(top))
    assert r.returncode == 0, r.stderr

    def allocated(root: Path) -> int:
        return sum(p.lstat().st_blocks * 512 for p in [root, *root.rglob("*")])

    ratio = allocated(env.archive_dir) / allocated(top)
    assert ratio <= 1.25, ratio
    out = tmp_path / "out"
    assert env.run("restore", "many", "-o", str(out)).returncode == 0
    assert tree_of(out) == tree_of(top)


@pytest.mark.parametrize("point", ["folder-commit:staged", "folder-commit:published"])
def test_a_killed_directory_commit_shows_only_complete_files(env: Env, point: str) -> None:
    top = make_tree(env.root / "src")
    run_env = {k: v for k, v in os.environ.items() if k != "BLOCKFRAME_CONFIG"}
    run_env[ENV] = point
    r = subprocess.run(
        [sys.executable, "-m", "blockframe", "commit", "-f", str(top)],
        cwd=env.root,
        env=run_env,
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == -9
    objects = listing(env)
    # Killed after publishing the first object: exactly that object's files are there,
    # each complete; before publishing: nothing.
    assert len(object_dirs(env)) == (point == "folder-commit:published")
    for name in objects:
        got = env.run("restore", name, "-o", "-")
        assert got.returncode == 0 and got.stdout == (env.root / "src" / name).read_bytes()
    r = env.run("commit", "-f", str(top))
    assert r.returncode == 0, r.stderr
    assert set(listing(env)) == set(FILES)
    shutil.rmtree(env.root / "src")  # the commit is all there is now
    out = env.root / "out"
    assert env.run("restore", "proj", "-o", str(out)).returncode == 0
    assert set(tree_of(out)) == {
        n.removeprefix("proj/") for n in [*FILES, *LINKS, *DIRS] if n != "proj"
    } | {"."}


@pytest.mark.parametrize("point", ["restore-tree:file@1", "restore-tree:staged"])
def test_a_killed_directory_restore_shows_no_output(env: Env, committed: Path, point: str) -> None:
    out = env.root / "out"
    run_env = {k: v for k, v in os.environ.items() if k != "BLOCKFRAME_CONFIG"}
    run_env[ENV] = point
    r = subprocess.run(
        [sys.executable, "-m", "blockframe", "restore", "proj", "-o", str(out)],
        cwd=env.root,
        env=run_env,
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == -9
    assert not out.exists()
    # What the killed restore staged is hidden beside the output, never under its name.
    assert [
        p.name.startswith(".out.blockframe-") for p in env.root.iterdir() if "out" in p.name
    ] == [True]
    assert env.run("restore", "proj", "-o", str(out)).returncode == 0
    assert tree_of(out) == tree_of(committed)


def test_list_json_says_of_files_of_packs_what_their_entries_say(env: Env, committed: Path) -> None:
    r = env.run("list", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    index = env.archive.scan()
    want = [
        {**e.summary(), "directory": e.dirname}
        for e in sorted(index.entries.values(), key=lambda e: e.name)
    ]
    assert doc["objects"] == want
    assert [list(o) for o in doc["objects"]] == [list(o) for o in want]  # the key order too
    assert doc["problems"] == []
    # Every object on a line of its own.
    lines = r.stdout.decode().splitlines()
    assert sum(line.startswith('    {"name": ') for line in lines) == len(FILES)


def test_an_intact_file_of_a_pack_damaged_elsewhere_restores_with_a_warning(
    env: Env, committed: Path
) -> None:
    from conftest import flip

    pack, doc = _pack(env)
    stripe = doc["stripes"][0]
    # Chunk 0 of the last data shard and of both parity shards: beyond parity there, in
    # b.bin's bytes only; a.txt lies wholly in the first data shard.
    for sh in [stripe["data"][3], *stripe["parity"]]:
        flip(pack / sh["path"], 10)
    r = env.run("restore", "proj/a.txt", "-o", "-")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (committed / "a.txt").read_bytes()
    assert b"restored intact, but its pack" in r.stderr and b"health" in r.stderr
    # The file that lost bytes is refused; a tree restore names it and exits 1.
    assert env.run("restore", "proj/sub/b.bin", "-o", "-").returncode == 1
    r = env.run("restore", "proj", "-o", str(env.root / "out"))
    assert r.returncode == 1 and b"proj/sub/b.bin" in r.stderr
    assert (env.root / "out" / "a.txt").read_bytes() == (committed / "a.txt").read_bytes()


def test_a_file_replaced_by_a_link_leaves_no_object_behind(env: Env, committed: Path) -> None:
    before = object_dirs(env)
    (committed / "sub" / "deep" / "c.bin").unlink()
    (committed / "sub" / "deep" / "c.bin").symlink_to("../b.bin")
    assert env.run("commit", "-f", str(committed)).returncode == 1  # a conflict without --replace
    r = env.run("commit", "-f", str(committed), "--replace")
    assert r.returncode == 0, r.stderr
    objects = listing(env)  # no problem reported: the file's object is gone
    assert "proj/sub/deep/c.bin" not in objects
    gone = [d for d in before if d.startswith("proj%2Fsub%2Fdeep%2Fc.bin_")]
    assert gone and not set(gone) & object_dirs(env)
    out = env.root / "out"
    assert env.run("restore", "proj", "-o", str(out)).returncode == 0
    assert os.readlink(out / "sub" / "deep" / "c.bin") == "../b.bin"


def test_each_file_of_a_pack_has_its_own_content_hash(env: Env) -> None:
    """Walk order (a directory's files before the next name) and name order differ, and an
    empty file shares its offset with the next file: each still gets its own hash."""
    top = env.root / "src" / "p"
    (top / "a").mkdir(parents=True)
    (top / "a" / "z").write_bytes(b"")  # walked first, named after p/a.txt
    (top / "a.txt").write_bytes(b"x" * 100)
    (top / "b").write_bytes(b"")
    r = env.run("commit", "-f", str(top))
    assert r.returncode == 0, r.stderr
    objects = listing(env)
    for name in ("p/a/z", "p/a.txt", "p/b"):
        content = (env.root / "src" / name).read_bytes()
        assert objects[name]["content_hash"] == _core.blake3(content).hex(), name


def test_a_fifo_in_a_folder_is_named_and_skipped_the_rest_goes_in(env: Env) -> None:
    top = env.root / "src" / "f"
    top.mkdir(parents=True)
    (top / "a").write_bytes(b"kept")
    os.mkfifo(top / "pipe")
    r = env.run("commit", "-f", str(top))
    assert r.returncode == 2  # a special input file, as for a single-file commit
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "f/pipe" in err[0] and "not a regular file" in err[0]
    assert list(listing(env)) == ["f/a"]
    assert env.run("restore", "f/a", "-o", "-").stdout == b"kept"
