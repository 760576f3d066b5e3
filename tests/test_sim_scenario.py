"""Scenario files (``freshbox-scenario/1``): parsing, strict validation, the ledger's
rules and the scenario corpus."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from edge.errors import InputError
from edge.model import Lane
from firmware_mock.corpus import TIER_PHYSICS, TRACKED_APART_G, generate_scenario
from firmware_mock.ledger import ActionError, Ledger
from firmware_mock.scenario import (
    Action,
    Physics,
    Scenario,
    load_scenario,
    parse_scenario,
    save_scenario,
    scenario_to_dict,
)
from firmware_mock.simulator import SimulatedCabinet

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "scenarios").glob("*.json"))
BASIC = Path(__file__).parent / "fixtures" / "scenarios" / "basic-purchase.json"


def basic() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(BASIC.read_text())
    return data


def test_there_are_four_fixtures() -> None:
    assert len(FIXTURES) == 4


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixtures_parse_and_round_trip(path: Path, tmp_path: Path) -> None:
    s = load_scenario(path)
    assert s.lanes and s.timeline and s.expect is not None
    assert [ln.channel for ln in s.lanes] == [ln.lane - 1 for ln in s.lanes]
    assert parse_scenario(scenario_to_dict(s), "again") == s
    out = tmp_path / "copy.json"
    save_scenario(out, s)
    assert load_scenario(out) == s


def test_basic_fixture_fields() -> None:
    s = load_scenario(BASIC)
    assert s.seed == 1
    assert s.physics == Physics()  # the fixture uses the example physics
    lane1 = s.lanes[0]
    assert lane1 == Lane(1, "tomato-500", "unit", 0, "Tomatoes 500 g", 690, None, 500.0, 6.0)
    assert s.lanes[1].price_fen_per_kg == 800 and s.lanes[1].price_fen is None
    assert s.stock[2] == [350.2, 420.0, 388.5]
    assert s.timeline[3] == Action(t=7.0, do="take", lane=1, item=0)
    assert s.end_time() == 16.0


def _mutate(path: list[Any], value: Any) -> dict[str, Any]:
    data = basic()
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()

MALFORMED: list[tuple[list[Any], Any, str]] = [
    (["format"], "freshbox-scenario/2", 'format: expected "freshbox-scenario/1"'),
    (["colour"], "red", "colour: unknown field"),
    (["lanes"], _DELETE, "lanes: missing"),
    (["seed"], -1, "seed: must be an integer >= 0"),
    (["seed"], 1.5, "seed: must be an integer >= 0"),
    (["physics", "noise_g"], -1, "physics.noise_g: must be a number >= 0"),
    (["physics", "noise_g"], True, "physics.noise_g: must be a number >= 0"),
    (["physics", "noise_g"], "1.5", "physics.noise_g: must be a number >= 0"),
    (["physics", "invalid_rate"], 1.0, "physics.invalid_rate: must be a number in [0, 1)"),
    (["physics", "sample_rate_hz"], 0, "physics.sample_rate_hz: must be a number > 0"),
    (["physics", "settle_s"], 0, "physics.settle_s: must be a number > 0"),
    (["physics", "gain"], 2, "physics.gain: unknown field"),
    (["physics"], [], "physics: must be an object"),
    (["lanes"], [], "lanes: must list at least one lane"),
    (["lanes", 0, "price_fen"], 6.9, "lanes[0].price_fen: must be an integer >= 0 (fen)"),
    (["lanes", 0, "unit_weight_sd_g"], _DELETE, "lanes[0].unit_weight_sd_g: missing"),
    (["lanes", 0, "unit_weight_g"], 0, "lanes[0].unit_weight_g: must be a number > 0"),
    (["lanes", 1, "price_fen"], 100, "lanes[1].price_fen: not allowed for a weighed lane"),
    (["lanes", 1, "price_fen_per_kg"], _DELETE, "lanes[1].price_fen_per_kg: missing"),
    (["lanes", 2, "price_fen"], _DELETE, "lanes[2].price_fen: missing"),
    (["lanes", 2, "mode"], "bulk", 'lanes[2].mode: must be "unit", "tracked" or "weighed"'),
    (["lanes", 2, "shelf"], 1, "lanes[2].shelf: unknown field"),
    (["lanes", 3, "lane"], 1, "lanes[3].lane: duplicate lane 1"),
    (["lanes", 3, "channel"], 0, "lanes[3].channel: channel 0 is already used by lane 1"),
    (["lanes", 3, "sku"], "", "lanes[3].sku: must be a non-empty string"),
    (["stock", "9"], [100.0], "stock.9: unknown lane 9"),
    (["stock", "x"], [100.0], "stock.x: stock keys must be lane numbers"),
    (["stock", "1", 2], -5, "stock.1[2]: must be a number > 0"),
    (["timeline", 3, "t"], 8.0, "timeline[4].t: out of order: 7.9 s after 8 s"),
    (["timeline", 3, "lane"], 9, "timeline[3].lane: unknown lane 9"),
    (["timeline", 3, "item"], 4, "timeline[3].item: lane 1 has 4 item(s) now, there is no item 4"),
    (["timeline", 4, "item"], 3, "timeline[4].item: lane 1 has 3 item(s) now, there is no item 3"),
    (["timeline", 3, "weight_g"], 5, "timeline[3].weight_g: not allowed for take"),
    (["timeline", 3, "hand"], "left", "timeline[3].hand: unknown field"),
    (["timeline", 3, "item"], _DELETE, "timeline[3].item: a take needs item or count"),
    (["timeline", 3, "count"], 0, "timeline[3].count: must be an integer >= 1"),
    (["timeline", 0, "do"], "dance", "timeline[0].do: must be one of unlock, open"),
    (["timeline", 1, "resident"], _DELETE, "timeline[1].resident: missing"),
    (["timeline", 1, "role"], "admin", 'timeline[1].role: must be "resident" or "operator"'),
    (
        ["timeline", 6, "item"],
        3,
        "timeline[6].item: item 3 was not taken: this session has taken 3",
    ),
    (["timeline", 2, "do"], "close", "timeline[2]: close while the door is already closed"),
    (["timeline", 7, "do"], "open", "timeline[7]: open while the door is already open"),
    (["timeline", 2, "do"], "wait", "timeline[3]: take while the door is closed"),
    (["timeline", 0], {"t": -1, "do": "wait"}, "timeline[0].t: must be a number >= 0"),
    (
        ["timeline", 0],
        {"t": 0, "do": "press", "lane": 1, "weight_g": 5},
        "timeline[0].duration_s: missing",
    ),
    (["expect", "sessions", 0, "flags"], ["lost"], "expect.sessions[0].flags[0]: must be one of"),
    (
        ["expect", "sessions", 0, "lines", 0, "price"],
        1,
        "expect.sessions[0].lines[0].price: unknown field",
    ),
    (
        ["expect", "sessions", 0, "lines", 0, "qty"],
        0,
        "expect.sessions[0].lines[0].qty: must be an integer >= 1",
    ),
    (["expect", "total"], 3, "expect.total: unknown field"),
]


@pytest.mark.parametrize(("path", "value", "message"), MALFORMED, ids=lambda x: str(x)[:40])
def test_malformed_scenarios_name_the_field(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_scenario(_mutate(path, value), "scenario.json")
    assert str(info.value).startswith(f"scenario.json: {message}"), str(info.value)


def test_returning_an_item_twice_is_rejected() -> None:
    data = basic()
    data["timeline"].insert(7, {"t": 9.5, "do": "return", "lane": 1, "item": 0})
    with pytest.raises(InputError, match=r"timeline\[7\]\.item: taken item 0 was already returned"):
        parse_scenario(data, "s.json")


def test_take_count_beyond_the_lane_is_rejected() -> None:
    data = basic()
    data["timeline"][3] = {"t": 7.0, "do": "take", "lane": 2, "count": 4}
    with pytest.raises(InputError, match=r"timeline\[3\]\.count: lane 2 has 3 item\(s\) now"):
        parse_scenario(data, "s.json")


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.json"
    f.write_text('{\n "format": "freshbox-scenario/1",\n "name": oops\n}\n')
    with pytest.raises(InputError, match=r"bad\.json: line 3: invalid JSON"):
        load_scenario(f)


def test_duplicate_keys_and_nan_are_rejected(tmp_path: Path) -> None:
    f = tmp_path / "dup.json"
    f.write_text('{"format": "freshbox-scenario/1", "format": "x"}')
    with pytest.raises(InputError, match=r'dup\.json: duplicate key "format"'):
        load_scenario(f)
    f.write_text('{"format": "freshbox-scenario/1", "seed": NaN}')
    with pytest.raises(InputError, match="NaN is not a JSON number"):
        load_scenario(f)


def test_not_an_object_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"s\.json: must be an object"):
        parse_scenario([1, 2], "s.json")
    with pytest.raises(InputError, match="cannot read"):
        load_scenario(tmp_path / "nope.json")


def test_minimal_scenario_defaults() -> None:
    s = parse_scenario(
        {
            "format": "freshbox-scenario/1",
            "lanes": [{"lane": 3, "sku": "x", "mode": "weighed", "price_fen_per_kg": 1}],
        },
        "m.json",
    )
    assert s.name == "" and s.seed == 0 and s.physics == Physics()
    assert s.lanes[0].channel == 2 and s.stock == {} and s.timeline == () and s.expect is None
    assert s.end_time() == 5.0


# ------------------------------------------------------------------ ledger rules


def _lanes() -> list[Lane]:
    return [
        Lane(1, "tomato", "unit", 0, unit_weight_g=500, unit_weight_sd_g=6, price_fen=690),
        Lane(2, "bokchoy", "weighed", 1, price_fen_per_kg=800),
    ]


def test_take_indexes_the_current_stock_list() -> None:
    ledger = Ledger(_lanes(), {1: [503.1, 497.4, 510.2, 492.0], 2: [350.2]})
    ledger.unlock(0, "r")
    ledger.open(1)
    assert [tk.weight_g for tk in ledger.take(2, 1, 0)] == [503.1]
    assert [tk.weight_g for tk in ledger.take(3, 1, 1)] == [510.2]  # second of what is left
    ledger.return_item(4, 1, 0)
    assert [it.weight0_g for it in ledger.shelves[1]] == [497.4, 492.0, 503.1]
    with pytest.raises(ActionError) as info:
        ledger.take(5, 1, 0, 4)
    assert info.value.field == "count"


def test_unlock_is_unused_unless_the_door_opens_within_15_s() -> None:
    ledger = Ledger(_lanes(), {1: [500.0, 500.0]})
    ledger.unlock(0, "late")
    ledger.open(15.5)  # too late: a visit of nobody
    ledger.take(16, 1, 0)
    ledger.close(17)
    ledger.unlock(20, "ok")
    ledger.open(35.0)  # exactly 15 s: used
    ledger.take(36, 1, 0)
    ledger.close(37)
    assert ledger.truth() == [
        {"lines": [], "flags": ["unlock_unused"]},
        {"lines": [{"sku": "tomato", "qty": 1}], "flags": []},
    ]


def test_operator_restock_adds_stock_and_bills_nothing() -> None:
    ledger = Ledger(_lanes(), {1: [500.0]}, loss_per_s=1e-6)
    ledger.unlock(0, "op-1", "operator")
    ledger.open(1)
    ledger.place(2, 2, 300.0)
    ledger.take(3, 1, 0)
    ledger.close(4)
    ledger.unlock(10, "r")
    ledger.open(11)
    taken = ledger.take(12, 2, 0)
    ledger.close(13)
    assert taken[0].item.decays and abs(taken[0].weight_g - 300.0 * (1 - 10e-6)) < 1e-6
    assert ledger.truth() == [
        {"lines": [], "flags": [], "role": "operator"},
        {"lines": [{"sku": "bokchoy", "qty": 1, "weight_g": 300.0}], "flags": []},
    ]


def test_misplaced_and_foreign_flags() -> None:
    ledger = Ledger(_lanes(), {1: [500.0, 501.0], 2: [350.0, 420.0]})
    ledger.unlock(0, "r")
    ledger.open(1)
    ledger.take(2, 1, 0)
    ledger.take(3, 2, 1, 1)
    ledger.take(4, 1, 0)
    ledger.return_item(5, 2, 0)  # tomato onto the bok choy lane: not sold
    ledger.place(6, 1, 120.0)
    ledger.close(7)
    assert ledger.truth() == [
        {
            "lines": [
                {"sku": "tomato", "qty": 1},
                {"sku": "bokchoy", "qty": 1, "weight_g": 420.0},
            ],
            "flags": ["foreign_object", "misplaced_return"],
        }
    ]
    assert ledger.foreign_g[1] == 120.0 and len(ledger.shelves[2]) == 2


# ------------------------------------------------------------------ corpus


@pytest.mark.parametrize("tier", ["standard", "hard", "slow"])
def test_corpus_scenarios_are_valid_and_sensible(tier: str) -> None:
    for seed in range(40):
        s = generate_scenario(seed, tier)  # type: ignore[arg-type]
        assert s.physics == TIER_PHYSICS[tier]
        assert parse_scenario(scenario_to_dict(s), "corpus") == s
        assert s.expect == {"sessions": SimulatedCabinet(s).truth_sessions()}
        assert 2 <= len(s.lanes) <= 16
        for ln in s.lanes:
            items = s.stock[ln.lane]
            assert 2 <= len(items) <= 8
            if ln.mode == "unit":
                assert ln.unit_weight_g is not None and ln.unit_weight_sd_g is not None
                assert 100 <= ln.unit_weight_g <= 1000
                assert 0.01 <= ln.unit_weight_sd_g / ln.unit_weight_g <= 0.021
                assert all(abs(w - ln.unit_weight_g) <= 2.6 * ln.unit_weight_sd_g for w in items)
            elif ln.mode == "tracked":
                assert all(300 <= w <= 1500 for w in items)
                gaps = [abs(a - b) for i, a in enumerate(items) for b in items[i + 1 :]]
                assert all(g >= TRACKED_APART_G for g in gaps)
            else:
                assert all(150 <= w <= 800 for w in items)
        _check_gestures(s, hard=tier == "hard")


def _check_gestures(s: Scenario, *, hard: bool) -> None:
    physical = ("take", "return", "place")
    last_on_lane: dict[int, float] = {}
    takes = 0
    for i, a in enumerate(s.timeline):
        if a.do in physical:
            assert a.lane is not None
            assert a.t - last_on_lane.get(a.lane, -10.0) >= 0.8
            last_on_lane[a.lane] = a.t
        takes += a.do == "take"
        if a.do == "close" and hard and s.timeline[i - 1].do == "take":
            assert a.t - s.timeline[i - 1].t <= 0.3 + 1e-9
    assert takes >= 1
    assert s.timeline[-1].do == "wait"


def test_corpus_is_deterministic_and_varied() -> None:
    assert generate_scenario(5, "standard") == generate_scenario(5, "standard")
    assert generate_scenario(5, "standard") != generate_scenario(6, "standard")
    flags: set[str] = set()
    counts = False
    for seed in range(60):
        s = generate_scenario(seed, "standard")
        assert s.expect is not None
        for sess in copy.deepcopy(s.expect["sessions"]):  # type: ignore[attr-defined]
            flags.update(sess["flags"])
        counts = counts or any((a.count or 1) > 1 for a in s.timeline)
    assert {"misplaced_return", "foreign_object", "unlock_unused"} <= flags
    assert counts


def test_hard_tier_closes_right_after_the_last_take() -> None:
    quick = 0
    for seed in range(20):
        s = generate_scenario(seed, "hard")
        closes = [i for i, a in enumerate(s.timeline) if a.do == "close"]
        quick += sum(
            s.timeline[i - 1].do == "take" and s.timeline[i].t - s.timeline[i - 1].t <= 0.3
            for i in closes
        )
    assert quick >= 20


def test_unknown_tier() -> None:
    with pytest.raises(ValueError, match="unknown tier"):
        generate_scenario(1, "easy")  # type: ignore[arg-type]
