"""An emulated multi-channel weigh board: a Modbus RTU slave on a pseudo-terminal.

``WeighBoard`` serves the register map of ``docs/weighboard.md`` (constants in
``edge.hardware.modbus``) on the master side of a pty; a client opens the slave side
(``board.device``, e.g. ``/dev/pts/7``) with pyserial exactly as it would open a
USB RS-485 adapter. The framing is real RTU: unit id, function, data, CRC-16 (its own
implementation here, independent of the client library's), requests with a bad CRC
are dropped like on a real line, and with ``pace=True`` every answer arrives when it
would on a wire at the configured baud rate (request, t3.5 gap, answer).

The load on each channel comes from a ``LoadSource``: the simulator's shelf physics
(``SimLoad`` over a ``SimulatedCabinet``, either idle or driven by shoppers). The board
converts at ``rate_hz``: each conversion latches every channel and bumps the sample
counter, so one read always gives one consistent sample.

``Faults`` injects line and sensor trouble: corrupted CRCs, silence, garbage bytes,
dead channels (status fault, stale counts) and saturated channels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import select
import struct
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edge.hardware.interfaces import MemoryLock
from edge.hardware.modbus import (
    BS_CHANNEL_FAULT,
    BS_RUNNING,
    CHANNEL_REGISTERS,
    FC_READ_HOLDING,
    FC_READ_INPUT,
    FC_WRITE_MULTIPLE,
    FC_WRITE_SINGLE,
    HR_RATE_DHZ,
    IR_BAD_FRAMES,
    IR_BOARD_STATUS,
    IR_CHANNEL_BASE,
    IR_CHANNELS,
    IR_COUNTER,
    IR_MAP_VERSION,
    IR_RATE_DHZ,
    MAP_VERSION,
    MAX_CHANNELS,
    RATE_DHZ_MAX,
    RATE_DHZ_MIN,
    ST_FAULT,
    ST_NOT_RESPONDING,
    ST_READY,
    ST_SATURATED,
    ModbusSettings,
    char_bits,
    encode_counts,
    frame_gap_s,
    open_source,
)
from edge.model import FloatArray, Lane
from firmware_mock.scenario import Physics
from firmware_mock.simulator import SimulatedCabinet

if TYPE_CHECKING:
    from edge.config import CabinetConfig
    from edge.hardware.registry import Hardware

log = logging.getLogger("freshbox.weighboard")

#: Full scale of the board's ADC (signed 24-bit): readings at or beyond it saturate.
FULL_SCALE = 8388607
#: Time the board takes to start answering once a request is complete (s).
TURNAROUND_S = 0.0002
#: Modbus exception codes.
EX_ILLEGAL_FUNCTION, EX_ILLEGAL_ADDRESS, EX_ILLEGAL_VALUE = 1, 2, 3


# ---------------------------------------------------------------- CRC-16/MODBUS


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def with_crc(frame: bytes) -> bytes:
    """``frame`` followed by its CRC, low byte first."""
    return frame + crc16(frame).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    """Whether the last two bytes of ``frame`` are the CRC of the rest."""
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


# ---------------------------------------------------------------- faults


def _channels(text: str, key: str) -> frozenset[int]:
    try:
        out = frozenset(int(x) for x in text.split("+") if x.strip())
    except ValueError:
        raise ValueError(f"{key}: channel numbers joined by '+', e.g. {key}=3+5") from None
    if not out or any(not 0 <= c < MAX_CHANNELS for c in out):
        raise ValueError(f"{key}: channel numbers 0..{MAX_CHANNELS - 1}, e.g. {key}=3")
    return out


@dataclass(frozen=True, slots=True)
class Faults:
    """What goes wrong on the board and its line.

    Shares are per answer, drawn independently: ``silence`` (no answer at all), then
    ``crc`` (one bit of the answer flipped, so its CRC fails), then ``garbage`` (random
    bytes instead of the answer). ``dead`` channels report FAULT|NOT_RESPONDING and keep
    their last counts; ``saturate`` channels read full scale with SATURATED.
    """

    crc: float = 0.0
    silence: float = 0.0
    garbage: float = 0.0
    dead: frozenset[int] = frozenset()
    saturate: frozenset[int] = frozenset()

    KEYS = ("crc", "silence", "garbage", "dead", "saturate")

    @classmethod
    def parse(cls, text: str) -> Faults:
        """``"crc=0.05,silence=0.02,garbage=0.01,dead=3,saturate=5+6"`` (any subset)."""
        shares: dict[str, float] = {}
        chans: dict[str, frozenset[int]] = {"dead": frozenset(), "saturate": frozenset()}
        for part in text.split(","):
            if not part.strip():
                continue
            key, sep, value = (s.strip() for s in part.partition("="))
            if not sep or key not in cls.KEYS:
                raise ValueError(
                    f"{part.strip()!r}: expected KEY=VALUE, KEY one of {', '.join(cls.KEYS)}"
                )
            if key in chans:
                chans[key] = chans[key] | _channels(value, key)
                continue
            try:
                share = float(value)
            except ValueError:
                raise ValueError(f"{key}: a share between 0 and 1, e.g. {key}=0.05") from None
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{key}: a share between 0 and 1, e.g. {key}=0.05")
            shares[key] = share
        if sum(shares.values()) > 1.0:
            raise ValueError("crc + silence + garbage: the shares add up to more than 1")
        return cls(**shares, dead=chans["dead"], saturate=chans["saturate"])

    def describe(self) -> str:
        parts = [
            f"{k}={getattr(self, k):g}" for k in ("crc", "silence", "garbage") if getattr(self, k)
        ]
        parts += [
            f"{k}={'+'.join(map(str, sorted(getattr(self, k))))}"
            for k in ("dead", "saturate")
            if getattr(self, k)
        ]
        return ",".join(parts) or "none"


# ---------------------------------------------------------------- load


class LoadSource(Protocol):
    """What lies on the board's load cells, as raw counts."""

    @property
    def channels(self) -> tuple[int, ...]:
        """The board channel of each column of ``advance``."""
        ...

    def advance(self, t: float) -> FloatArray:
        """Raw counts, shape (n, columns), of the samples up to ``t`` (board seconds)
        not given before (NaN: no reading)."""
        ...


