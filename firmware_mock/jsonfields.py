"""Strict reading of decoded JSON values, with errors that name the field.

Every checker takes the value and its JSON path (``timeline[3].lane``) and raises
``FieldError(path, problem)``; the file readers turn that into an ``InputError``
``"<source>: <path>: <problem>"``. Booleans are never numbers, numbers are finite.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any, cast

from edge.model import LANE_MODES, Lane, LaneMode


class FieldError(Exception):
    """A bad value at a JSON path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def join(path: str, key: str | int) -> str:
    """The path of a member (``physics.noise_g``) or an element (``lanes[2]``)."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def decode(text: str) -> object:
    """Decode JSON text; rejects duplicate keys and NaN/Infinity.

    Raises ``json.JSONDecodeError`` for syntax errors (it carries ``lineno``) and
    ``FieldError`` with an empty path for duplicate keys.
    """
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise FieldError("", f'duplicate key "{k}"')
        out[k] = v
    return out


def _no_constant(name: str) -> object:
    raise FieldError("", f"{name} is not a JSON number")


def obj(value: object, path: str) -> dict[str, object]:
    """A JSON object."""
    if not isinstance(value, dict):
        raise FieldError(path, "must be an object")
    return cast(dict[str, object], value)


def array(value: object, path: str) -> list[object]:
    """A JSON array."""
    if not isinstance(value, list):
        raise FieldError(path, "must be an array")
    return cast(list[object], value)


def keys(
    d: Mapping[str, object],
    path: str,
    allowed: Collection[str],
    required: Collection[str] = (),
    *,
    context: str = "",
) -> None:
    """Reject unknown members and report the first missing required one."""
    for k in d:
        if k not in allowed:
            raise FieldError(join(path, k), f"unknown field{context}")
    for k in required:
        if k not in d:
            raise FieldError(join(path, k), "missing")


def number(
    value: object,
    path: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
) -> float:
    """A finite JSON number within the given bounds."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    x = float(cast(float, value)) if ok else math.nan
    if (
        not ok
        or not math.isfinite(x)
        or (gt is not None and not x > gt)
        or (ge is not None and not x >= ge)
        or (lt is not None and not x < lt)
    ):
        raise FieldError(path, "must be a number" + _bounds(gt, ge, lt))
    return x


def integer(value: object, path: str, *, ge: int | None = None, what: str = "") -> int:
    """A JSON integer (not a float, not a boolean), at least ``ge``."""
    if not isinstance(value, int) or isinstance(value, bool) or (ge is not None and value < ge):
        bound = f" >= {ge}" if ge is not None else ""
        raise FieldError(path, f"must be an integer{bound}{what}")
    return value


def string(value: object, path: str, *, empty: bool = False) -> str:
    """A JSON string; non-empty unless ``empty``."""
    if not isinstance(value, str) or (not empty and not value):
        raise FieldError(path, "must be a string" if empty else "must be a non-empty string")
    return value


def _bounds(gt: float | None, ge: float | None, lt: float | None) -> str:
    lo = f"{_fmt(ge)}" if ge is not None else (f"{_fmt(gt)}" if gt is not None else None)
    if lo is not None and lt is not None:
        return f" in {'[' if ge is not None else '('}{lo}, {_fmt(lt)})"
    if ge is not None:
        return f" >= {_fmt(ge)}"
    if gt is not None:
        return f" > {_fmt(gt)}"
    if lt is not None:
        return f" < {_fmt(lt)}"
    return ""


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# ---------------------------------------------------------------- lanes

#: Fields each lane mode requires (and the only mode-specific ones it allows).
MODE_FIELDS: dict[str, tuple[str, ...]] = {
    "unit": ("unit_weight_g", "unit_weight_sd_g", "price_fen"),
    "tracked": ("price_fen",),
    "weighed": ("price_fen_per_kg",),
}
_COMMON_LANE_FIELDS = ("lane", "sku", "name", "mode", "channel")
_ALL_MODE_FIELDS = {f for fs in MODE_FIELDS.values() for f in fs}


