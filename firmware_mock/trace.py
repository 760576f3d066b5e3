"""Recorded traces, ``freshbox-trace/1`` (``docs/trace.md``): write and read.

A trace is JSON Lines: a header (the cabinet's channels, lanes and recorded stock),
then one line per sample row (``{"t": .., "raw": [ints or null]}``, t in seconds
rounded to 0.1 ms) or event, in time order. ``read_trace`` validates strictly and
raises ``InputError("<file>: line <n>: <problem>")``; it reads lazily, so errors in
the body surface while iterating.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from edge.errors import InputError
from edge.model import (
    CabinetInput,
    CabinetSpec,
    Calibration,
    DoorEvent,
    SampleBlock,
    UnlockEvent,
)
from firmware_mock import jsonfields as jf
from firmware_mock.jsonfields import FieldError

FORMAT = "freshbox-trace/1"
RAW_MIN, RAW_MAX = -8388608, 8388607
_HEADER_FIELDS = ("format", "cabinet", "sample_rate_hz", "channels", "lanes", "stock")
_HEADER_REQUIRED = ("format", "cabinet", "sample_rate_hz", "channels", "lanes")


# ------------------------------------------------------------------ writing


def write_trace(path: str | Path, spec: CabinetSpec, items: Iterable[CabinetInput]) -> int:
    """Write ``spec`` and ``items`` as a ``freshbox-trace/1`` file; returns the sample rows."""
    rows = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(header_dict(spec), ensure_ascii=False) + "\n")
        n_ch = len(spec.calibrations)
        for item in items:
            if isinstance(item, SampleBlock):
                rows += _write_block(f, item, n_ch)
            elif isinstance(item, UnlockEvent):
                who = "operator" if item.role == "operator" else "resident"
                line = {"t": _t(item.t), "event": "unlock", who: item.resident}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
            else:
                state = "open" if item.open else "closed"
                f.write(json.dumps({"t": _t(item.t), "event": "door", "state": state}) + "\n")
    return rows


def header_dict(spec: CabinetSpec) -> dict[str, object]:
    """The header line of a trace of ``spec``."""
    tracked = {ln.lane for ln in spec.lanes if ln.mode == "tracked"}
    return {
        "format": FORMAT,
        "cabinet": spec.cabinet_id,
        "sample_rate_hz": _num(spec.sample_rate_hz),
        "channels": [
            {
                "channel": c.channel,
                "zero_counts": _num(c.zero_counts),
                "counts_per_g": _num(c.counts_per_g),
            }
            for c in spec.calibrations
        ],
        "lanes": [jf.lane_to_dict(ln, with_channel=True) for ln in spec.lanes],
        "stock": {str(k): list(v) for k, v in spec.stock.items() if k in tracked},
    }


def _write_block(f: IO[str], block: SampleBlock, n_ch: int) -> int:
    if block.raw.ndim != 2 or block.raw.shape[1] != n_ch:
        raise ValueError(f"sample block of shape {block.raw.shape}, expected (n, {n_ch})")
    missing = np.isnan(block.raw)
    ints = np.where(missing, 0, block.raw).astype(np.int64).tolist()
    if missing.any():
        for row, miss in zip(ints, missing.tolist(), strict=True):
            for j, m in enumerate(miss):
                if m:
                    row[j] = None
    lines = [
        f'{{"t": {_t(float(t))!r}, "raw": {json.dumps(row)}}}\n'
        for t, row in zip(block.t.tolist(), ints, strict=True)
    ]
    f.write("".join(lines))
    return len(lines)


def _t(t: float) -> float:
    return round(t, 4)


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


# ------------------------------------------------------------------ reading


def read_trace(
    path: str | Path, block_s: float = 0.1
) -> tuple[CabinetSpec, Iterator[CabinetInput]]:
    """Read a trace: its cabinet now, its samples (in blocks of at most ``block_s``
    seconds) and events lazily, in file order. Errors name the line."""
    source = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{source}: cannot read: {e}") from e
    if not first.strip():
        raise InputError(f"{source}: line 1: missing header")
    try:
        spec = _parse_header(jf.decode(first))
    except json.JSONDecodeError as e:
        raise InputError(f"{source}: line 1: invalid JSON: {e.msg}") from e
    except FieldError as e:
        raise InputError(f"{source}: line 1: {e}") from e
    return spec, _body(Path(path), source, spec, block_s)


def _parse_header(obj: object) -> CabinetSpec:
    d = jf.obj(obj, "")
    jf.keys(d, "", _HEADER_FIELDS, _HEADER_REQUIRED)
    if d["format"] != FORMAT:
        raise FieldError("format", f'expected "{FORMAT}"')
    cabinet = jf.string(d["cabinet"], "cabinet")
    rate = jf.number(d["sample_rate_hz"], "sample_rate_hz", gt=0)
    channels = jf.array(d["channels"], "channels")
    if not channels:
        raise FieldError("channels", "must list at least one channel")
    calibrations: list[Calibration] = []
    for i, c in enumerate(channels):
        p = jf.join("channels", i)
        cd = jf.obj(c, p)
        jf.keys(
            cd,
            p,
            ("channel", "zero_counts", "counts_per_g"),
            ("channel", "zero_counts", "counts_per_g"),
        )
        ch = jf.integer(cd["channel"], jf.join(p, "channel"), ge=0)
        if any(x.channel == ch for x in calibrations):
            raise FieldError(jf.join(p, "channel"), f"duplicate channel {ch}")
        calibrations.append(
            Calibration(
                ch,
                jf.number(cd["zero_counts"], jf.join(p, "zero_counts")),
                jf.number(cd["counts_per_g"], jf.join(p, "counts_per_g"), gt=0),
            )
        )
    lanes = jf.parse_lanes(d["lanes"], "lanes", channel_required=True)
    known = {c.channel for c in calibrations}
    for i, ln in enumerate(lanes):
        if ln.channel not in known:
            raise FieldError(f"lanes[{i}].channel", f"no channel {ln.channel} in channels")
    stock = (
        jf.parse_stock(
            d["stock"],
            "stock",
            {ln.lane for ln in lanes},
            only={ln.lane for ln in lanes if ln.mode == "tracked"},
        )
        if "stock" in d
        else {}
    )
    return CabinetSpec(cabinet, rate, tuple(calibrations), lanes, stock)


class _LineError(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def _body(path: Path, source: str, spec: CabinetSpec, block_s: float) -> Iterator[CabinetInput]:
    n_ch = len(spec.calibrations)
    loads = json.loads
    ts: list[float] = []
    rows: list[list[int | None]] = []
    t_first = 0.0
    last_t = -math.inf  # of any line
    last_sample = -math.inf
    horizon = block_s - 1e-9
    with open(path, encoding="utf-8") as f:
        f.readline()
        for lineno, line in enumerate(f, start=2):
            try:
                try:
                    obj = loads(line)
                except json.JSONDecodeError as e:
                    raise _LineError(f"invalid JSON: {e.msg}") from e
                if type(obj) is not dict:
                    raise _LineError("must be a JSON object")
                if "raw" in obj:
                    t = _check_t(obj, last_t)
                    if len(obj) != 2:
                        raise _LineError(_unknown(obj, ("t", "raw")))
                    if t <= last_sample:
                        raise _LineError(f"t {t} is not after the previous sample ({last_sample})")
                    raw = obj["raw"]
                    if type(raw) is not list or len(raw) != n_ch:
                        raise _LineError(f"raw must be an array of {n_ch} readings")
                    for v in raw:
                        if v is not None and (type(v) is not int or not RAW_MIN <= v <= RAW_MAX):
                            raise _LineError(
                                f"raw readings must be signed 24-bit integers or null, not {v!r}"
                            )
                    if ts and t - t_first >= horizon:
                        yield _block(ts, rows)
                        ts, rows = [], []
                    if not ts:
                        t_first = t
                    ts.append(t)
                    rows.append(raw)
                    last_t = last_sample = t
                else:
                    event = _event(obj, last_t)
                    if ts:
                        yield _block(ts, rows)
                        ts, rows = [], []
                    last_t = event.t
                    yield event
            except _LineError as e:
                raise InputError(f"{source}: line {lineno}: {e.problem}") from None
    if ts:
        yield _block(ts, rows)


def _block(ts: list[float], rows: list[list[int | None]]) -> SampleBlock:
    return SampleBlock(np.array(ts, dtype=np.float64), np.array(rows, dtype=np.float64))


def _check_t(obj: dict[str, object], last_t: float) -> float:
    if "t" not in obj:
        raise _LineError("t: missing")
    t = obj["t"]
    if type(t) is not float and type(t) is not int:
        raise _LineError("t: must be a number")
    tf = float(t)
    if not math.isfinite(tf) or tf < 0:
        raise _LineError("t: must be a finite number >= 0")
    if tf < last_t:
        raise _LineError(f"t {tf} is out of order (after {last_t})")
    return tf


def _unknown(obj: dict[str, object], allowed: tuple[str, ...]) -> str:
    extra = [k for k in obj if k not in allowed]
    return f'unknown key "{extra[0]}"' if extra else "bad line"


def _event(obj: dict[str, object], last_t: float) -> UnlockEvent | DoorEvent:
    if "event" not in obj:
        extra = [k for k in obj if k != "t"]
        raise _LineError(f'unknown key "{extra[0]}"' if extra else 'neither "raw" nor "event"')
    t = _check_t(obj, last_t)
    kind = obj["event"]
    if kind == "unlock":
        who = [k for k in ("resident", "operator") if k in obj]
        if len(who) != 1:
            raise _LineError('an unlock needs exactly one of "resident" or "operator"')
        if len(obj) != 3:
            raise _LineError(_unknown(obj, ("t", "event", who[0])))
        name = obj[who[0]]
        if not isinstance(name, str) or not name:
            raise _LineError(f"{who[0]}: must be a non-empty string")
        return UnlockEvent(t, name, "operator" if who[0] == "operator" else "resident")
    if kind == "door":
        if len(obj) > 3 or (len(obj) == 3 and "state" not in obj):
            raise _LineError(_unknown(obj, ("t", "event", "state")))
        if "state" not in obj:
            raise _LineError("state: missing")
        state = obj["state"]
        if state not in ("open", "closed"):
            raise _LineError('state: must be "open" or "closed"')
        return DoorEvent(t, state == "open")
    raise _LineError('event: must be "unlock" or "door"')
