"""``freshbox keys init`` and ``freshbox ledger verify`` end to end through freshbox_cli.main."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloud_sync.keys import (
    generate_private_key,
    key_id,
    load_private_key,
    public_key_pem,
    public_key_text,
)
from cloud_sync.records import ZERO_HASH, record_hash, seal
from freshbox_cli import main

CAB = "cab-cli-01"
T0 = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)


def write_ledger(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def chain(key: Any, n: int) -> list[dict[str, Any]]:
    out, prev = [], ZERO_HASH
    for seq in range(1, n + 1):
        rec = seal(CAB, seq, "sale", T0 + timedelta(seconds=seq), prev, {"total_fen": seq}, key)
        prev = record_hash(rec)
        out.append(rec)
    return out


@pytest.fixture
def key() -> Any:
    return generate_private_key()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------- keys init


def test_keys_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cab.key"
    code, out, err = run(capsys, "keys", "init", "--out", str(path))
    assert code == 0, err
    key = load_private_key(path)
    assert f"public key: {public_key_text(key)}" in out
    assert f"key id:     {key_id(key)}" in out
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    before = path.read_bytes()
    code, out, err = run(capsys, "keys", "init", "--out", str(path))
    assert code == 1 and out == ""
    assert "already exists" in err and "--force" in err and err.startswith("freshbox: ")
    assert path.read_bytes() == before

    code, out, _ = run(capsys, "keys", "init", "--out", str(path), "--force")
    assert code == 0 and path.read_bytes() != before
    assert public_key_text(load_private_key(path)) in out


def test_keys_show(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Any) -> None:
    priv = tmp_path / "cab.key"
    run(capsys, "keys", "init", "--out", str(priv))
    text = public_key_text(load_private_key(priv))
    code, out, _ = run(capsys, "keys", "show", str(priv))
    assert code == 0 and text in out
    pub = tmp_path / "cab.pub"
    pub.write_text(text + "\n")
    code, out, _ = run(capsys, "keys", "show", str(pub))
    assert code == 0 and text in out
    code, _, err = run(capsys, "keys", "show", str(tmp_path / "missing"))
    assert code == 2 and "no such key file" in err


def test_every_new_parser_has_help() -> None:
    import argparse

    from freshbox_cli import build_parser

    def walk(p: argparse.ArgumentParser, path: str) -> list[str]:
        found = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    here = f"{path} {name}".strip()
                    found.append(here)
                    assert sub.description, here
                    for a in sub._actions:
                        if a.dest != "help" and not isinstance(a, argparse._SubParsersAction):
                            assert a.help, f"{here}: {a.dest}"
                    found += walk(sub, here)
        return found

    seen = walk(build_parser(), "")
    for expected in ("keys init", "keys show", "ledger verify"):
        assert expected in seen


# ------------------------------------------------------------------ ledger verify


def test_ledger_verify_intact(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Any) -> None:
    records = chain(key, 12)
    ledger = write_ledger(tmp_path / "r.jsonl", records)
    code, out, err = run(
        capsys, "ledger", "verify", "--file", str(ledger), f"--public-key={public_key_text(key)}"
    )
    assert code == 0, out + err
    assert "records:    12, 12 verified (seq 1..12)" in out
    assert "chains:     1" in out
    assert f"head hash:  {record_hash(records[-1])} (seq 12)" in out
    assert "problems:   none" in out and "OK" in out
    assert key_id(key) in out and CAB in out


def test_ledger_verify_public_key_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Any
) -> None:
    ledger = write_ledger(tmp_path / "r.jsonl", chain(key, 3))
    pem = tmp_path / "cab.pem"
    pem.write_bytes(public_key_pem(key))
    text = tmp_path / "cab.pub"
    text.write_text(public_key_text(key))
    for spec in (pem, text):
        code, _, err = run(
            capsys, "ledger", "verify", "--file", str(ledger), "--public-key", str(spec)
        )
        assert code == 0, err


def test_ledger_verify_broken(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Any) -> None:
    records = chain(key, 6)
    records[2] = {**records[2], "body": {"total_fen": 0}}  # tampered
    del records[4]  # dropped
    ledger = write_ledger(tmp_path / "r.jsonl", records)
    code, out, _ = run(
        capsys, "ledger", "verify", "--file", str(ledger), f"--public-key={public_key_text(key)}"
    )
    assert code == 1
    assert "seq 3: bad_signature" in out
    assert "seq 6: seq_gap: seq 5 missing before seq 6" in out
    assert "BROKEN: 2 problem(s): bad_signature, seq_gap" in out


def test_ledger_verify_wrong_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Any
) -> None:
    ledger = write_ledger(tmp_path / "r.jsonl", chain(key, 2))
    other = public_key_text(generate_private_key())
    code, out, _ = run(capsys, "ledger", "verify", "--file", str(ledger), f"--public-key={other}")
    assert code == 1 and out.count("bad_signature") >= 2


def test_ledger_verify_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Any) -> None:
    records = chain(key, 4)
    ledger = write_ledger(tmp_path / "r.jsonl", [*records, records[1]])
    code, out, _ = run(
        capsys,
        "ledger",
        "verify",
        "--json",
        "--file",
        str(ledger),
        f"--public-key={public_key_text(key)}",
    )
    assert code == 0
    report = json.loads(out)
    assert report["ok"] is True and report["records"] == 5 and report["verified"] == 4
    assert report["duplicates"] == [2] and report["chains"] == 1
    assert report["head_hash"] == record_hash(records[-1]) and report["key_id"] == key_id(key)

    code, out, _ = run(
        capsys,
        "ledger",
        "verify",
        "--json",
        "--cabinet",
        "cab-other",
        "--file",
        str(ledger),
        f"--public-key={public_key_text(key)}",
    )
    assert code == 1
    assert {p["reason"] for p in json.loads(out)["problems"]} == {"wrong_cabinet"}


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"v": 1}', "missing"),
        ('{"a": 1, "a": 1}', "duplicate"),
    ],
)
def test_ledger_verify_malformed_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Any, line: str, words: str
) -> None:
    records = chain(key, 3)
    text = (
        json.dumps(records[0]) + "\n\n" + json.dumps(records[1]) + "\n" + line + "\n"
    )  # blank line 2 is skipped; the bad one is line 4
    ledger = tmp_path / "r.jsonl"
    ledger.write_text(text)
    code, out, err = run(
        capsys, "ledger", "verify", "--file", str(ledger), f"--public-key={public_key_text(key)}"
    )
    assert code == 2 and out == ""
    assert f"{ledger} line 4: " in err and words in err
    assert err.count("\n") == 1


def test_ledger_verify_unreadable_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Any
) -> None:
    ledger = write_ledger(tmp_path / "r.jsonl", chain(key, 1))
    code, _, err = run(
        capsys,
        "ledger",
        "verify",
        "--file",
        str(tmp_path / "nope.jsonl"),
        f"--public-key={public_key_text(key)}",
    )
    assert code == 2 and "cannot read" in err
    code, _, err = run(capsys, "ledger", "verify", "--file", str(ledger), "--public-key", "nokey")
    assert code == 2 and "--public-key" in err
    code, _, err = run(
        capsys,
        "ledger",
        "verify",
        "--file",
        str(ledger),
        f"--public-key={public_key_text(key)}",
        "--cabinet",
        "a/b",
    )
    assert code == 2 and "--cabinet" in err
    bad_utf8 = tmp_path / "bin.jsonl"
    bad_utf8.write_bytes(b"\xff\xfe\n")
    code, _, err = run(
        capsys, "ledger", "verify", "--file", str(bad_utf8), f"--public-key={public_key_text(key)}"
    )
    assert code == 2 and "line 1" in err and "UTF-8" in err


def test_ledger_verify_empty_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: Any
) -> None:
    ledger = tmp_path / "empty.jsonl"
    ledger.write_text("")
    code, out, _ = run(
        capsys, "ledger", "verify", "--file", str(ledger), f"--public-key={public_key_text(key)}"
    )
    assert code == 0 and "no records" in out