class SimLoad:
    """The simulator's shelf physics as the board's load; ``lock`` guards the simulator
    against whoever acts on it from another thread (shoppers)."""

    def __init__(self, sim: SimulatedCabinet, lock: threading.Lock | None = None) -> None:
        self.sim = sim
        self.lock = lock or threading.Lock()
        self._channels = tuple(c.channel for c in sim.calibrations)

    @property
    def channels(self) -> tuple[int, ...]:
        return self._channels

    def advance(self, t: float) -> FloatArray:
        with self.lock:
            return self.sim.advance(t).raw


def idle_load(channels: int, rate_hz: float, seed: int = 7) -> SimLoad:
    """An idle shelf on every channel: produce lying still, with the simulator's noise,
    drift and glitches (calibrations drawn from ``seed``)."""
    rng = random.Random(seed)
    lanes = [
        Lane(lane=c + 1, sku=f"ch{c}", mode="weighed", channel=c, price_fen_per_kg=1000)
        for c in range(channels)
    ]
    stock = {
        c + 1: [round(rng.uniform(200.0, 600.0), 1) for _ in range(3)] for c in range(channels)
    }
    physics = dataclasses.replace(Physics(), sample_rate_hz=rate_hz)
    return SimLoad(SimulatedCabinet.live(lanes, stock, physics, seed=seed, cabinet_id="weighboard"))


# ---------------------------------------------------------------- the board


class _ModbusError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


