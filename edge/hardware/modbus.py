"""The ``modbus`` hardware backend: a multi-channel weigh board on Modbus RTU (RS-485).

The register map is ``docs/weighboard.md``; its constants live here, and the emulated
board of ``firmware_mock.weighboard`` serves the same map. ``ModbusWeightSource`` polls
the board on its own thread with pymodbus' serial client (pyserial underneath): one
read of the header and every channel per poll, a new sample whenever the board's
sample counter moves, NaN for channels whose status says they cannot be trusted.
Line errors (timeouts, CRC errors, garbage) are counted and retried; none of them
stops the source, so none stops the daemon.

``[hardware.modbus]`` (validated here, errors name the key)::

    port = "/dev/ttyUSB0"   # the RS-485 adapter (required unless emulated)
    unit = 1                # Modbus unit id of the board (1..247)
    baud = 115200
    parity = "N"            # N | E | O
    stopbits = 1            # 1 | 2
    poll_hz = 100.0         # polls per second (the board converts at its own rate)
    timeout_s = 0.05        # response timeout (default: from the baud and frame size)
    retries = 2             # extra attempts per poll before it counts as failed
    channels = 4            # board channels to poll (default: highest [[channels]] + 1)
    emulated = false        # true: serve an emulated board on a pseudo-terminal
    faults = ""             # emulated only: "crc=0.05,silence=0.02,garbage=0.01,dead=3"
"""

from __future__ import annotations

import bisect
import importlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.errors import ConfigError
from edge.model import Calibration, FloatArray, SampleBlock

if TYPE_CHECKING:
    from edge.config import CabinetConfig
    from edge.hardware.registry import Hardware

log = logging.getLogger("freshbox.modbus")

# ---------------------------------------------------------------- register map
# (docs/weighboard.md is the reference; keep the two in step)

#: Version of the register map this code speaks (input register IR_MAP_VERSION).
MAP_VERSION = 1
#: Most channels one board may have (header + 3 registers per channel in one read).
MAX_CHANNELS = 32

# Input registers (function 0x04), read-only.
IR_MAP_VERSION = 0x0000
IR_CHANNELS = 0x0001
IR_RATE_DHZ = 0x0002  # conversion rate in 0.1 Hz
IR_COUNTER = 0x0003  # sample counter: +1 per conversion, wraps 0xFFFF -> 0
IR_BOARD_STATUS = 0x0004
IR_BAD_FRAMES = 0x0005  # requests the board dropped (bad CRC, bad length), wraps
HEADER_REGISTERS = 8  # 0x0006..0x0007 reserved, read as 0
IR_CHANNEL_BASE = 0x0008  # channel c: status at 0x0008 + 3c, counts at +1 (high), +2 (low)
CHANNEL_REGISTERS = 3

# Holding registers (functions 0x03, 0x06, 0x10).
HR_RATE_DHZ = 0x0100  # conversion rate in 0.1 Hz (write to change)
RATE_DHZ_MIN, RATE_DHZ_MAX = 1, 10000

# Channel status bits.
ST_READY = 0x0001  # the counts are a valid conversion of the current sample
ST_FAULT = 0x0002  # the channel's front end reports a fault (open bridge, ...)
ST_SATURATED = 0x0004  # the input is at or beyond the ADC's full scale
ST_NOT_RESPONDING = 0x0008  # the ADC did not answer: the counts are stale
ST_UNUSABLE = ST_FAULT | ST_SATURATED | ST_NOT_RESPONDING

# Board status bits.
BS_RUNNING = 0x0001  # converting
BS_CHANNEL_FAULT = 0x0002  # some channel has FAULT or NOT_RESPONDING

#: Modbus function codes used.
FC_READ_HOLDING = 0x03
FC_READ_INPUT = 0x04
FC_WRITE_SINGLE = 0x06
FC_WRITE_MULTIPLE = 0x10


def poll_registers(channels: int) -> int:
    """Input registers one poll of ``channels`` channels reads (from address 0)."""
    return IR_CHANNEL_BASE + CHANNEL_REGISTERS * channels


def encode_counts(counts: int) -> tuple[int, int]:
    """A signed 32-bit count as (high word, low word), the order the board sends them."""
    u = counts & 0xFFFFFFFF
    return (u >> 16) & 0xFFFF, u & 0xFFFF


def decode_counts(high: int, low: int) -> int:
    """The signed 32-bit count of (high word, low word)."""
    u = ((high & 0xFFFF) << 16) | (low & 0xFFFF)
    return u - (1 << 32) if u & 0x80000000 else u


