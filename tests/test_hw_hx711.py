"""The real PyPI ``hx711`` driver on emulated pins, and the ``hx711`` backend around it.

Real time (``time.monotonic``) drives the emulated chips here: the driver measures its
own pulses with ``time.perf_counter`` and sleeps for real. Figures are printed with
``-s``: ``python -m pytest tests/test_hw_hx711.py -s -k "figures or faulty"``
(``FRESHBOX_HX711_FIGURES_S=30`` reads longer).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.config import CabinetConfig, load_config
from edge.errors import ConfigError
from edge.hardware.hx711 import (
    Hx711Config,
    Hx711Source,
    create_hardware,
    hx711_config,
    load_driver,
)
from edge.hardware.registry import Hardware
from edge.model import Calibration
from firmware_mock.gpio import A64, A128, B32, Board, Hx711Chip, Setting, install, uninstall
from firmware_mock.gpio import rpi as GPIO
from firmware_mock.live import sim_physics
from firmware_mock.simulator import SimulatedCabinet

# The emulated chips are bit-banged in Python threads at microsecond timescales: how many
# readings a second they yield, and when a watchdog fires, depend on what else the
# machine runs. A timing assertion that misses under load is run again (at most twice);
# a logic error fails every attempt.
pytestmark = pytest.mark.flaky(reruns=2, reruns_delay=1)

ROOT = Path(__file__).resolve().parent.parent
EMULATED = ROOT / "config" / "examples" / "hx711-emulated.toml"
FAULTY = ROOT / "config" / "examples" / "hx711-emulated-faulty.toml"
PINS = [(5, 12), (6, 16), (13, 20), (19, 21)]
#: how long the figures test reads (longer for the report: FRESHBOX_HX711_FIGURES_S=30)
FIGURES_S = float(os.environ.get("FRESHBOX_HX711_FIGURES_S", "5"))


def hx711_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("hx711-")]


@pytest.fixture
def board() -> Iterator[Board]:
    b = Board()
    install(b)
    yield b
    uninstall(b)


@pytest.fixture
def driver(board: Board) -> Any:
    return load_driver(GPIO)  # imported after install: bound to the emulated RPi.GPIO


def make_source(
    board: Board,
    loads: list[Callable[[float], int | None]],
    *,
    pd_sck: list[int] | None = None,
    gain: int = 128,
) -> tuple[Hx711Source, list[Hx711Chip]]:
    pins = PINS[: len(loads)]
    sck = pd_sck or [s for _, s in pins]
    chips = [
        board.add_hx711(d, s, load, origin=board.t0)
        for (d, _), s, load in zip(pins, sck, loads, strict=False)
    ]
    cfg = Hx711Config(
        gpio="emulated", dout_pins=tuple(d for d, _ in pins), pd_sck_pins=tuple(sck), gain=gain
    )
    source = Hx711Source(
        GPIO,
        load_driver(GPIO).HX711,
        cfg,
        [Calibration(i, 0.0, 1.0) for i in range(len(loads))],
        80.0,
        start_t=1000.0,
    )
    return source, chips


def read_for(source: Hx711Source, seconds: float, start_t: float = 1000.0) -> np.ndarray[Any, Any]:
    """Poll ``read`` like the daemon (every 50 ms) for ``seconds``; the raw rows."""
    blocks = []
    end = time.monotonic() + seconds
    t0 = source.mono0
    while time.monotonic() < end:
        time.sleep(0.05)
        blocks.append(source.read(start_t + time.monotonic() - t0).raw)
    return np.concatenate(blocks)


def emulated_config(path: Path = EMULATED, **sim: Any) -> CabinetConfig:
    config = load_config(path)
    return dataclasses.replace(config, sim=dataclasses.replace(config.sim, **sim))


def is_subsequence(values: np.ndarray[Any, Any], reference: np.ndarray[Any, Any]) -> bool:
    it = iter(reference.tolist())
    return all(any(v == r for r in it) for v in values.tolist())


# ---------------------------------------------------------------- the driver itself


def aligned_reads(hx: Any, chip: Hx711Chip, want: int) -> list[tuple[int, Setting, int]]:
    """Read through the driver until ``want`` reads returned the word the chip shifted
    out: (value, setting of that conversion, pulses the driver sent after it) of each.

    The driver gives up (False) when it times a PD_SCK pulse at 60 µs or more (a
    preempted thread); the chip then powered down, or (when the pulse itself was a
    little shorter) waits mid-word and the next read comes out shifted. So, as the
    backend does, the chip is reset after every False, and shifted reads are left out."""
    out: list[tuple[int, Setting, int]] = []
    for _ in range(25):
        before = chip.reads
        value = hx._read()
        if value is False:
            hx.power_down()
            hx.power_up()
            continue
        _, shifted, setting = chip.delivered[-1]
        if chip.reads == before + 1 and value == shifted:
            out.append((int(value), setting, chip.last_cycle_pulses))
            if len(out) == want:
                return out
    raise AssertionError(f"only {len(out)} whole readouts in 25 reads: {out}")


def test_driver_gain_and_channel_by_pulse_count(board: Board, driver: Any) -> None:
    chips = [board.add_hx711(d, s, lambda t: 200000, channel_b_counts=4321) for d, s in PINS[:3]]
    made: dict[int, Any] = {}

    def build(i: int, **kw: Any) -> None:
        made[i] = driver.HX711(PINS[i][0], PINS[i][1], **kw)

    threads = [
        threading.Thread(target=build, args=(0,)),
        threading.Thread(target=build, args=(1,), kwargs={"gain": 64}),
        threading.Thread(target=build, args=(2,), kwargs={"channel": "B"}),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = [(25, A128, 200000), (27, A64, 100000), (26, B32, 4321)]
    for i, (pulses, setting, value) in enumerate(expected):
        reads = aligned_reads(made[i], chips[i], 3)
        # the driver's pulses chose the setting; each conversion is read at its own
        assert {p for _, _, p in reads} == {pulses}
        assert (value, setting, pulses) in reads
        for got, at, _ in reads:
            assert got == {A128: 200000, A64: 100000, B32: 4321}[at]


def test_driver_power_down_and_up_comes_back_on_a128_after_settling(
    board: Board, driver: Any
) -> None:
    chip = board.add_hx711(5, 12, lambda t: 300000)
    hx = driver.HX711(5, 12, gain=64)
    assert (150000, A64, 27) in aligned_reads(hx, chip, 3)
    hx.power_down()  # PD_SCK high for 10 ms
    assert not chip.powered and GPIO.input(5) == 1
    up = time.monotonic()
    hx.power_up()
    while GPIO.input(5) != 0:
        time.sleep(0.0005)
    assert time.monotonic() - up >= 0.050  # 50 ms of settling at 80 SPS
    assert chip.setting is A128  # reset: channel A gain 128, whatever the driver asked
    downs = chip.power_downs
    reads = aligned_reads(hx, chip, 3)
    # the first conversion after power-up is at A/128 (the driver still thinks 64) ...
    assert reads[0][:2] == (300000, A128) or chip.power_downs > downs, reads
    assert (150000, A64, 27) in reads  # ... then its 27 pulses chose A/64 again
    assert chip.power_ups >= 1


def test_driver_get_raw_data_drops_genuine_zero_readings(board: Board, driver: Any) -> None:
    loads = itertools.cycle([0, 0, 5])
    chip = board.add_hx711(5, 12, lambda t: next(loads))
    hx = driver.HX711(5, 12)
    first = len(chip.delivered)
    got = hx.get_raw_data(4)
    shifted = [v for _, v, _ in list(chip.delivered)[first:]]
    assert shifted.count(0) >= 2  # the chip said 0, more than once ...
    assert len(got) == 4 and 0 not in got  # ... get_raw_data dropped every one (0 == False)
    # (the backend reads with _read and keeps them: see the hung-driver test below)


# ---------------------------------------------------------------- the backend


def test_backend_reads_the_shelf_raw_counts_and_figures() -> None:
    """The hx711 backend on hx711-emulated.toml: every valid sample is a raw count of the
    simulated shelf; prints the sustained sample rate per channel."""
    config = emulated_config(residents=False)
    cpu0 = time.process_time()
    hw = create_hardware(config, start_t=5000.0)
    board = GPIO.installed_board()
    assert board is not None
    chips = list(board.chips)
    t0 = time.monotonic()
    try:
        times, rows = [], []
        while time.monotonic() - t0 < FIGURES_S:
            time.sleep(0.05)
            block = hw.source.read(5000.0 + time.monotonic() - t0)
            assert np.all(np.diff(block.t) > 0)
            times.append(block.t)
            rows.append(block.raw)
        elapsed = time.monotonic() - t0
        status = hw.source.status()  # type: ignore[attr-defined]
    finally:
        hw.close()
    cpu = time.process_time() - cpu0
    t = np.concatenate(times) - 5000.0
    raw = np.concatenate(rows)
    # the same configuration, simulated alone: the physics the chips converted
    reference = SimulatedCabinet.live(
        config.lanes,
        config.stock,
        sim_physics(config),
        seed=config.sim.seed,
        cabinet_id=config.cabinet_id,
        calibrations=config.calibrations,
    ).advance(elapsed + 1.0)
    assert raw.shape[1] == 4
    for c, chip in enumerate(chips):
        got = raw[:, c][~np.isnan(raw[:, c])]
        ref = reference.raw[:, c]
        # the bit-banged emulation shares the CPU with everything else on the machine:
        # a quarter of the nominal rate proves the channel is read (the rate itself is a
        # figure: FRESHBOX_HX711_FIGURES_S in README)
        assert got.size > 0.25 * 80 * 3.0, f"channel {c}: only {got.size} readings"
        assert is_subsequence(got, ref[~np.isnan(ref)]), f"channel {c}: not the shelf's counts"
        delivered = [(tc, v, s) for tc, v, s in chip.delivered if s is A128]
        shifted = np.array([v for _, v, _ in delivered], dtype=np.float64)
        assert is_subsequence(got, shifted), f"channel {c}: not what the chip shifted out"
        # every conversion the chip shifted out was the shelf's sample at its instant
        k = np.floor((np.array([tc for tc, _, _ in delivered]) - board.t0) * 80.0 + 1e-9)
        assert np.array_equal(shifted, ref[k.astype(np.int64)])
    steady = t >= 1.5  # after the driver's start-up (its constructor sleeps 1 s)
    span = float(t[steady][-1] - t[steady][0]) + 1 / 80
    rates = [float((~np.isnan(raw[steady, c])).sum()) / span for c in range(4)]
    print(
        f"\n[hx711 figures] grid {raw.shape[0] / elapsed:.1f} rows/s; valid samples per channel "
        f"{', '.join(f'{r:.1f}' for r in rates)} /s (nominal 80) over {span:.1f} s; "
        f"failed reads {[s.invalid for s in status]}; chip power-downs "
        f"{[ch.power_downs for ch in chips]}; resets {[s.resets for s in status]}; "
        f"process CPU {cpu / elapsed * 100:.0f}% of one core"
    )
    assert min(rates) > 20.0  # a figure; the loss is the machine's timing jitter (see docs)


def test_faulty_example_dead_chip_contained_and_saturated_channel() -> None:
    """hx711-emulated-faulty.toml (dead chip sooner, for the test): the dead channel is
    faulted within 2 s of its last reading while the others go on; the saturated one
    never reads; no reader thread survives ``close``."""
    config = load_config(FAULTY)
    hardware = copy.deepcopy(config.hardware)
    for fault in hardware["hx711"]["emulation"]["faults"]:
        fault["at_s"] = min(fault.get("at_s", 0.0), 1.5)
    config = dataclasses.replace(
        config, hardware=hardware, sim=dataclasses.replace(config.sim, residents=False)
    )
    faults = {f.channel: f.kind for f in hx711_config(config).emulation.faults}
    assert sorted(faults.values()) == ["dead", "saturated"]
    dead = next(ch for ch, kind in faults.items() if kind == "dead")
    column = [c.channel for c in config.calibrations].index(dead)
    hw: Hardware = create_hardware(config, start_t=0.0)
    source: Any = hw.source
    t0 = time.monotonic()
    detected = None
    try:
        while time.monotonic() - t0 < 4.3:
            time.sleep(0.02)
            source.read(time.monotonic() - t0)
            if detected is None and source.faulted[column]:
                detected = time.monotonic() - t0 - 1.5
        middle = [s.readings for s in source.status()]
        time.sleep(0.7)
        after = source.status()
    finally:
        hw.close()
    for i, cal in enumerate(config.calibrations):
        assert after[i].faulted is (cal.channel in faults), (cal.channel, after)
        assert after[i].alive
        if cal.channel not in faults:  # the others went on at their pace
            assert after[i].readings - middle[i] > 7, (middle, after)
    assert detected is not None and detected <= 2.3, detected
    assert hx711_threads() == [] and source.leaked_threads == []
    assert GPIO.installed_board() is None  # close() uninstalled the emulation
    print(f"\n[hx711 figures] dead chip faulted {detected:.2f} s after it stopped answering")


def test_hung_driver_is_broken_out_and_zero_readings_kept(board: Board) -> None:
    source, chips = make_source(board, [lambda t: 0, lambda t: -1, lambda t: 2000])
    try:
        read_for(source, 1.3)
        # chip 2: the driver's gain pulse takes 100 µs, so it calls get_raw_data(6) ...
        # and the chip dies right after that readout: get_raw_data would loop forever
        chips[2].extra_pulse_delay_s = 100e-6
        chips[2].set_fault("dead", after_reads=1)
        raw = read_for(source, 2.6)
        status = source.status()
    finally:
        source.close()
    assert status[2].unstuck >= 1  # the watchdog broke the hung driver call
    assert status[2].faulted and not status[0].faulted and not status[1].faulted
    assert all(s.alive for s in status)
    # genuine readings of 0 and -1 (which get_raw_data would drop) are samples
    for c, value in enumerate((0, -1)):
        col = raw[:, c][~np.isnan(raw[:, c])]
        assert col.size > 25, col.size  # (a loaded machine slows the emulated chips)
        assert set(col.tolist()) == {value}
    assert hx711_threads() == [] and source.leaked_threads == []


def test_shared_clock_pin(board: Board) -> None:
    source, _ = make_source(board, [lambda t: 111, lambda t: 222], pd_sck=[12, 12])
    try:
        deadline = time.monotonic() + 4.0  # the drivers start one after the other (1 s each)
        while min(s.readings for s in source.status()) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        source.read(1000.0 + time.monotonic() - source.mono0)  # (drop what came before)
        raw = read_for(source, 1.5)
    finally:
        source.close()
    valid = [raw[:, c][~np.isnan(raw[:, c])] for c in range(2)]
    assert set(valid[0].tolist()) == {111} and set(valid[1].tolist()) == {222}
    # each readout clocks both chips, which share the conversions (about 40/s each at best)
    assert all(v.size > 15 for v in valid), [v.size for v in valid]
    assert hx711_threads() == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"gain": 32}, "hardware.hx711.gain: must be 128 or 64"),
        ({"dout_pins": [5, 6, 13]}, "hardware.hx711.dout_pins: has 3 pins for 4"),
        ({"dout_pins": [5, 6, 13, 40]}, "hardware.hx711.dout_pins: must be a list of BCM"),
        ({"pd_sck_pin": 4}, "hardware.hx711.pd_sck_pins: give pd_sck_pin (shared) or"),
        ({"gpio": "pigpio"}, "hardware.hx711.gpio: must be one of 'rpi', 'emulated'"),
        ({"colour": "red"}, "hardware.hx711.colour: unknown key"),
        ({"pd_sck_pins": [5, 16, 20, 21]}, "GPIO 5 is also a DOUT pin"),
        (
            {"emulation": {"faults": [{"channel": 9, "kind": "dead"}]}},
            "hardware.hx711.emulation.faults[0].channel: channel 9 has no [[channels]]",
        ),
    ],
)
def test_config_errors_name_the_key(edit: dict[str, Any], message: str) -> None:
    config = load_config(EMULATED)
    hardware = copy.deepcopy(config.hardware)
    hardware["hx711"].update(edit)
    with pytest.raises(ConfigError, match=re.escape(message)):
        hx711_config(dataclasses.replace(config, hardware=hardware))


def test_lock_pin_clash_is_a_config_error() -> None:
    config = load_config(EMULATED)
    hardware = copy.deepcopy(config.hardware)
    hardware["lock"]["pin"] = 5
    with pytest.raises(ConfigError, match=r"hardware\.lock\.pin: GPIO 5 is already an HX711 pin"):
        create_hardware(dataclasses.replace(config, hardware=hardware))
