"""Cabinet TOML: the example parses, and every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.commands import default_config_text
from edge.config import load_config
from edge.errors import ConfigError
from freshbox_cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_is_the_embedded_default() -> None:
    assert (ROOT / "config" / "cabinet.example.toml").read_text() == default_config_text()
    cfg = load_config(ROOT / "config" / "cabinet.example.toml")
    assert cfg.cabinet_id == "cab-demo-01"
    assert [ln.mode for ln in cfg.lanes] == ["unit", "weighed", "tracked", "unit"]
    assert cfg.stock[3][0] == 612.4
    assert cfg.sessions.unlock_window_s == 15.0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("sample_rate_hz = 80", "sample_rate_hz = -1"), "cabinet.sample_rate_hz: must be"),
        (('backend = "sim"', 'backend = "nope"'), "hardware.backend: unknown backend"),
        (("price_fen = 690", 'price_fen = "6.90"'), "lanes[0].price_fen: must be an integer"),
        (('mode = "weighed"', 'mode = "bulk"'), "lanes[1].mode: must be one of"),
        (
            ("unlock_window_s = 15.0", "unlock_window_sec = 15.0"),
            "session.unlock_window_sec: unknown key",
        ),
        (
            ("channel = 3\nsku", "channel = 9\nsku"),
            "lanes[3].channel: channel 9 has no [[channels]]",
        ),
        (("4 = [148.2", "9 = [148.2"), "stock.9: must name a lane number"),
        (("[cabinet]", "[cabinet\n"), "cabinet.toml: "),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    text = default_config_text()
    assert edit[0] in text
    path = tmp_path / "cabinet.toml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert message in str(exc.value)
    assert str(exc.value).startswith("cabinet.toml: ")


def test_bad_config_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cabinet.toml"
    path.write_text(default_config_text().replace("counts_per_g = 213.7", "counts_per_g = 0"))
    assert main(["edge", "run", "--config", str(path), "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["freshbox: cabinet.toml: channels[0].counts_per_g: must be > 0"]
    assert not (tmp_path / "var").exists()