def char_bits(parity: str, stopbits: int) -> int:
    """Bits on the line per byte: start, 8 data, parity, stop."""
    return 1 + 8 + (0 if parity == "N" else 1) + stopbits


def frame_gap_s(baud: int, parity: str = "N", stopbits: int = 1) -> float:
    """The RTU inter-frame silence t3.5 (fixed at 1.75 ms above 19200 baud)."""
    return 0.00175 if baud > 19200 else 3.5 * char_bits(parity, stopbits) / baud


def poll_wire_s(channels: int, baud: int, parity: str = "N", stopbits: int = 1) -> float:
    """Time on the wire of one poll: request, gap, response, gap."""
    request = 8
    response = 5 + 2 * poll_registers(channels)
    return (request + response) * char_bits(parity, stopbits) / baud + 2 * frame_gap_s(
        baud, parity, stopbits
    )


# ---------------------------------------------------------------- configuration

PARITIES = ("N", "E", "O")
MODBUS_KEYS = (
    "port",
    "unit",
    "baud",
    "parity",
    "stopbits",
    "poll_hz",
    "timeout_s",
    "retries",
    "channels",
    "emulated",
    "faults",
)


@dataclass(frozen=True, slots=True)
class ModbusSettings:
    """``[hardware.modbus]``, validated."""

    port: str | None = None
    unit: int = 1
    baud: int = 115200
    parity: str = "N"
    stopbits: int = 1
    poll_hz: float = 100.0
    timeout_s: float | None = None  # None: from the baud rate and frame size
    retries: int = 2
    channels: int | None = None  # None: highest configured channel + 1
    emulated: bool = False
    faults: str = ""


def parse_settings(config: CabinetConfig) -> ModbusSettings:
    """Validate ``[hardware.modbus]`` of ``config``; errors name the key."""
    table = config.hardware.get("modbus", {})

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{config.source}: hardware.modbus.{key}: {problem}")

    for key in table:
        if key not in MODBUS_KEYS:
            raise fail(key, f"unknown key; one of {', '.join(MODBUS_KEYS)}")

    def integer(key: str, default: int, lo: int, hi: int) -> int:
        v = table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise fail(key, "must be an integer")
        if not lo <= v <= hi:
            raise fail(key, f"must be between {lo} and {hi}")
        return v

    def number(key: str, default: float, lo: float, hi: float) -> float:
        v = table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise fail(key, "must be a number")
        if not lo < v <= hi:
            raise fail(key, f"must be > {lo:g} and <= {hi:g}")
        return float(v)

    emulated = table.get("emulated", False)
    if not isinstance(emulated, bool):
        raise fail("emulated", "must be true or false")
    port = table.get("port")
    if port is not None and (not isinstance(port, str) or not port):
        raise fail("port", "must be a non-empty string (the serial device, e.g. /dev/ttyUSB0)")
    if port is None and not emulated:
        raise fail("port", "missing (the serial device, e.g. /dev/ttyUSB0; or emulated = true)")
    if port is not None and emulated:
        raise fail("port", "not with emulated = true (the emulated board makes its own)")
    parity = table.get("parity", "N")
    if not isinstance(parity, str) or parity.upper() not in PARITIES:
        raise fail("parity", f"must be one of {', '.join(PARITIES)}")
    stopbits = integer("stopbits", 1, 1, 2)
    timeout_s = number("timeout_s", 1.0, 0.0, 10.0) if "timeout_s" in table else None
    channels = integer("channels", 1, 1, MAX_CHANNELS) if "channels" in table else None
    highest = max(c.channel for c in config.calibrations)
    if highest >= MAX_CHANNELS:
        raise fail("channels", f"a board has at most {MAX_CHANNELS} channels (0..{highest})")
    if channels is not None and channels <= highest:
        raise fail("channels", f"must be > {highest}, the highest channel of [[channels]]")
    faults = table.get("faults", "")
    if not isinstance(faults, str):
        raise fail("faults", 'must be a string such as "crc=0.05,silence=0.02"')
    if faults and not emulated:
        raise fail("faults", "only with emulated = true")
    if faults:
        from firmware_mock.weighboard import Faults

        try:
            Faults.parse(faults)
        except ValueError as exc:
            raise fail("faults", str(exc)) from None
    return ModbusSettings(
        port=port,
        unit=integer("unit", 1, 1, 247),
        baud=integer("baud", 115200, 300, 4_000_000),
        parity=parity.upper(),
        stopbits=stopbits,
        poll_hz=number("poll_hz", 100.0, 0.0, 1000.0),
        timeout_s=timeout_s,
        retries=integer("retries", 2, 0, 10),
        channels=channels,
        emulated=emulated,
        faults=faults,
    )


