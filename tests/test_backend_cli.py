"""freshbox qr, serve's configuration errors, and the backend administration commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_sync.keys import generate_private_key, public_key_text
from freshbox_cli import main


def test_qr_writes_the_cabinet_page_url_as_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cab.png"
    assert main(["qr", "cab-east-1", "--url", "https://veg.example.org", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "https://veg.example.org/c/cab-east-1" in capsys.readouterr().out
    assert main(["qr", "bad id!", "-o", str(tmp_path / "x.png")]) == 2
    assert "cabinet" in capsys.readouterr().err


def test_admin_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FRESHBOX__BACKEND__DB", str(tmp_path / "b.db"))
    assert main(["backend", "migrate"]) == 0
    assert "up to date" in capsys.readouterr().out
    secret = tmp_path / "pw"
    secret.write_text("a-long-password\n")
    from backend.clock import Clock
    from backend.db import Database
    from backend.seed import seed

    db = Database(str(tmp_path / "b.db"), workers=1)
    db.write(seed, Clock().now(), ())
    db.close()
    args = ["backend", "user-add", "chen.jie", "--role", "resident", "--name", "Chen Jie"]
    assert main([*args, "--password-file", str(secret)]) == 2  # no building/unit
    assert "--building/--unit" in capsys.readouterr().err
    assert main([*args, "--building", "7", "--unit", "101", "--password-file", str(secret)]) == 0
    assert "created" in capsys.readouterr().out
    assert main([*args, "--building", "7", "--unit", "101", "--password-file", str(secret)]) == 2
    assert "taken" in capsys.readouterr().err
    key = public_key_text(generate_private_key().public_key())
    cab = ["backend", "cabinet-add", "cab-new-1", "--operator", "op-greenvale", "--name", "New"]
    assert main([*cab, "--public-key", key, "--cabinet-config", "config/cabinet.example.toml"]) == 0
    assert "registered" in capsys.readouterr().out
    assert main([*cab, "--public-key", "not-a-key"]) == 2


def test_serve_names_a_missing_signing_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FRESHBOX__BACKEND__SIGNING_KEY", str(tmp_path / "none.key"))
    monkeypatch.setenv("FRESHBOX__BACKEND__DB", str(tmp_path / "b.db"))
    assert main(["serve"]) == 2
    assert "backend.signing_key" in capsys.readouterr().err
