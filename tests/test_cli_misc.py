"""Small CLI contracts: version, help, logging switches."""

from __future__ import annotations

import tomllib
from pathlib import Path

import blockframe

from conftest import Env


def test_version_matches_pyproject(env: Env) -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert blockframe.__version__ == pyproject["project"]["version"]
    r = env.run("--version")
    assert r.returncode == 0 and r.stdout.decode().strip() == f"blockframe {blockframe.__version__}"


def test_help_lists_the_commands(env: Env) -> None:
    r = env.run("--help")
    assert r.returncode == 0
    for command in ("commit", "list", "restore"):
        assert command.encode() in r.stdout


def test_quiet_silences_repairs_and_verbose_is_accepted(env: Env) -> None:
    src = env.file("q.bin", 5000)
    env.run("commit", "-f", str(src))
    (env.object_dir("q.bin") / "parity" / "parity_0.dat").unlink()
    r = env.run("-q", "restore", "q.bin", "-o", "out")
    assert r.returncode == 0 and r.stderr == b""
    assert (env.object_dir("q.bin") / "parity" / "parity_0.dat").exists()
    r = env.run("-v", "list")
    assert r.returncode == 0 and b"q.bin" in r.stdout