# ---------------------------------------------------------------- the weight source

#: Samples kept for ``read`` at most (older ones are dropped and counted).
MAX_BUFFERED = 60_000
#: pymodbus logs every unanswered request; the source counts them instead.
_LIBRARY_LOGGER = "pymodbus.logging"

_COUNTERS = (
    "polls",  # poll cycles
    "ok",  # polls answered with a valid frame
    "samples",  # new samples delivered
    "duplicates",  # polls that found no new conversion
    "stale",  # answers with an older counter than the last (late answers), ignored
    "skipped",  # conversions the polls missed (the counter jumped by more than 1)
    "attempts",  # requests sent (polls and their retries)
    "retries",  # requests repeated after a failed attempt
    "failed_polls",  # polls whose every attempt failed
    "timeouts",  # no answer within timeout_s
    "crc_errors",  # an answer whose CRC did not match
    "garbage",  # bytes that were no answer to the request
    "exceptions",  # Modbus exception responses
    "io_errors",  # the serial port could not be opened, read or written
    "errors",  # anything else (logged)
    "probes",  # reads of the board header (at start and after trouble)
    "dropped",  # samples dropped because nobody read them
    "unusable",  # channel readings given as NaN (status fault/saturated/not responding)
    "saturated",  # of which saturated
)


