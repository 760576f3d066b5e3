"""The ``modbus`` backend against the emulated weigh board over real pseudo-terminals.

pyserial and pymodbus talk RTU (framing, CRC, timing at the baud rate) to
``firmware_mock.weighboard.WeighBoard``; nothing is mocked between them.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import serial
from pymodbus.framer.rtu import FramerRTU

from edge.config import load_config, parse_config
from edge.daemon import run_daemon
from edge.errors import ConfigError
from edge.hardware.modbus import (
    HR_RATE_DHZ,
    IR_BAD_FRAMES,
    IR_CHANNEL_BASE,
    IR_CHANNELS,
    IR_COUNTER,
    IR_MAP_VERSION,
    IR_RATE_DHZ,
    MAP_VERSION,
    ST_FAULT,
    ST_NOT_RESPONDING,
    ST_READY,
    ST_SATURATED,
    ModbusWeightSource,
    decode_counts,
    encode_counts,
    poll_registers,
    poll_wire_s,
)
from edge.hardware.registry import create_hardware
from edge.model import Calibration, FloatArray
from edge.session import SessionResult
from edge.store import CabinetStore
from firmware_mock.weighboard import FULL_SCALE, Faults, WeighBoard, crc_ok, with_crc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "examples" / "modbus-emulated.toml"
#: distinct, signed, across word boundaries: checks sign and word order of the counts
BASES = (-8_000_000, -1, 0, 65_535, 65_536, 1_234_567, -1_234_567, 7_000_000)


class CountingLoad:
    """Channel c reads ``bases[c] + n`` at the board's n-th conversion: every conversion
    is distinct, and one read shows whether the channels came from the same one."""

    def __init__(self, channels: int) -> None:
        self.bases = [BASES[c % len(BASES)] + 1000 * (c // len(BASES)) for c in range(channels)]
        self._channels = tuple(range(channels))
        self.n = 0

    @property
    def channels(self) -> tuple[int, ...]:
        return self._channels

    def advance(self, t: float) -> FloatArray:
        self.n += 1
        return np.array([[b + self.n for b in self.bases]], dtype=np.float64)


def freshbox() -> list[str]:
    script = Path(sys.executable).parent / "freshbox"
    return [str(script)] if script.exists() else [sys.executable, "-m", "freshbox_cli"]


def calibrations(channels: int) -> tuple[Calibration, ...]:
    return tuple(Calibration(c, 0.0, 1.0) for c in range(channels))


@pytest.fixture(autouse=True)
def no_stray_threads() -> Iterator[None]:
    yield
    left = [
        t.name for t in threading.enumerate() if t.name.startswith(("modbus-poll", "weighboard"))
    ]
    assert not left, f"threads left running: {left}"


@contextmanager
def rig(
    channels: int = 8, *, faults: str = "", poll_hz: float = 150.0, **source: Any
) -> Iterator[tuple[WeighBoard, ModbusWeightSource, CountingLoad]]:
    load = CountingLoad(channels)
    board = WeighBoard(channels, load=load, rate_hz=80.0, faults=Faults.parse(faults), seed=3)
    device = board.start()
    src = ModbusWeightSource(
        device, calibrations(channels), poll_hz=poll_hz, sample_rate_hz=80.0, **source
    )
    try:
        yield board, src.start(), load
    finally:
        src.close()
        board.stop()


def read_all(src: ModbusWeightSource) -> tuple[FloatArray, FloatArray]:
    block = src.read(float("inf"))
    return block.t, block.raw


# ---------------------------------------------------------------- raw RTU over pyserial


def transact(port: serial.Serial, pdu: bytes, answer_len: int, unit: int = 1) -> bytes:
    port.reset_input_buffer()
    port.write(with_crc(bytes([unit]) + pdu))
    return bytes(port.read(answer_len))


def registers_of(answer: bytes) -> list[int]:
    assert crc_ok(answer), answer.hex()
    assert answer[1] in (0x03, 0x04) and answer[2] == len(answer) - 5
    return list(struct.unpack(f">{answer[2] // 2}H", answer[3:-2]))


def test_crc_is_modbus_crc16() -> None:
    # the spec's example: read 10 holding registers from unit 1
    assert with_crc(bytes.fromhex("01030000000a")) == bytes.fromhex("01030000000ac5cd")
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 64, 250):
        data = bytes(rng.integers(0, 256, n, dtype=np.uint8))
        assert with_crc(data)[-2:] == FramerRTU.compute_CRC(data).to_bytes(2, "big")


def test_counts_word_order_round_trip() -> None:
    for value in (0, 1, -1, 65535, 65536, -65536, 2**31 - 1, -(2**31), *BASES):
        hi, lo = encode_counts(value)
        assert 0 <= hi <= 0xFFFF and 0 <= lo <= 0xFFFF
        assert decode_counts(hi, lo) == value
    assert encode_counts(-2) == (0xFFFF, 0xFFFE)  # high word first
    assert encode_counts(0x12345678) == (0x1234, 0x5678)


def test_register_map_round_trip_over_pyserial() -> None:
    channels = 16
    load = CountingLoad(channels)
    with (
        WeighBoard(channels, load=load, rate_hz=80.0) as board,
        serial.Serial(board.device, 115200, timeout=0.3) as port,
    ):
        time.sleep(0.1)
        count = poll_registers(channels)
        started = time.perf_counter()
        answer = transact(port, struct.pack(">BHH", 0x04, 0, count), 5 + 2 * count)
        elapsed = time.perf_counter() - started
        regs = registers_of(answer)
        assert len(regs) == count == IR_CHANNEL_BASE + 3 * channels
        assert regs[IR_MAP_VERSION] == MAP_VERSION
        assert regs[IR_CHANNELS] == channels
        assert regs[IR_RATE_DHZ] == 800
        # paced like a wire at 115200 baud: request, gap, answer
        assert elapsed >= 0.8 * poll_wire_s(channels, 115200), elapsed
        offsets = set()
        for c in range(channels):
            base = IR_CHANNEL_BASE + 3 * c
            assert regs[base] == ST_READY
            offsets.add(decode_counts(regs[base + 1], regs[base + 2]) - load.bases[c])
        # one consistent conversion on every channel, numbered like the counter
        assert len(offsets) == 1
        (n,) = offsets
        assert n >= 1 and (n & 0xFFFF) <= regs[IR_COUNTER]

        time.sleep(0.25)
        later = registers_of(transact(port, struct.pack(">BHH", 0x04, IR_COUNTER, 1), 7))
        assert 15 <= (later[0] - regs[IR_COUNTER]) & 0xFFFF <= 40  # ~80 conversions/s

        # holding register: the rate, read, written (0x06 and 0x10), read back
        assert registers_of(transact(port, struct.pack(">BHH", 0x03, HR_RATE_DHZ, 1), 7)) == [800]
        echo = transact(port, struct.pack(">BHH", 0x06, HR_RATE_DHZ, 400), 8)
        assert crc_ok(echo) and echo[1:6] == struct.pack(">BHH", 0x06, HR_RATE_DHZ, 400)
        assert board.rate_hz == 40.0
        assert registers_of(transact(port, struct.pack(">BHH", 0x04, IR_RATE_DHZ, 1), 7)) == [400]
        ack = transact(port, struct.pack(">BHHBH", 0x10, HR_RATE_DHZ, 1, 2, 800), 8)
        assert crc_ok(ack) and ack[1:6] == struct.pack(">BHH", 0x10, HR_RATE_DHZ, 1)
        assert board.rate_hz == 80.0

        # exceptions: beyond the map, unknown function, out-of-range rate
        exc = transact(port, struct.pack(">BHH", 0x04, count, 1), 5)
        assert crc_ok(exc) and exc[1:3] == bytes([0x84, 0x02])
        exc = transact(port, bytes([0x2B, 0x0E, 0x01, 0x00]), 5)
        assert crc_ok(exc) and exc[1:3] == bytes([0xAB, 0x01])
        exc = transact(port, struct.pack(">BHH", 0x06, HR_RATE_DHZ, 0), 5)
        assert crc_ok(exc) and exc[1:3] == bytes([0x86, 0x03])

        # a request with a bad CRC, or for another unit, gets no answer at all
        port.reset_input_buffer()
        port.write(bytes.fromhex("010400000008") + b"\x00\x00")
        assert port.read(5) == b""
        assert transact(port, struct.pack(">BHH", 0x04, 0, 8), 21, unit=9) == b""
        regs = registers_of(transact(port, struct.pack(">BHH", 0x04, 0, 8), 21))
        assert regs[IR_BAD_FRAMES] == 1
        stats = board.stats()
        assert stats["bad_frames"] == 1 and stats["other_units"] == 1 and stats["exceptions"] == 3


# ---------------------------------------------------------------- the weight source


def test_source_delivers_every_conversion_once() -> None:
    with rig(8, poll_hz=200.0) as (board, src, load):
        time.sleep(1.5)
        t1, raw1 = read_all(src)
        time.sleep(0.3)
        t2, raw2 = read_all(src)
        stats = src.stats()
        conversions = board.stats()["conversions"]
    t = np.concatenate([t1, t2])
    raw = np.vstack([raw1, raw2])
    assert len(t) >= 100
    assert np.all(np.diff(t) > 0)
    assert np.isfinite(raw).all()
    n = raw - np.array(load.bases)  # the conversion number, the same on every channel
    assert np.all(n == n[:, :1])
    assert np.all(np.diff(n[:, 0]) >= 1)  # no sample twice
    assert stats["duplicates"] > 0  # polls outnumber conversions: the counter told
    assert stats["samples"] == len(t)
    # every conversion is either delivered or counted as skipped (but the first, the baseline)
    assert 0.9 * conversions <= stats["samples"] + stats["skipped"] <= conversions
    assert stats["errors"] == stats["timeouts"] == stats["crc_errors"] == 0
    # the timestamps follow the conversions: 12.5 ms apart but for the missed ones
    gaps = np.diff(t) / np.diff(n[:, 0])
    assert abs(float(np.median(gaps)) - 0.0125) < 0.002


@pytest.mark.parametrize(
    ("spec", "counter", "injected"),
    [
        ("crc=0.25", "crc_errors", "crc_injected"),
        ("silence=0.15", "timeouts", "silence_injected"),
        ("garbage=0.25", "garbage", "garbage_injected"),
    ],
)
def test_line_faults_are_counted_and_ridden_out(spec: str, counter: str, injected: str) -> None:
    with rig(8, faults=spec) as (board, src, load):
        time.sleep(1.5)
        t, raw = read_all(src)
        stats = src.stats()
        src.close()
        made = board.stats()[injected]
    assert made >= 8
    assert made - 1 <= stats[counter] <= made + 1, (stats, made)
    assert stats["retries"] >= stats[counter] - 1
    assert stats["errors"] == 0
    assert len(t) >= 30 and np.isfinite(raw).all()
    n = raw - np.array(load.bases)
    assert np.all(n == n[:, :1]) and np.all(np.diff(n[:, 0]) >= 1)


def test_mixed_faults_keep_healthy_channels_flowing() -> None:
    faults = "crc=0.05,silence=0.03,garbage=0.05,dead=2,saturate=5"
    with rig(8, faults=faults) as (_board, src, _load):
        time.sleep(1.5)
        t, raw = read_all(src)
        stats = src.stats()
    assert len(t) >= 60
    assert np.isnan(raw[:, 2]).all() and np.isnan(raw[:, 5]).all()
    healthy = [c for c in range(8) if c not in (2, 5)]
    assert np.isfinite(raw[:, healthy]).all()
    assert stats["unusable_by_channel"] == {2: len(t), 5: len(t)}
    assert stats["saturated"] == len(t)
    assert stats["crc_errors"] > 0 and stats["timeouts"] > 0 and stats["garbage"] > 0
    assert stats["errors"] == 0


def test_dead_channel_keeps_stale_counts_and_saturation_reads_full_scale() -> None:
    load = CountingLoad(4)
    with WeighBoard(4, load=load, rate_hz=80.0) as board:
        time.sleep(0.2)
        board.faults = Faults(dead=frozenset({1}), saturate=frozenset({3}))
        time.sleep(0.1)
        before = board.input_registers()
        time.sleep(0.2)
        after = board.input_registers()
    for regs in (before, after):
        assert regs[IR_CHANNEL_BASE + 3] == ST_FAULT | ST_NOT_RESPONDING
        assert regs[IR_CHANNEL_BASE + 9] == ST_READY | ST_SATURATED
        assert decode_counts(regs[IR_CHANNEL_BASE + 10], regs[IR_CHANNEL_BASE + 11]) == FULL_SCALE
    stale = decode_counts(before[IR_CHANNEL_BASE + 4], before[IR_CHANNEL_BASE + 5])
    assert stale > load.bases[1]  # what it read before it died ...
    assert decode_counts(after[IR_CHANNEL_BASE + 4], after[IR_CHANNEL_BASE + 5]) == stale
    live = [decode_counts(r[IR_CHANNEL_BASE + 1], r[IR_CHANNEL_BASE + 2]) for r in (before, after)]
    assert live[1] - live[0] >= 10  # ... while the others kept converting


def test_outage_then_recovery() -> None:
    with rig(4, timeout_s=0.03, retries=1) as (board, src, _load):
        time.sleep(0.4)
        read_all(src)
        board.faults = Faults(silence=1.0)
        time.sleep(0.8)
        during = len(read_all(src)[0])
        down = src.stats()
        board.faults = Faults()
        time.sleep(0.8)
        after = len(read_all(src)[0])
        up = src.stats()
    assert during <= 2
    assert down["failed_polls"] >= 5 and down["timeouts"] >= 10
    assert after >= 40
    assert up["ok"] > down["ok"] and up["errors"] == 0


def counter_polls(
    counters: list[int], spacing: float = 0.0125
) -> tuple[FloatArray, dict[str, Any]]:
    """Feed a source answers carrying ``counters`` (channel c reads counter - 100 c)."""
    src = ModbusWeightSource("/dev/null", calibrations(2), poll_hz=100.0, start_t=1000.0)
    for k, counter in enumerate(counters):
        regs = [0] * poll_registers(2)
        regs[IR_MAP_VERSION], regs[IR_CHANNELS], regs[IR_RATE_DHZ] = MAP_VERSION, 2, 800
        regs[IR_COUNTER] = counter
        for c in range(2):
            base = IR_CHANNEL_BASE + 3 * c
            regs[base] = ST_READY
            regs[base + 1], regs[base + 2] = encode_counts(counter - 100 * c)
        src._accept(regs, src._mono0 + 0.01 + 0.0125 * k)
    t, raw = read_all(src)
    assert np.all(np.diff(t) > 0) and 1000.0 < t[0] < 1000.2
    assert np.all(raw[:, 0] - raw[:, 1] == 100)
    return raw[:, 0], src.stats()


def test_counter_wrap_duplicates_and_late_answers() -> None:
    # baseline, duplicate, new, wrapped past one missed, a late (older) answer, new
    seen, stats = counter_polls([0xFFFE, 0xFFFE, 0xFFFF, 0x0001, 0xFFF0, 0x0002])
    assert seen.tolist() == [0xFFFF, 0x0001, 0x0002]
    assert (stats["duplicates"], stats["skipped"], stats["stale"]) == (1, 1, 1)


def test_counter_restart_is_followed_after_three_answers() -> None:
    seen, stats = counter_polls([30000, 30001, 5, 6, 7, 8])
    assert seen.tolist() == [30001, 8]
    assert stats["stale"] == 3


def test_board_with_too_few_channels_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level("ERROR", logger="freshbox.modbus"),
        WeighBoard(4, load=CountingLoad(4), rate_hz=80.0) as board,
    ):
        src = ModbusWeightSource(board.device, calibrations(8), poll_hz=100.0).start()
        time.sleep(0.5)
        src.close()
    stats = src.stats()
    assert stats["board_channels"] == 4 and stats["samples"] == 0 and stats["probes"] >= 2
    assert stats["errors"] == 0 and "4 channels" in str(stats["last_error"])
    assert len([r for r in caplog.records if "4 channels" in r.getMessage()]) == 1


def test_missing_port_is_counted_not_fatal() -> None:
    src = ModbusWeightSource("/dev/freshbox-no-such-port", calibrations(2)).start()
    time.sleep(0.4)
    assert src.read(float("inf")).raw.shape == (0, 2)
    started = time.monotonic()
    src.close()
    assert time.monotonic() - started < 2.0
    stats = src.stats()
    assert stats["io_errors"] >= 1 and stats["samples"] == 0 and stats["errors"] == 0


@contextmanager
def board_process(*args: str) -> Iterator[str]:
    """``freshbox mock weighboard ARGS`` in its own process (as a real board is): its device."""
    proc = subprocess.Popen(
        [*freshbox(), "mock", "weighboard", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert proc.stdout is not None
        device = proc.stdout.readline().strip()
        assert device.startswith("/dev/"), proc.stderr.read() if proc.stderr else ""
        yield device
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(("channels", "minimum"), [(8, 70.0), (16, 50.0)])
def test_polling_rate_at_115200_baud(channels: int, minimum: float) -> None:
    with board_process("--channels", str(channels), "--baud", "115200") as device:
        src = ModbusWeightSource(device, calibrations(channels), poll_hz=1000.0).start()
        try:
            time.sleep(2.0)
            t, raw = read_all(src)
        finally:
            src.close()
    stats = src.stats()
    print(f"{channels} channels at 115200 baud: {stats['polls_per_s']:.1f} polls/s")
    assert stats["polls_per_s"] >= minimum
    assert raw.shape == (len(t), channels) and len(t) >= 100
    # the idle shelf's own invalid readings (physics invalid_rate 1 %) are the only NaN
    assert np.isnan(raw).mean() < 0.05
    assert stats["crc_errors"] == stats["garbage"] == stats["errors"] == 0
    assert stats["timeouts"] <= 0.01 * stats["polls"]


# ---------------------------------------------------------------- daemon and CLI


def test_daemon_bills_on_the_emulated_modbus_board(tmp_path: Path) -> None:
    config = dataclasses.replace(load_config(EXAMPLE), db_path=tmp_path / "cabinet.db")
    bills: list[dict[str, Any]] = []
    stop = threading.Event()

    def on_session(result: SessionResult) -> None:
        bills.append(result.record)
        if result.record["lines"]:
            stop.set()

    run_daemon(config, duration=30.0, stop=stop, on_session=on_session)
    billed = [b for b in bills if b["lines"]]
    assert billed, bills
    assert billed[0]["total_fen"] > 0
    with CabinetStore(config.db_path, cabinet_id=config.cabinet_id) as store:
        assert store.check_consistency() == []


def test_mock_weighboard_command_serves_and_stops_on_sigint() -> None:
    proc = subprocess.Popen(
        [*freshbox(), "mock", "weighboard", "--channels", "8", "--fault", "dead=7"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        assert proc.stdout is not None
        device = proc.stdout.readline().strip()
        assert device.startswith("/dev/") and os.path.exists(device), device
        time.sleep(0.1)  # a few conversions
        with serial.Serial(device, 115200, timeout=1.0) as port:
            regs = registers_of(transact(port, struct.pack(">BHH", 0x04, 0, 32), 69))
        assert regs[IR_MAP_VERSION] == MAP_VERSION and regs[IR_CHANNELS] == 8
        assert regs[IR_CHANNEL_BASE] & ST_READY
        assert regs[IR_CHANNEL_BASE + 21] == ST_FAULT | ST_NOT_RESPONDING
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopped" in err
    assert out.strip() == ""  # the device path was the only line


# ---------------------------------------------------------------- configuration


def example_data() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text())


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"emulated": True, "speed": 9600}, "speed"),
        ({"emulated": True, "baud": "fast"}, "baud"),
        ({"emulated": True, "baud": 0}, "baud"),
        ({"emulated": True, "parity": "X"}, "parity"),
        ({"emulated": True, "stopbits": 3}, "stopbits"),
        ({"emulated": True, "poll_hz": 0}, "poll_hz"),
        ({"emulated": True, "timeout_s": -1}, "timeout_s"),
        ({"emulated": True, "retries": -1}, "retries"),
        ({"emulated": True, "unit": 0}, "unit"),
        ({"emulated": True, "unit": 248}, "unit"),
        ({"emulated": True, "channels": 3}, "channels"),
        ({"emulated": True, "channels": 33}, "channels"),
        ({"emulated": "yes"}, "emulated"),
        ({}, "port"),
        ({"port": ""}, "port"),
        ({"port": "/dev/ttyUSB0", "emulated": True}, "port"),
        ({"port": "/dev/ttyUSB0", "faults": "crc=0.1"}, "faults"),
        ({"emulated": True, "faults": "crc=2"}, "faults"),
        ({"emulated": True, "faults": "boom=1"}, "faults"),
        ({"emulated": True, "faults": "dead=x"}, "faults"),
    ],
)
def test_bad_modbus_keys_name_the_key(table: dict[str, Any], key: str, tmp_path: Path) -> None:
    data = example_data()
    data["hardware"]["modbus"] = table
    config = parse_config(data, source="cab.toml", base=tmp_path)
    with pytest.raises(ConfigError) as err:
        create_hardware(config)
    assert str(err.value).startswith(f"cab.toml: hardware.modbus.{key}: "), str(err.value)


def test_real_hardware_without_doorlock_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "edge.hardware.doorlock", None)
    data = example_data()
    data["hardware"]["modbus"] = {"port": "/dev/ttyUSB0"}
    config = parse_config(data, source="cab.toml", base=tmp_path)
    with pytest.raises(ConfigError, match=r"cab\.toml: hardware\.modbus\.emulated: .*doorlock"):
        create_hardware(config)


def test_fault_specs() -> None:
    f = Faults.parse("crc=0.05, silence=0.02,garbage=0.01,dead=3+4,saturate=5,dead=6")
    assert (f.crc, f.silence, f.garbage) == (0.05, 0.02, 0.01)
    assert f.dead == {3, 4, 6} and f.saturate == {5}
    assert Faults.parse("") == Faults()
    assert Faults.parse(f.describe()) == f
    for bad in ("crc=1.5", "bogus=1", "dead=x", "dead=40", "crc=0.6,silence=0.6", "crc"):
        with pytest.raises(ValueError):
            Faults.parse(bad)
