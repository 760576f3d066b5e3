"""The backend's configuration: defaults, the example file, environment overrides, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.config import DEFAULTS, load_settings
from backend.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_example_is_the_embedded_default() -> None:
    assert (ROOT / "config" / "backend.example.toml").read_text() == DEFAULTS.read_text()
    s = load_settings(ROOT / "config" / "backend.example.toml", environ={})
    assert s.db == "var/backend.db" and s.port == 8080 and s.broker is None
    assert s.public_url == "http://127.0.0.1:8080" and not s.cookie_secure


def test_environment_overrides_keys() -> None:
    s = load_settings(
        environ={
            "FRESHBOX__BACKEND__DB": "postgresql://freshbox@db/freshbox",
            "FRESHBOX__HTTP__PORT": "9000",
            "FRESHBOX__HTTP__PUBLIC_URL": "https://veg.example.org",
            "FRESHBOX__BROKER__HOST": "mqtt.example.org",
            "FRESHBOX__BACKEND__MIN_BALANCE_FEN": "500",
            "UNRELATED": "x",
        }
    )
    assert s.db == "postgresql://freshbox@db/freshbox" and s.port == 9000
    assert s.cookie_secure  # https public URL: secure cookies by default
    assert s.broker is not None and s.broker.host == "mqtt.example.org"
    assert s.min_balance_fen == 500


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"FRESHBOX__HTTP__PORTT": "1"}, "http.portt: unknown key"),
        ({"FRESHBOX__HTTP__PORT": "seventy"}, "http.port: must be an integer"),
        ({"FRESHBOX__BACKEND__DB": "mysql://x/y"}, "backend.db"),
        ({"FRESHBOX__HTTP__PUBLIC_URL": "veg.example.org"}, "http.public_url"),
        ({"FRESHBOX__NOSECTION": "1"}, "FRESHBOX__SECTION__KEY"),
        ({"FRESHBOX__BROKER__MQTT_VERSION": "4"}, "broker.mqtt_version"),
    ],
)
def test_bad_values_name_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(environ={"FRESHBOX__BROKER__HOST": "h", **environ})


def test_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[http\nport = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_settings(bad, environ={})