def parse_lane(value: object, path: str, *, channel_required: bool) -> Lane:
    """One lane object of a scenario or a trace header (``docs/scenario.md``)."""
    d = obj(value, path)
    if "mode" not in d:
        raise FieldError(join(path, "mode"), "missing")
    mode = d["mode"]
    if mode not in LANE_MODES:
        raise FieldError(join(path, "mode"), 'must be "unit", "tracked" or "weighed"')
    mode_s: LaneMode = mode
    allowed = _COMMON_LANE_FIELDS + MODE_FIELDS[mode_s]
    for k in d:
        if k not in allowed:
            if k in _ALL_MODE_FIELDS:
                raise FieldError(join(path, k), f"not allowed for a {mode_s} lane")
            raise FieldError(join(path, k), "unknown field")
    required = ["lane", "sku", *MODE_FIELDS[mode_s]]
    if channel_required:
        required.append("channel")
    keys(d, path, allowed, required)
    lane_no = integer(d["lane"], join(path, "lane"), ge=1)
    channel = integer(d["channel"], join(path, "channel"), ge=0) if "channel" in d else lane_no - 1

    def opt_num(key: str, *, gt: float | None = None, ge: float | None = None) -> float | None:
        return number(d[key], join(path, key), gt=gt, ge=ge) if key in d else None

    def opt_int(key: str) -> int | None:
        return integer(d[key], join(path, key), ge=0, what=" (fen)") if key in d else None

    return Lane(
        lane=lane_no,
        sku=string(d["sku"], join(path, "sku")),
        mode=mode_s,
        channel=channel,
        name=string(d["name"], join(path, "name"), empty=True) if "name" in d else "",
        price_fen=opt_int("price_fen"),
        price_fen_per_kg=opt_int("price_fen_per_kg"),
        unit_weight_g=opt_num("unit_weight_g", gt=0),
        unit_weight_sd_g=opt_num("unit_weight_sd_g", ge=0),
    )


def parse_lanes(value: object, path: str, *, channel_required: bool) -> tuple[Lane, ...]:
    """A non-empty array of lanes with distinct lane numbers and channels."""
    items = array(value, path)
    if not items:
        raise FieldError(path, "must list at least one lane")
    lanes: list[Lane] = []
    by_lane: dict[int, int] = {}
    by_channel: dict[int, int] = {}
    for i, item in enumerate(items):
        lane = parse_lane(item, join(path, i), channel_required=channel_required)
        if lane.lane in by_lane:
            raise FieldError(join(join(path, i), "lane"), f"duplicate lane {lane.lane}")
        if lane.channel in by_channel:
            raise FieldError(
                join(join(path, i), "channel"),
                f"channel {lane.channel} is already used by lane {by_channel[lane.channel]}",
            )
        by_lane[lane.lane] = i
        by_channel[lane.channel] = lane.lane
        lanes.append(lane)
    return tuple(lanes)


def lane_to_dict(lane: Lane, *, with_channel: bool) -> dict[str, object]:
    """The JSON form of a lane; ``channel`` only when asked or not the default."""
    d: dict[str, object] = {"lane": lane.lane}
    if with_channel or lane.channel != lane.lane - 1:
        d["channel"] = lane.channel
    d["sku"] = lane.sku
    if lane.name:
        d["name"] = lane.name
    d["mode"] = lane.mode
    for key in MODE_FIELDS[lane.mode]:
        d[key] = getattr(lane, key)
    return d


def parse_stock(
    value: object, path: str, lanes: Collection[int], *, only: Collection[int] | None = None
) -> dict[int, list[float]]:
    """``{"<lane>": [grams, ...]}``: item weights by lane number; each weight > 0.

    ``only``: the lanes allowed to have stock (trace headers: tracked lanes).
    """
    d = obj(value, path)
    out: dict[int, list[float]] = {}
    for key, weights in d.items():
        kpath = join(path, key)
        if not key.isdigit() or str(int(key)) != key:
            raise FieldError(kpath, "stock keys must be lane numbers")
        lane_no = int(key)
        if lane_no not in lanes:
            raise FieldError(kpath, f"unknown lane {lane_no}")
        if only is not None and lane_no not in only:
            raise FieldError(kpath, f"lane {lane_no} is not a tracked lane")
        out[lane_no] = [
            number(w, join(kpath, i), gt=0) for i, w in enumerate(array(weights, kpath))
        ]
    return out