class ModbusWeightSource:
    """``WeightSource`` over a Modbus RTU weigh board, polled on its own thread."""

    def __init__(
        self,
        port: str,
        calibrations: Sequence[Calibration],
        *,
        unit: int = 1,
        baud: int = 115200,
        parity: str = "N",
        stopbits: int = 1,
        poll_hz: float = 100.0,
        timeout_s: float | None = None,
        retries: int = 2,
        channels: int | None = None,
        sample_rate_hz: float = 80.0,
        start_t: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not calibrations:
            raise ValueError("no channels")
        self.port = port
        self._calibrations = tuple(calibrations)
        self.unit = unit
        self.baud = baud
        self.parity = parity
        self.stopbits = stopbits
        self.poll_hz = poll_hz
        self.retries = retries
        highest = max(c.channel for c in self._calibrations)
        self.channels = channels if channels is not None else highest + 1
        if self.channels <= highest or self.channels > MAX_CHANNELS:
            raise ValueError(f"channels must be in {highest + 1}..{MAX_CHANNELS}")
        wire = poll_wire_s(self.channels, baud, parity, stopbits)
        self.timeout_s = timeout_s if timeout_s is not None else max(0.03, 3.0 * wire + 0.01)
        self._columns = np.array([c.channel for c in self._calibrations], dtype=np.intp)
        self._rate_hz = float(sample_rate_hz)
        self._clock = clock
        self._start_t = start_t
        self._mono0 = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._times: list[float] = []
        self._rows: list[FloatArray] = []
        self._stats: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._unusable_by_channel = np.zeros(self.channels, dtype=np.int64)
        self._last_error: str | None = None
        self._complained: str | None = None
        self._board_channels: int | None = None
        self._board_status = 0
        self._connected = False
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        # sample timing: counter unwrapped, anchored to the host clock
        self._last_counter: int | None = None
        self._n = 0
        self._anchor: tuple[int, float] | None = None
        self._last_t = -math.inf
        self._last_accept = -math.inf
        self._backwards = 0
        self._rx = b""
        self._client: Any = None
        self._thread: threading.Thread | None = None
        if logging.getLogger(_LIBRARY_LOGGER).level == logging.NOTSET:
            logging.getLogger(_LIBRARY_LOGGER).setLevel(logging.CRITICAL)

    # ------------------------------------------------------------ WeightSource

    @property
    def sample_rate_hz(self) -> float:
        """The board's conversion rate (as it reports it; the configured one before)."""
        return self._rate_hz

    @property
    def calibrations(self) -> tuple[Calibration, ...]:
        return self._calibrations

    def read(self, until: float) -> SampleBlock:
        """The samples stamped before ``until`` not yet returned."""
        with self._lock:
            k = bisect.bisect_left(self._times, until)
            times, rows = self._times[:k], self._rows[:k]
            del self._times[:k], self._rows[:k]
        if not times:
            return SampleBlock(np.empty(0), np.empty((0, len(self._calibrations))))
        return SampleBlock(np.array(times, dtype=np.float64), np.vstack(rows))

    def close(self) -> None:
        """Stop polling and release the port (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0 + 2 * self.timeout_s)
            self._thread = None
            self._stopped_at = self._clock()
            s = self.stats()
            log.info(
                "%s: %d polls (%.1f/s), %d samples, %d skipped, %d timeouts, %d CRC errors, "
                "%d garbage, %d exceptions, %d I/O errors",
                self.port,
                s["polls"],
                s["polls_per_s"],
                s["samples"],
                s["skipped"],
                s["timeouts"],
                s["crc_errors"],
                s["garbage"],
                s["exceptions"],
                s["io_errors"],
            )
        self._disconnect()

    # ------------------------------------------------------------ control

    def start(self) -> ModbusWeightSource:
        """Start the polling thread."""
        if self._thread is None:
            self._started_at = self._clock()
            self._thread = threading.Thread(
                target=self._run, name=f"modbus-poll {self.port}", daemon=True
            )
            self._thread.start()
        return self

    def __enter__(self) -> ModbusWeightSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Counters since start (see ``_COUNTERS``) and the board's state, for diagnostics."""
        with self._lock:
            out: dict[str, Any] = dict(self._stats)
            out["unusable_by_channel"] = {
                ch: int(n) for ch, n in enumerate(self._unusable_by_channel) if n
            }
            out["last_error"] = self._last_error
            out["board_channels"] = self._board_channels
            out["board_status"] = self._board_status
            out["connected"] = self._connected
        out["port"] = self.port
        out["rate_hz"] = self._rate_hz
        out["channels_polled"] = self.channels
        out["timeout_s"] = self.timeout_s
        end = self._stopped_at if self._stopped_at is not None else self._clock()
        elapsed = end - self._started_at if self._started_at is not None else 0.0
        out["elapsed_s"] = elapsed
        out["polls_per_s"] = out["ok"] / elapsed if elapsed > 0 else 0.0
        return out

    # ------------------------------------------------------------ polling thread

    def _run(self) -> None:
        period = 1.0 / self.poll_hz
        backoff = 0.0
        probed = False
        failures = 0
        next_at = self._clock()
        while not self._stop.is_set():
            now = self._clock()
            if now < next_at:
                self._stop.wait(next_at - now)
                continue
            next_at = max(next_at + period, now)
            try:
                if not self._ensure_connected():
                    backoff = min(5.0, max(0.25, 2 * backoff))
                    self._stop.wait(backoff)
                    continue
                backoff = 0.0
                if not probed:
                    probed = self._probe()
                    if not probed:
                        self._stop.wait(min(1.0, 10 * period))
                    continue
                registers = self._request(IR_MAP_VERSION, poll_registers(self.channels), True)
                if registers is None:
                    failures += 1
                    if failures == 20:  # a long silence: read the header again first
                        self._complain(f"no valid answer to 20 polls ({self._last_error})")
                        probed = False
                    continue
                if failures >= 20:
                    log.warning("%s: the weigh board answers again", self.port)
                    self._complained = None
                failures = 0
                if registers[IR_MAP_VERSION] != MAP_VERSION:
                    probed = False
                    continue
                self._accept(registers, self._clock())
            except Exception as exc:  # never let the thread die
                self._count("errors")
                text = f"{type(exc).__name__}: {exc}"
                self._error(text)
                if text != self._complained:  # with the traceback, once
                    log.exception("%s: modbus poll failed", self.port)
                    self._complained = text
                self._disconnect()
                self._stop.wait(0.5)
        self._disconnect()

    def _ensure_connected(self) -> bool:
        if self._client is not None and self._client.connected:
            return True
        from pymodbus import FramerType
        from pymodbus.client import ModbusSerialClient

        if self._client is None:
            self._client = ModbusSerialClient(
                self.port,
                framer=FramerType.RTU,
                baudrate=self.baud,
                bytesize=8,
                parity=self.parity,
                stopbits=self.stopbits,
                timeout=self.timeout_s,
                retries=0,  # the source retries itself, counting each failure by kind
                name="weighboard",
                trace_packet=self._trace_packet,
            )
        ok = bool(self._client.connect())
        with self._lock:
            self._connected = ok
        if not ok:
            self._count("io_errors")
            self._complain(f"cannot open {self.port}")
        return ok

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # pragma: no cover - closing a broken port
                log.debug("closing %s", self.port, exc_info=True)
        with self._lock:
            self._connected = False

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus hook: remember what arrived since the last request, to classify failures."""
        self._rx = b"" if sending else bytes(data)
        return data

    def _probe(self) -> bool:
        """Read the header: map version, channel count, rate."""
        self._count("probes")
        header = self._request(IR_MAP_VERSION, HEADER_REGISTERS, False)
        if header is None:
            return False
        version, channels = header[IR_MAP_VERSION], header[IR_CHANNELS]
        if version != MAP_VERSION:
            self._complain(f"the board speaks register map {version}, not {MAP_VERSION}")
            return False
        with self._lock:
            self._board_channels = channels
        if channels < self.channels:
            self._complain(f"the board has {channels} channels; {self.channels} are polled")
            return False
        rate = header[IR_RATE_DHZ] / 10.0
        if rate > 0:
            self._rate_hz = rate
        self._complained = None
        log.info(
            "%s: weigh board unit %d, %d channels at %.1f Hz", self.port, self.unit, channels, rate
        )
        return True

    def _request(self, address: int, count: int, is_poll: bool) -> list[int] | None:
        """Read ``count`` input registers, retrying; None when every attempt failed."""
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        if is_poll:
            self._count("polls")
        for attempt in range(self.retries + 1):
            if self._stop.is_set():
                return None
            if attempt:
                self._count("retries")
            self._count("attempts")
            self._rx = b""
            try:
                response = self._client.read_input_registers(
                    address, count=count, device_id=self.unit
                )
            except ConnectionException as exc:
                self._count("io_errors")
                self._error(f"serial port: {exc}")
                self._disconnect()
                return None
            except ModbusIOException:
                self._classify_failure(count)
                continue
            if response.isError():
                self._count("exceptions")
                self._error(f"exception response, code {response.exception_code}")
                continue
            registers = list(response.registers)
            if response.function_code != FC_READ_INPUT or len(registers) != count:
                self._count("garbage")
                continue
            if is_poll:
                self._count("ok")
            return registers
        if is_poll:
            self._count("failed_polls")
        return None

    def _classify_failure(self, count: int) -> None:
        rx = self._rx
        length = 5 + 2 * count
        if not rx:
            self._count("timeouts")
            self._error("timeout")
        elif (
            len(rx) >= length
            and rx[0] == self.unit
            and rx[1] == FC_READ_INPUT
            and rx[2] == 2 * count
        ) or (len(rx) >= 5 and rx[0] == self.unit and rx[1] == FC_READ_INPUT | 0x80):
            self._count("crc_errors")
            self._error("CRC error")
        else:
            self._count("garbage")
            self._error(f"garbage ({len(rx)} bytes)")

    def _accept(self, registers: list[int], mono: float) -> None:
        """A successful poll: a new sample if the counter moved."""
        counter = registers[IR_COUNTER]
        rate_dhz = registers[IR_RATE_DHZ]
        rate = rate_dhz / 10.0 if rate_dhz else self._rate_hz
        with self._lock:
            self._board_status = registers[IR_BOARD_STATUS]
        if rate != self._rate_hz:
            log.info("%s: board rate now %.1f Hz", self.port, rate)
            self._rate_hz = rate
            self._anchor = None
        gap, self._last_accept = mono - self._last_accept, mono
        if gap > 0x8000 / rate:  # silent long enough for the counter to wrap: start over
            self._last_counter = None
        if self._last_counter is None:
            # the first answer sets the baseline: whether its conversion is new (or even
            # made yet: a board that just powered up answers before its first) is unknown
            self._last_counter, self._backwards = counter, 0
            return
        delta = (counter - self._last_counter) & 0xFFFF
        if delta == 0:
            self._count("duplicates")
            return
        if delta >= 0x8000:  # the counter went back: a late answer to an earlier request,
            self._count("stale")  # or, when it keeps happening, a board that restarted
            self._backwards += 1
            if self._backwards >= 3:
                log.warning("%s: the sample counter restarted (board reset?)", self.port)
                self._last_counter, self._backwards, self._anchor = counter, 0, None
            return
        self._last_counter, self._backwards = counter, 0
        if delta > 1:
            self._count("skipped", delta - 1)
        self._n += delta
        t_recv = self._start_t + (mono - self._mono0)
        # stamp the sample from the counter (regular spacing), re-anchored to the host
        # clock when it would lie in the future or lag too far behind
        max_lag = 2.0 / rate + 2.0 / self.poll_hz + self.timeout_s
        if self._anchor is not None:
            t = self._anchor[1] + (self._n - self._anchor[0]) / rate
            if t > t_recv or t < t_recv - max_lag:
                self._anchor = None
        if self._anchor is None:
            self._anchor = (self._n, t_recv)
            t = t_recv
        t = max(t, self._last_t + 1e-6)
        self._last_t = t
        row = np.full(len(self._calibrations), np.nan)
        unusable: list[int] = []
        saturated = 0
        for i, ch in enumerate(self._columns):
            base = IR_CHANNEL_BASE + CHANNEL_REGISTERS * int(ch)
            status = registers[base]
            if status & ST_READY and not status & ST_UNUSABLE:
                row[i] = float(decode_counts(registers[base + 1], registers[base + 2]))
            else:
                unusable.append(int(ch))
                if status & ST_SATURATED:
                    saturated += 1
        with self._lock:
            self._times.append(t)
            self._rows.append(row)
            self._stats["samples"] += 1
            self._stats["unusable"] += len(unusable)
            self._stats["saturated"] += saturated
            self._unusable_by_channel[unusable] += 1
            if len(self._times) > MAX_BUFFERED:
                extra = len(self._times) - MAX_BUFFERED
                del self._times[:extra], self._rows[:extra]
                self._stats["dropped"] += extra

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._stats[name] += n

    def _error(self, text: str) -> None:
        with self._lock:
            self._last_error = text

    def _complain(self, text: str) -> None:
        """A problem that persists: logged once (until it changes or things recover)."""
        self._error(text)
        if text != self._complained:
            log.error("%s: %s", self.port, text)
            self._complained = text


# ---------------------------------------------------------------- the backend


def open_source(
    port: str, settings: ModbusSettings, config: CabinetConfig, *, start_t: float
) -> ModbusWeightSource:
    """A started ``ModbusWeightSource`` on ``port`` as ``[hardware.modbus]`` describes it."""
    return ModbusWeightSource(
        port,
        config.calibrations,
        unit=settings.unit,
        baud=settings.baud,
        parity=settings.parity,
        stopbits=settings.stopbits,
        poll_hz=settings.poll_hz,
        timeout_s=settings.timeout_s,
        retries=settings.retries,
        channels=settings.channels,
        sample_rate_hz=config.sample_rate_hz,
        start_t=start_t,
    ).start()


def create_hardware(config: CabinetConfig, *, start_t: float = 0.0) -> Hardware:
    """The ``modbus`` backend for the daemon (see ``edge.hardware.registry``)."""
    settings = parse_settings(config)
    if settings.emulated:
        from firmware_mock.weighboard import emulated_hardware

        return emulated_hardware(config, settings, start_t=start_t)
    return _real_hardware(config, settings, start_t=start_t)


def _real_hardware(config: CabinetConfig, settings: ModbusSettings, *, start_t: float) -> Hardware:
    """The weigh board on a real serial port; lock and door switch on the Pi's GPIO."""
    from edge.hardware.interfaces import DoorSwitch, Lock
    from edge.hardware.registry import Hardware

    try:  # written alongside; imported only for real hardware
        doorlock = importlib.import_module("edge.hardware.doorlock")
    except ImportError as exc:
        raise ConfigError(
            f"{config.source}: hardware.modbus.emulated: the real door lock and switch need "
            f"edge.hardware.doorlock, which is not available ({exc}); "
            "set emulated = true to run on an emulated board"
        ) from None
    try:
        import RPi.GPIO as gpio  # the pi extra
    except ImportError as exc:
        raise ConfigError(
            f"{config.source}: hardware.backend: the modbus backend drives the lock through "
            f"RPi.GPIO, which is not installed ({exc}); pip install 'freshbox[pi]'"
        ) from None
    made = doorlock.create_door_lock(config, gpio)
    # (lock, door) or (lock, door, close), or an object with .lock and .door (and .close)
    if isinstance(made, tuple | list):
        lock, door = made[0], made[1]
        close = made[2] if len(made) > 2 else None
    else:
        lock, door, close = made.lock, made.door, getattr(made, "close", None)
    if not isinstance(lock, Lock) or not isinstance(door, DoorSwitch):
        raise ConfigError(
            f"{config.source}: hardware.lock: create_door_lock gave no lock and door switch"
        )
    assert settings.port is not None  # parse_settings: required unless emulated
    source = open_source(settings.port, settings, config, start_t=start_t)
    closers = [close] if callable(close) else []
    return Hardware(source=source, lock=lock, door=door, closers=closers)
