"""Scenario files, ``freshbox-scenario/1`` (``docs/scenario.md``): parse, validate, write.

Validation is strict: an unknown field anywhere, a value of the wrong type or out
of range, a lane without the fields its mode needs, an unordered timeline, or an
action that cannot happen when the timeline is played (taking an item that is not
on the lane at that moment, returning one that was not taken) raises
``InputError("<source>: <field path>: <problem>")``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, cast

from edge.errors import InputError
from edge.model import Lane, Role
from firmware_mock import jsonfields as jf
from firmware_mock.jsonfields import FieldError
from firmware_mock.ledger import ActionError, Ledger

FORMAT = "freshbox-scenario/1"

ActionKind = Literal["unlock", "open", "close", "take", "return", "place", "press", "wait"]

#: For each action, the fields it requires and the optional ones it allows (besides t, do).
ACTION_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "unlock": (("resident",), ("role",)),
    "open": ((), ()),
    "close": ((), ()),
    "wait": ((), ()),
    "take": (("lane",), ("item", "count")),
    "return": (("lane", "item"), ()),
    "place": (("lane", "weight_g"), ()),
    "press": (("lane", "weight_g", "duration_s"), ()),
}

#: Flags a session of ``expect`` may list (``docs/bills.md``).
FLAGS = ("misplaced_return", "foreign_object", "needs_review", "sensor_fault", "unlock_unused")


@dataclass(frozen=True, slots=True)
class Physics:
    """The sensors and the mechanics of a cabinet; defaults are ``docs/scenario.md``'s example."""

    sample_rate_hz: float = 80.0  # samples per second per channel
    noise_g: float = 1.5  # white noise per sample, standard deviation (g)
    invalid_rate: float = 0.01  # share of samples that are invalid codes or missing
    drift_g_per_min: float = 0.5  # zero random walk: its std after one minute (g)
    moisture_loss_pct_per_day: float = 2.0  # produce on weighed lanes dries (% per day)
    settle_s: float = 0.4  # time constant of the damped oscillation after a load change (s)
    oscillation_g_per_kg: float = 60.0  # its starting amplitude per kg of load change (g/kg)
    hand_press_g: float = 0.0  # a hand resting on the lane during a take or return (g)
    door_slam_g: float = 25.0  # starting amplitude of the shock on every lane at close (g)


#: (keyword arguments of ``number``) for each physics field.
_PHYSICS_BOUNDS: dict[str, dict[str, float]] = {
    "sample_rate_hz": {"gt": 0.0},
    "noise_g": {"ge": 0.0},
    "invalid_rate": {"ge": 0.0, "lt": 1.0},
    "drift_g_per_min": {"ge": 0.0},
    "moisture_loss_pct_per_day": {"ge": 0.0, "lt": 100.0},
    "settle_s": {"gt": 0.0},
    "oscillation_g_per_kg": {"ge": 0.0},
    "hand_press_g": {"ge": 0.0},
    "door_slam_g": {"ge": 0.0},
}


@dataclass(frozen=True, slots=True)
class Action:
    """One step of the timeline at ``t`` seconds; fields not used by ``do`` are None.

    ``take``: ``item`` (default 0) is an index into the lane's current stock list,
    ``count`` (default 1) items from there are taken at once. ``return``: ``item``
    indexes the items this session has taken, in order of taking.
    """

    t: float
    do: ActionKind
    resident: str | None = None
    role: Role | None = None
    lane: int | None = None
    item: int | None = None
    count: int | None = None
    weight_g: float | None = None  # place, press (g)
    duration_s: float | None = None  # press (s)


@dataclass(frozen=True, slots=True)
class Scenario:
    """A cabinet, its true stock, its physics, what people do and what should be billed."""

    name: str
    seed: int
    physics: Physics
    lanes: tuple[Lane, ...]
    stock: dict[int, list[float]] = field(default_factory=dict)  # true weights (g) by lane
    timeline: tuple[Action, ...] = ()
    expect: dict[str, object] | None = None

    def end_time(self) -> float:
        """When simulation stops (s): at a final ``wait``, else 5 s after the last action."""
        if not self.timeline:
            return 5.0
        last = self.timeline[-1]
        return last.t if last.do == "wait" else last.t + 5.0


