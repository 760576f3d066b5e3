"""The command line: help everywhere, exit status 2 with one line for bad input."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from freshbox_cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def test_every_subcommand_has_help_text() -> None:
    parser = build_parser()
    seen = []
    for path, sub in _subparsers(parser):
        seen.append(" ".join(path))
        assert sub.description, f"freshbox {' '.join(path)} has no description"
        for action in sub._actions:
            if action.dest != "help" and not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"freshbox {' '.join(path)}: {action.dest} has no help"
    for expected in ("sim run", "sim replay", "sim record", "edge run", "edge demo", "demo"):
        assert expected in seen


@pytest.mark.parametrize(
    "args", [["--help"], ["sim", "--help"], ["sim", "run", "--help"], ["edge", "run", "--help"]]
)
def test_help_exits_zero(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    assert "usage: freshbox" in capsys.readouterr().out


def test_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "freshbox_cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "sim" in out.stdout and "edge" in out.stdout


def test_demo_script_passes_its_arguments_to_freshbox_not_to_the_installer() -> None:
    """scripts/demo sources the bootstrap; without an explicit argument, bash hands the
    sourced file the demo's own arguments and pip was asked for extras '--help'."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        ["bash", str(root / "scripts" / "demo"), "--help"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage: freshbox demo" in out.stdout
