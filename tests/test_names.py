"""Names are data from anyone: printed escaped, never interpreted by the terminal or rich."""

from __future__ import annotations

import pytest

from blockframe.format.names import display_name

from conftest import Env

HOSTILE = ["rtl\u202eexe.txt", "csi\u009b2J.txt", "[red]markup[/].txt"]


def test_display_name_escapes_what_a_terminal_would_act_on() -> None:
    assert display_name("plain/ünïcode 名.txt") == "plain/ünïcode 名.txt"
    assert display_name("rtl\u202eexe") == "rtl\\u202eexe"
    assert display_name("csi\u009b2J") == "csi\\x9b2J"
    assert display_name("line\nbreak\x1b[2J") == "line\\nbreak\\x1b[2J"


@pytest.mark.parametrize("name", HOSTILE)
def test_commit_and_list_print_hostile_names_escaped(env: Env, name: str) -> None:
    src = env.file("f.bin", 3000)
    r = env.run("commit", "-f", str(src), "--name", name)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert display_name(name) in out
    assert not any(c in out for c in "\u202e\u009b\x7f")
    r = env.run("list")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    # The name shows as written (escaped), markup included: rich did not interpret it.
    assert display_name(name) in out
    assert not any(c in out for c in "\u202e\u009b\x7f")


@pytest.mark.parametrize("name", ["del\x7f.txt", "back\\slash", "tab\t.txt"])
def test_commit_refuses_names_the_mount_and_serve_cannot_reach(env: Env, name: str) -> None:
    r = env.run("commit", "-f", str(env.file("f.bin", 3000)), "--name", name)
    assert r.returncode == 2
    assert r.stderr.decode() == f"blockframe: error: invalid object name '{display_name(name)}'\n"
    assert env.run("list").stdout.count(b"\n") <= 1 and not list(env.archive_dir.glob("*_*"))


def test_errors_stay_on_one_line(env: Env) -> None:
    env.run("commit", "-f", str(env.file("f.bin", 3000)))
    r = env.run("restore", "no\nsuch\u202ename", "-o", "x")
    assert r.returncode == 2
    assert r.stderr.decode().count("\n") == 1
    assert "\u202e" not in r.stderr.decode()