# ------------------------------------------------------------------ reading


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; errors name the file as given."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{source}: cannot read: {e}") from e
    try:
        obj = jf.decode(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{source}: line {e.lineno}: invalid JSON: {e.msg}") from e
    except FieldError as e:
        raise InputError(f"{source}: {e.problem}") from e
    return parse_scenario(obj, source)


def parse_scenario(obj: object, source: str) -> Scenario:
    """Validate a decoded scenario (``docs/scenario.md``) and play its timeline through
    a ledger to check every item index. Raises ``InputError`` naming the field."""
    try:
        scenario = _parse(obj)
    except FieldError as e:
        raise InputError(f"{source}: {e}") from e
    _check_playable(scenario, source)
    return scenario


def _parse(obj: object) -> Scenario:
    d = jf.obj(obj, "")
    jf.keys(
        d,
        "",
        ("format", "name", "seed", "physics", "lanes", "stock", "timeline", "expect"),
        ("format", "lanes"),
    )
    if d["format"] != FORMAT:
        raise FieldError("format", f'expected "{FORMAT}"')
    name = jf.string(d["name"], "name", empty=True) if "name" in d else ""
    seed = jf.integer(d["seed"], "seed", ge=0) if "seed" in d else 0
    physics = _parse_physics(d["physics"]) if "physics" in d else Physics()
    lanes = jf.parse_lanes(d["lanes"], "lanes", channel_required=False)
    lane_nos = {ln.lane for ln in lanes}
    stock = jf.parse_stock(d["stock"], "stock", lane_nos) if "stock" in d else {}
    timeline = _parse_timeline(d["timeline"], lane_nos) if "timeline" in d else ()
    expect = _parse_expect(d["expect"]) if "expect" in d and d["expect"] is not None else None
    return Scenario(name, seed, physics, lanes, stock, timeline, expect)


def _parse_physics(value: object) -> Physics:
    d = jf.obj(value, "physics")
    jf.keys(d, "physics", _PHYSICS_BOUNDS)
    kwargs = {k: jf.number(v, jf.join("physics", k), **_PHYSICS_BOUNDS[k]) for k, v in d.items()}
    return Physics(**kwargs)


def _parse_timeline(value: object, lanes: set[int]) -> tuple[Action, ...]:
    out: list[Action] = []
    for i, item in enumerate(jf.array(value, "timeline")):
        action = _parse_action(item, f"timeline[{i}]", lanes)
        if out and action.t < out[-1].t:
            raise FieldError(
                f"timeline[{i}].t", f"out of order: {action.t:g} s after {out[-1].t:g} s"
            )
        out.append(action)
    return tuple(out)


def _parse_action(value: object, path: str, lanes: set[int]) -> Action:
    d = jf.obj(value, path)
    if "do" not in d:
        raise FieldError(jf.join(path, "do"), "missing")
    do = d["do"]
    if not isinstance(do, str) or do not in ACTION_FIELDS:
        raise FieldError(jf.join(path, "do"), f"must be one of {', '.join(ACTION_FIELDS)}")
    required, optional = ACTION_FIELDS[do]
    allowed = ("t", "do", *required, *optional)
    for k in d:
        if k not in allowed:
            known = k in Action.__dataclass_fields__
            raise FieldError(
                jf.join(path, k), f"not allowed for {do}" if known else "unknown field"
            )
    jf.keys(d, path, allowed, ("t", *required))
    t = jf.number(d["t"], jf.join(path, "t"), ge=0)
    kw: dict[str, object] = {}
    for k, v in d.items():
        p = jf.join(path, k)
        if k == "resident":
            kw[k] = jf.string(v, p)
        elif k == "role":
            if v not in ("resident", "operator"):
                raise FieldError(p, 'must be "resident" or "operator"')
            kw[k] = v
        elif k == "lane":
            lane = jf.integer(v, p, ge=1)
            if lane not in lanes:
                raise FieldError(p, f"unknown lane {lane}")
            kw[k] = lane
        elif k == "item":
            kw[k] = jf.integer(v, p, ge=0)
        elif k == "count":
            kw[k] = jf.integer(v, p, ge=1)
        elif k in ("weight_g", "duration_s"):
            kw[k] = jf.number(v, p, gt=0)
    if do == "take" and "item" not in d and "count" not in d:
        raise FieldError(jf.join(path, "item"), "a take needs item or count")
    return Action(t=t, do=cast(ActionKind, do), **kw)  # type: ignore[arg-type]


def _parse_expect(value: object) -> dict[str, object]:
    d = jf.obj(value, "expect")
    jf.keys(d, "expect", ("sessions",), ("sessions",))
    sessions: list[object] = []
    for i, s in enumerate(jf.array(d["sessions"], "expect.sessions")):
        path = f"expect.sessions[{i}]"
        sd = jf.obj(s, path)
        jf.keys(sd, path, ("lines", "flags", "role"), ("lines",))
        lines: list[object] = []
        for j, ln in enumerate(jf.array(sd["lines"], jf.join(path, "lines"))):
            lp = f"{path}.lines[{j}]"
            ld = jf.obj(ln, lp)
            jf.keys(ld, lp, ("sku", "qty", "weight_g"), ("sku", "qty"))
            line: dict[str, object] = {
                "sku": jf.string(ld["sku"], jf.join(lp, "sku")),
                "qty": jf.integer(ld["qty"], jf.join(lp, "qty"), ge=1),
            }
            if "weight_g" in ld:
                line["weight_g"] = jf.number(ld["weight_g"], jf.join(lp, "weight_g"), gt=0)
            lines.append(line)
        flags: list[object] = []
        for j, f in enumerate(jf.array(sd.get("flags", []), jf.join(path, "flags"))):
            if f not in FLAGS:
                raise FieldError(f"{path}.flags[{j}]", f"must be one of {', '.join(FLAGS)}")
            flags.append(f)
        session: dict[str, object] = {"lines": lines, "flags": flags}
        if "role" in sd:
            if sd["role"] not in ("resident", "operator"):
                raise FieldError(jf.join(path, "role"), 'must be "resident" or "operator"')
            session["role"] = sd["role"]
        sessions.append(session)
    return {"sessions": sessions}


def _check_playable(s: Scenario, source: str) -> None:
    """Play the timeline through a ledger: every action must be possible when it happens."""
    ledger = Ledger(s.lanes, s.stock)
    for i, a in enumerate(s.timeline):
        try:
            apply_action(ledger, a)
        except ActionError as e:
            path = f"timeline[{i}]" + (f".{e.field}" if e.field else "")
            raise InputError(f"{source}: {path}: {e.problem}") from e


def apply_action(ledger: Ledger, a: Action) -> None:
    """Apply one action to a ledger (``ActionError`` if it cannot happen)."""
    lane = a.lane if a.lane is not None else 0
    if a.do == "unlock":
        ledger.unlock(a.t, a.resident or "", a.role or "resident")
    elif a.do == "open":
        ledger.open(a.t)
    elif a.do == "close":
        ledger.close(a.t)
    elif a.do == "take":
        ledger.take(a.t, lane, a.item or 0, a.count or 1)
    elif a.do == "return":
        ledger.return_item(a.t, lane, a.item or 0)
    elif a.do == "place":
        ledger.place(a.t, lane, a.weight_g or 0.0)
    elif a.do == "press":
        ledger.check_lane(lane)


# ------------------------------------------------------------------ writing


def scenario_to_dict(s: Scenario) -> dict[str, object]:
    """The JSON object of a scenario; ``parse_scenario`` of it gives ``s`` back."""
    d: dict[str, object] = {
        "format": FORMAT,
        "name": s.name,
        "seed": s.seed,
        "physics": {f.name: getattr(s.physics, f.name) for f in fields(Physics)},
        "lanes": [jf.lane_to_dict(ln, with_channel=False) for ln in s.lanes],
        "stock": {str(k): list(v) for k, v in s.stock.items()},
        "timeline": [_action_to_dict(a) for a in s.timeline],
    }
    if s.expect is not None:
        d["expect"] = json.loads(json.dumps(s.expect))
    return d


def _action_to_dict(a: Action) -> dict[str, object]:
    d: dict[str, object] = {"t": a.t, "do": a.do}
    for f in fields(Action)[2:]:
        v = getattr(a, f.name)
        if v is not None:
            d[f.name] = v
    return d


def save_scenario(path: str | Path, s: Scenario) -> None:
    """Write a scenario file (indented JSON, UTF-8)."""
    text = json.dumps(scenario_to_dict(s), indent=1, ensure_ascii=False)
    Path(path).write_text(text + "\n", encoding="utf-8")
