"""`freshbox doctor` and `freshbox calibrate` on the simulated backend."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from edge.calibrate import (
    CalibrationLimits,
    CalibrationRefused,
    calibrate,
    write_calibration,
)
from edge.commands import default_config_text
from edge.config import load_config
from edge.errors import ConfigError
from edge.hardware.registry import create_hardware
from edge.health import judge_channels
from edge.model import INVALID_CODES, Calibration
from freshbox_cli import main

CAL = (Calibration(0, 1000.0, 200.0), Calibration(1, -500.0, 210.0))


def _config(tmp_path: Path, **physics: float) -> Path:
    text = default_config_text().replace(
        'db = "var/cabinet-demo-01.db"', f'db = "{tmp_path / "cab.db"}"'
    )
    text = text.replace("residents = true", "residents = false")
    for key, value in physics.items():
        text = text.replace("[hardware.sim.physics]", f"[hardware.sim.physics]\n{key} = {value}")
        text = text.replace(f"\n{key} = 1.5\n", "\n").replace(f"\n{key} = 0.01\n", "\n")
    path = tmp_path / "cabinet.toml"
    path.write_text(text)
    return path


def test_health_names_each_fault() -> None:
    n = 160
    t = np.arange(n) / 80.0
    rng = np.random.default_rng(0)
    good = 1000.0 + 200.0 * (500.0 + rng.normal(0, 1.0, n))
    cases = {
        "ok": good,
        "not answering": np.full(n, np.nan),
        "only invalid codes": np.full(n, float(INVALID_CODES[0])),
        "saturated": np.where(rng.random(n) < 0.9, 8388600.0, good),
        "stuck value": np.full(n, 101000.0),
        "noise": 1000.0 + 200.0 * (500.0 + rng.normal(0, 30.0, n)),
        "slow": np.where(np.arange(n) % 4 == 0, good, np.nan),
        "invalid codes": np.where(rng.random(n) < 0.4, float(INVALID_CODES[1]), good),
    }
    for reason, column in cases.items():
        raw = np.stack([column, good], axis=1)
        health = judge_channels(t, raw, CAL, nominal_rate_hz=80.0, duration_s=2.0)
        assert health[1].ok
        if reason == "ok":
            assert health[0].ok and abs(health[0].grams - 500.0) < 1.0  # type: ignore[operator]
        else:
            assert not health[0].ok, reason
            assert reason.split()[0] in health[0].reason, (reason, health[0].reason)


def test_doctor_reports_a_healthy_simulated_cabinet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path)
    started = time.monotonic()
    assert main(["doctor", "--config", str(path), "--json", "--seconds", "1"]) == 0
    assert time.monotonic() - started < 10
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["lock"] == "locked" and report["door"] == "closed"
    assert [c["channel"] for c in report["channels"]] == [0, 1, 2, 3]
    for c in report["channels"]:
        assert c["state"] == "ok"
        assert 60 <= c["rate_hz"] <= 90
        assert 0.5 < c["noise_g"] < 3.0
        assert c["grams"] > 500


def test_doctor_exits_1_when_a_channel_is_faulted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, invalid_rate=0.6)
    assert main(["doctor", "--config", str(path), "--seconds", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAULT" in out and "invalid codes" in out
    assert out.strip().endswith("something is faulted")


def _sim_of(hw: object) -> object:
    return hw.source.sim  # type: ignore[attr-defined]


def test_calibrate_recovers_the_true_scale_and_writes_it(tmp_path: Path) -> None:
    path = _config(tmp_path)
    truth = load_config(path)
    hw = create_hardware(truth, start_t=time.time())
    sim = _sim_of(hw)
    # the file on disk is wrong about channel 3 (lane 4, chili): a stale calibration
    text = path.read_text().replace("zero_counts = -70550", "zero_counts = -60000")
    path.write_text(text.replace("counts_per_g = 197.9", "counts_per_g = 180.0"))
    config = load_config(path)
    steps: list[str] = []

    def prompt(message: str) -> None:
        steps.append(message)
        if len(steps) == 1:
            while sim.shelf_g(4):  # type: ignore[attr-defined]
                sim.take(4, 0)  # type: ignore[attr-defined]
        else:
            sim.place(4, 500.0)  # type: ignore[attr-defined]

    try:
        sim.open_door()  # type: ignore[attr-defined]
        result = calibrate(config, 3, 500.0, prompt=prompt, seconds=1.0, hardware=hw)
    finally:
        hw.close()
    assert len(steps) == 2 and "Take everything off" in steps[0] and "500 g" in steps[1]
    assert result.counts_per_g == pytest.approx(197.9, rel=0.01)
    assert result.zero_counts == pytest.approx(-70550, abs=3 * 197.9)
    write_calibration(path, result)
    written = load_config(path)
    cal = {c.channel: c for c in written.calibrations}
    assert cal[3].counts_per_g == pytest.approx(result.counts_per_g)
    assert cal[3].zero_counts == pytest.approx(result.zero_counts)
    assert cal[0].zero_counts == 84210  # the others are untouched
    assert "# One [[channels]] per load-cell channel" in path.read_text()  # comments kept


def test_calibrate_refuses_when_no_weight_was_placed(tmp_path: Path) -> None:
    path = _config(tmp_path)
    config = load_config(path)
    with pytest.raises(CalibrationRefused, match="implausible scale"):
        calibrate(config, 0, 500.0, prompt=lambda _m: None, seconds=0.5)


def test_calibrate_refuses_a_noisy_channel(tmp_path: Path) -> None:
    path = _config(tmp_path, noise_g=40.0)
    config = load_config(path)
    hw = create_hardware(config, start_t=time.time())
    sim = _sim_of(hw)
    prompts = iter([lambda: None, lambda: sim.place(1, 1000.0)])  # type: ignore[attr-defined]
    try:
        sim.open_door()  # type: ignore[attr-defined]
        with pytest.raises(CalibrationRefused, match="too noisy"):
            calibrate(
                config,
                0,
                1000.0,
                prompt=lambda _m: next(prompts)(),
                seconds=0.5,
                hardware=hw,
                limits=CalibrationLimits(steady_timeout_s=1.0),
            )
    finally:
        hw.close()


def test_calibrate_names_an_unknown_channel(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    with pytest.raises(ConfigError, match="channel 9 has no"):
        calibrate(config, 9, 500.0, prompt=lambda _m: None)


EXAMPLES = Path(__file__).resolve().parent.parent / "config" / "examples"


def test_doctor_on_the_emulated_modbus_board(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code = main(["doctor", "--config", str(EXAMPLES / "modbus-emulated.toml"), "--json"])
    assert time.monotonic() - started < 10
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"] is True and report["backend"] == "modbus"
    assert all(c["state"] == "ok" and c["rate_hz"] > 40 for c in report["channels"])


def test_doctor_names_the_dead_chip_of_the_faulty_hx711_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["doctor", "--config", str(EXAMPLES / "hx711-emulated-faulty.toml"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["ok"] is False and report["backend"] == "hx711"
    faulted = {c["channel"]: c["reason"] for c in report["channels"] if c["state"] == "fault"}
    # saturated from the start: it never gives a valid reading (the healthy chips' rates
    # depend on the machine's load, so they are not judged here)
    assert 3 in faulted and faulted[3] in ("not answering", "only invalid codes"), report