_STAT_KEYS = (
    "requests",  # frames addressed to the board with a good CRC
    "answers",  # answers written (including corrupted ones)
    "bad_frames",  # frames dropped: bad CRC or too short
    "other_units",  # frames for another unit id
    "exceptions",  # exception responses
    "conversions",  # conversions made
    "crc_injected",
    "silence_injected",
    "garbage_injected",
    "overflow",  # answer bytes the pty would not take (nobody reading)
)


@dataclass(slots=True)
class _Pending:
    due: float
    data: bytes


@dataclass(slots=True)
class _Channel:
    counts: int = 0
    status: int = ST_NOT_RESPONDING
    seen: bool = False


class WeighBoard:
    """An emulated weigh board serving Modbus RTU on a pseudo-terminal."""

    def __init__(
        self,
        channels: int,
        *,
        load: LoadSource | None = None,
        rate_hz: float = 80.0,
        unit: int = 1,
        baud: int = 115200,
        parity: str = "N",
        stopbits: int = 1,
        faults: Faults | None = None,
        seed: int = 0,
        pace: bool = True,
        full_scale: int = FULL_SCALE,
        link: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be 1..{MAX_CHANNELS}")
        if not 1 <= unit <= 247:
            raise ValueError("unit must be 1..247")
        rate_dhz = round(rate_hz * 10)
        if not RATE_DHZ_MIN <= rate_dhz <= RATE_DHZ_MAX:
            raise ValueError(f"rate must be {RATE_DHZ_MIN / 10:g}..{RATE_DHZ_MAX / 10:g} Hz")
        if load is not None and any(not 0 <= c < channels for c in load.channels):
            raise ValueError(f"the load feeds channels {load.channels}, the board has {channels}")
        self.n_channels = channels
        self.load = load
        self.unit = unit
        self.baud = baud
        self.parity = parity
        self.stopbits = stopbits
        #: replace at any time (the board thread reads it once per answer / conversion)
        self.faults = faults or Faults()
        self.pace = pace
        self.full_scale = full_scale
        self.link = Path(link) if link is not None else None
        self._clock = clock
        self._rng = random.Random(seed)
        self._rate_dhz = rate_dhz
        self._char_s = char_bits(parity, stopbits) / baud
        self._gap_s = frame_gap_s(baud, parity, stopbits)
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(_STAT_KEYS, 0)
        self._chan = [_Channel() for _ in range(channels)]
        self._column = {ch: i for i, ch in enumerate(load.channels)} if load else {}
        self._counter = 0
        self._ir: list[int] = [0] * (IR_CHANNEL_BASE + CHANNEL_REGISTERS * channels)
        self._master = -1
        self._slave = -1
        self._wake_r = -1
        self._wake_w = -1
        self._device: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._t0 = 0.0
        self._publish()

    # ------------------------------------------------------------ life cycle

    @property
    def device(self) -> str:
        """The serial device a client opens (the pty's slave side)."""
        if self._device is None:
            raise RuntimeError("the board is not started")
        return self._device

    @property
    def rate_hz(self) -> float:
        return self._rate_dhz / 10.0

    def start(self) -> str:
        """Open the pseudo-terminal and serve on a thread; returns the device path."""
        if self._thread is not None:
            return self.device
        self._master, self._slave = os.openpty()
        # raw line discipline (no echo, no CR/LF mangling) before any client opens it;
        # the board keeps the slave open so the master never reads EOF between clients
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self._wake_r, self._wake_w = os.pipe()
        self._device = os.ttyname(self._slave)
        if self.link is not None:
            if self.link.is_symlink():
                self.link.unlink()
            self.link.symlink_to(self._device)
        self._t0 = self._clock()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="weighboard", daemon=True)
        self._thread.start()
        log.info(
            "weigh board: %d channels, unit %d on %s", self.n_channels, self.unit, self._device
        )
        return self._device

    def stop(self) -> None:
        """Stop serving and close the pseudo-terminal (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
            self._thread.join(timeout=5.0)
            self._thread = None
        for name in ("_master", "_slave", "_wake_r", "_wake_w"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)
        if self.link is not None and self.link.is_symlink():
            with contextlib.suppress(OSError):
                self.link.unlink()

    def __enter__(self) -> WeighBoard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, int]:
        """What the board did since start."""
        with self._lock:
            out = dict(self._stats)
        out["counter"] = self._counter
        return out

    def input_registers(self) -> list[int]:
        """A copy of the input registers as a client would read them now."""
        with self._lock:
            return list(self._ir)

    # ------------------------------------------------------------ serving thread

    def _serve(self) -> None:
        buf = bytearray()
        first_rx = last_rx = 0.0
        pending: list[_Pending] = []
        line_free = self._t0  # when the last answer left the wire
        k = 0  # conversions since base
        base = self._t0
        rate_dhz = self._rate_dhz
        while not self._stop.is_set():
            now = self._clock()
            if self._rate_dhz != rate_dhz:  # the rate register was written
                rate_dhz, base, k = self._rate_dhz, now, 0
            period = 10.0 / rate_dhz
            due = int((now - base) / period)
            if due > k:
                if due - k > 1:  # fell behind (a busy machine): the board kept converting
                    self._bump(due - k - 1)
                self._convert(base - self._t0 + due * period)
                k = due
            while pending and pending[0].due <= now:
                self._write(pending.pop(0).data)
                line_free = now
            frame = self._take_frame(buf, now, last_rx)
            if frame is not None:
                answer = self._answer(bytes(frame))
                if answer is not None:
                    start = max(first_rx, line_free + self._gap_s)
                    at = start + len(frame) * self._char_s + self._gap_s + TURNAROUND_S
                    at += len(answer) * self._char_s
                    pending.append(_Pending(at if self.pace else now, answer))
                    line_free = at if self.pace else now
                continue
            wake = base + (k + 1) * period
            if pending:
                wake = min(wake, pending[0].due)
            if buf:
                wake = min(wake, last_rx + self._gap_s)
            timeout = max(0.0, wake - self._clock())
            try:
                ready, _, _ = select.select([self._master, self._wake_r], [], [], timeout)
            except (OSError, ValueError):
                break
            if self._master in ready:
                try:
                    data = os.read(self._master, 4096)
                except BlockingIOError:
                    continue
                except OSError:  # the pty went away
                    break
                now = self._clock()
                if not buf:
                    first_rx = now
                buf += data
                last_rx = now

    def _take_frame(self, buf: bytearray, now: float, last_rx: float) -> bytearray | None:
        """The next complete request in ``buf``: by length for the functions the board
        knows, else what came before a t3.5 silence."""
        if not buf:
            return None
        need = 0
        if len(buf) >= 2:
            fc = buf[1]
            if fc in (FC_READ_HOLDING, FC_READ_INPUT, FC_WRITE_SINGLE):
                need = 8
            elif fc == FC_WRITE_MULTIPLE and len(buf) >= 7:
                need = 9 + buf[6]
        if need and len(buf) >= need:
            frame = buf[:need]
            del buf[:need]
            return frame
        if now - last_rx >= self._gap_s:
            frame = buf[:]
            buf.clear()
            return frame
        return None

    def _answer(self, frame: bytes) -> bytes | None:
        """The answer to one request frame (None: no answer), faults applied."""
        if not crc_ok(frame):
            self._inc("bad_frames")
            return None
        unit, fc, pdu = frame[0], frame[1], frame[2:-2]
        if unit not in (self.unit, 0):
            self._inc("other_units")
            return None
        self._inc("requests")
        try:
            reply = bytes([fc]) + self._function(fc, pdu)
        except _ModbusError as exc:
            self._inc("exceptions")
            reply = bytes([fc | 0x80, exc.code])
        if unit == 0:  # broadcast: acted on, never answered
            return None
        out = with_crc(bytes([self.unit]) + reply)
        faults = self.faults
        r = self._rng.random()
        if r < faults.silence:
            self._inc("silence_injected")
            return None
        r -= faults.silence
        if r < faults.crc:
            self._inc("crc_injected")
            corrupt = bytearray(out)
            i = self._rng.randrange(3 if len(out) > 5 else 2, len(out))
            corrupt[i] ^= 1 << self._rng.randrange(8)
            out = bytes(corrupt)
        elif r - faults.crc < faults.garbage:
            self._inc("garbage_injected")
            n = self._rng.randint(3, 40)
            first = self._rng.choice([b for b in range(256) if b != self.unit])
            out = bytes([first]) + self._rng.randbytes(n - 1)
        self._inc("answers")
        return out

    def _function(self, fc: int, pdu: bytes) -> bytes:
        if fc in (FC_READ_INPUT, FC_READ_HOLDING):
            if len(pdu) != 4:
                raise _ModbusError(EX_ILLEGAL_VALUE)
            address, count = struct.unpack(">HH", pdu)
            if not 1 <= count <= 125:
                raise _ModbusError(EX_ILLEGAL_VALUE)
            if fc == FC_READ_INPUT:
                with self._lock:
                    if address + count > len(self._ir):
                        raise _ModbusError(EX_ILLEGAL_ADDRESS)
                    values = self._ir[address : address + count]
            else:
                values = [self._holding(a) for a in range(address, address + count)]
            return bytes([2 * count]) + struct.pack(f">{count}H", *values)
        if fc == FC_WRITE_SINGLE:
            if len(pdu) != 4:
                raise _ModbusError(EX_ILLEGAL_VALUE)
            address, value = struct.unpack(">HH", pdu)
            self._write_holding(address, value)
            return pdu
        if fc == FC_WRITE_MULTIPLE:
            if len(pdu) < 5:
                raise _ModbusError(EX_ILLEGAL_VALUE)
            address, count, nbytes = struct.unpack(">HHB", pdu[:5])
            if not 1 <= count <= 123 or nbytes != 2 * count or len(pdu) != 5 + nbytes:
                raise _ModbusError(EX_ILLEGAL_VALUE)
            written = struct.unpack(f">{count}H", pdu[5:])
            for a in range(address, address + count):  # check every address first
                self._holding(a)
            for a, v in zip(range(address, address + count), written, strict=True):
                self._write_holding(a, v)
            return struct.pack(">HH", address, count)
        raise _ModbusError(EX_ILLEGAL_FUNCTION)

    def _holding(self, address: int) -> int:
        if address == HR_RATE_DHZ:
            return self._rate_dhz
        raise _ModbusError(EX_ILLEGAL_ADDRESS)

    def _write_holding(self, address: int, value: int) -> None:
        if address != HR_RATE_DHZ:
            raise _ModbusError(EX_ILLEGAL_ADDRESS)
        if not RATE_DHZ_MIN <= value <= RATE_DHZ_MAX:
            raise _ModbusError(EX_ILLEGAL_VALUE)
        self._rate_dhz = value
        self._publish()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                self._inc("overflow", len(view))
                return
            except OSError:
                return
            view = view[n:]

    # ------------------------------------------------------------ conversions

    def _bump(self, n: int) -> None:
        with self._lock:
            self._counter = (self._counter + n) & 0xFFFF
            self._stats["conversions"] += n

    def _convert(self, t: float) -> None:
        """One conversion at board time ``t``: latch every channel, bump the counter."""
        latest: FloatArray | None = None
        if self.load is not None:
            rows = self.load.advance(t)
            if rows.shape[0]:
                latest = rows[-1]
        faults = self.faults
        for ch, state in enumerate(self._chan):
            value: float | None = None
            if latest is not None and ch in self._column:
                value = float(latest[self._column[ch]])
            elif self.load is None or ch not in self._column:
                value = 0.0  # nothing connected: an empty input reads zero
            if ch in faults.dead:
                state.status = ST_FAULT | ST_NOT_RESPONDING  # counts stay as they were
            elif ch in faults.saturate:
                state.counts, state.seen = self.full_scale, True
                state.status = ST_READY | ST_SATURATED
            elif value is None:  # no new reading from the load: hold the last one
                if not state.seen:
                    state.status = ST_NOT_RESPONDING
            elif math.isnan(value):
                state.status = ST_NOT_RESPONDING
            else:
                counts = round(value)
                if counts >= self.full_scale or counts <= -self.full_scale - 1:
                    counts = max(-self.full_scale - 1, min(self.full_scale, counts))
                    state.status = ST_READY | ST_SATURATED
                else:
                    state.status = ST_READY
                state.counts, state.seen = counts, True
        with self._lock:
            self._counter = (self._counter + 1) & 0xFFFF
            self._stats["conversions"] += 1
        self._publish()

    def _publish(self) -> None:
        """Rebuild the input registers from the latched conversion."""
        ir = [0] * len(self._ir)
        any_fault = False
        for ch, state in enumerate(self._chan):
            base = IR_CHANNEL_BASE + CHANNEL_REGISTERS * ch
            hi, lo = encode_counts(state.counts)
            ir[base : base + 3] = [state.status, hi, lo]
            any_fault = any_fault or bool(state.status & (ST_FAULT | ST_NOT_RESPONDING))
        with self._lock:
            ir[IR_MAP_VERSION] = MAP_VERSION
            ir[IR_CHANNELS] = self.n_channels
            ir[IR_RATE_DHZ] = self._rate_dhz
            ir[IR_COUNTER] = self._counter
            ir[IR_BOARD_STATUS] = BS_RUNNING | (BS_CHANNEL_FAULT if any_fault else 0)
            ir[IR_BAD_FRAMES] = self._stats["bad_frames"] & 0xFFFF
            self._ir = ir

    def _inc(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n


# ---------------------------------------------------------------- the emulated backend


def emulated_hardware(
    config: CabinetConfig, settings: ModbusSettings, *, start_t: float = 0.0
) -> Hardware:
    """``[hardware.modbus] emulated = true``: an emulated board on a pty, fed by a live
    simulated cabinet, polled by the real ``ModbusWeightSource``; the simulator's door,
    a memory lock and the sim backend's shoppers."""
    from edge.hardware.registry import Hardware
    from firmware_mock.live import Shoppers, SimDoor, build_sim

    sim = build_sim(config)
    sim_lock = threading.Lock()
    highest = max(c.channel for c in config.calibrations)
    board = WeighBoard(
        settings.channels or highest + 1,
        load=SimLoad(sim, sim_lock),
        rate_hz=config.sample_rate_hz,
        unit=settings.unit,
        baud=settings.baud,
        parity=settings.parity,
        stopbits=settings.stopbits,
        faults=Faults.parse(settings.faults),
        seed=config.sim.seed,
    )
    device = board.start()
    try:
        source = open_source(device, settings, config, start_t=start_t)
    except BaseException:
        board.stop()
        raise
    log.info("emulated weigh board on %s (faults: %s)", device, board.faults.describe())
    lock = MemoryLock()
    actors: Callable[[Any, float], None] | None = None
    if config.sim.residents:
        shoppers = Shoppers.for_config(sim, config, lock, start_t=start_t)

        def actors(cabinet: Any, now: float) -> None:
            with sim_lock:  # the board thread advances the same simulator
                shoppers(cabinet, now)

    def close_board() -> None:
        log.info("emulated weigh board: %s", board.stats())
        board.stop()

    return Hardware(
        source=source, lock=lock, door=SimDoor(sim), actors=actors, closers=[close_board]
    )


def serve_until(board: WeighBoard, stop: threading.Event, duration: float | None = None) -> None:
    """Serve until ``stop`` is set (or ``duration`` seconds pass)."""
    end = None if duration is None else time.monotonic() + duration
    while not stop.is_set():
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            break
        stop.wait(0.5 if left is None else min(0.5, left))
