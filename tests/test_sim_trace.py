"""Traces (``freshbox-trace/1``): writing, reading, strict validation, speed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.errors import InputError
from edge.model import CabinetInput, CabinetSpec, DoorEvent, SampleBlock, UnlockEvent
from firmware_mock.scenario import load_scenario, parse_scenario
from firmware_mock.simulator import SimulatedCabinet
from firmware_mock.trace import read_trace, write_trace

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "scenarios").glob("*.json"))
FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def flatten(items: Iterable[CabinetInput]) -> tuple[FloatArray, FloatArray, list[Any]]:
    """All samples, and each event with the number of samples before it."""
    ts: list[FloatArray] = []
    raws: list[FloatArray] = []
    events: list[Any] = []
    n = 0
    for it in items:
        if isinstance(it, SampleBlock):
            ts.append(it.t)
            raws.append(it.raw)
            n += it.t.shape[0]
        else:
            events.append((n, it))
    return np.concatenate(ts), np.concatenate(raws), events


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_round_trip_is_bit_identical(path: Path, tmp_path: Path) -> None:
    s = load_scenario(path)
    sim = SimulatedCabinet(s)
    items = list(sim.stream())
    out = tmp_path / "trace.jsonl"
    rows = write_trace(out, sim.spec, items)
    spec, back = read_trace(out)
    assert spec == sim.spec
    t1, raw1, ev1 = flatten(items)
    t2, raw2, ev2 = flatten(back)
    assert rows == t1.shape[0]
    assert np.array_equal(t1, t2)
    assert np.array_equal(raw1, raw2, equal_nan=True)
    assert np.isnan(raw1).any()  # missing readings survived as null
    assert ev1 == ev2


def test_header_and_lines_follow_the_doc(tmp_path: Path) -> None:
    s = load_scenario(FIXTURES[0])
    sim = SimulatedCabinet(s, cabinet_id="tr-test-01")
    out = tmp_path / "t.jsonl"
    write_trace(out, sim.spec, sim.stream())
    lines = out.read_text().splitlines()
    header = json.loads(lines[0])
    assert list(header) == ["format", "cabinet", "sample_rate_hz", "channels", "lanes", "stock"]
    assert header["format"] == "freshbox-trace/1" and header["cabinet"] == "tr-test-01"
    assert header["sample_rate_hz"] == 80
    assert [c["channel"] for c in header["channels"]] == [0, 1, 2, 3]
    assert all(isinstance(c["zero_counts"], int) for c in header["channels"])
    assert header["lanes"][1] == {
        "lane": 2,
        "channel": 1,
        "sku": "bokchoy",
        "name": "Bok choy",
        "mode": "weighed",
        "price_fen_per_kg": 800,
    }
    assert header["stock"] == {"3": [612.4, 598.0, 640.9]}  # tracked lanes only
    assert json.loads(lines[1]).keys() == {"t", "raw"}
    assert lines[1].startswith('{"t": 0.0, "raw": [')
    events = [json.loads(x) for x in lines if '"event"' in x]
    assert events == [
        {"t": 5.0, "event": "unlock", "resident": "r-17"},
        {"t": 5.8, "event": "door", "state": "open"},
        {"t": 11.0, "event": "door", "state": "closed"},
    ]
    assert all(len(json.loads(x)["raw"]) == 4 for x in lines[1:] if '"raw"' in x)
    assert any("null" in x for x in lines[1:])


def test_operator_unlock_round_trips(tmp_path: Path) -> None:
    s = load_scenario(FIXTURES[0])
    sim = SimulatedCabinet(s)
    items: list[CabinetInput] = [
        UnlockEvent(0.5, "op-7", "operator"),
        DoorEvent(0.6, True),
        SampleBlock(np.array([0.6125]), np.array([[1.0, 8388607.0, -8388608.0, np.nan]])),
    ]
    out = tmp_path / "op.jsonl"
    write_trace(out, sim.spec, items)
    assert '"operator": "op-7"' in out.read_text()
    _, back = read_trace(out)
    got = list(back)
    assert got[:2] == items[:2]
    block = got[2]
    assert isinstance(block, SampleBlock)
    assert np.array_equal(block.raw, items[2].raw, equal_nan=True)  # type: ignore[union-attr]


def test_blocks_are_at_most_block_s_and_split_at_events(tmp_path: Path) -> None:
    s = load_scenario(FIXTURES[0])
    sim = SimulatedCabinet(s)
    out = tmp_path / "t.jsonl"
    write_trace(out, sim.spec, sim.stream())
    _, items = read_trace(out, block_s=0.25)
    for it in items:
        if isinstance(it, SampleBlock):
            assert it.t.shape[0] <= 20 and it.t[-1] - it.t[0] < 0.25
            assert it.raw.shape == (it.t.shape[0], 4) and it.raw.dtype == np.float64


# ------------------------------------------------------------------ errors


def _spec() -> CabinetSpec:
    return SimulatedCabinet(load_scenario(FIXTURES[0])).spec


def _write(tmp_path: Path, header: dict[str, Any] | None, body: list[str]) -> Path:
    path = tmp_path / "trace.jsonl"
    if header is None:
        write_trace(path, _spec(), [])
        head = path.read_text()
    else:
        head = json.dumps(header) + "\n"
    path.write_text(head + "".join(line + "\n" for line in body))
    return path


def _header() -> dict[str, Any]:
    path_json: dict[str, Any] = json.loads(
        json.dumps(
            {
                "format": "freshbox-trace/1",
                "cabinet": "c",
                "sample_rate_hz": 80,
                "channels": [
                    {"channel": 0, "zero_counts": 100, "counts_per_g": 200.0},
                    {"channel": 1, "zero_counts": -50, "counts_per_g": 210.0},
                ],
                "lanes": [
                    {"lane": 1, "channel": 0, "sku": "a", "mode": "tracked", "price_fen": 100},
                    {
                        "lane": 2,
                        "channel": 1,
                        "sku": "b",
                        "mode": "weighed",
                        "price_fen_per_kg": 900,
                    },
                ],
                "stock": {"1": [612.4, 598.0]},
            }
        )
    )
    return path_json


GOOD = '{"t": 0.0, "raw": [1, 2]}'

BODY_ERRORS: list[tuple[list[str], str]] = [
    ([GOOD, '{"t": 0.0125, "raw": [1, 2], "gain": 3}'], 'line 3: unknown key "gain"'),
    ([GOOD, '{"t": 0.0125, "raw": [1, 2, 3]}'], "line 3: raw must be an array of 2 readings"),
    ([GOOD, '{"t": 0.0125, "raw": [1.5, 2]}'], "line 3: raw readings must be signed 24-bit"),
    ([GOOD, '{"t": 0.0125, "raw": [8388608, 2]}'], "line 3: raw readings must be signed 24-bit"),
    ([GOOD, '{"t": 0.0125, "raw": [true, 2]}'], "line 3: raw readings must be signed 24-bit"),
    (['{"t": 1.0, "raw": [1, 2]}', GOOD], "line 3: t 0.0 is out of order"),
    ([GOOD, GOOD], "line 3: t 0.0 is not after the previous sample"),
    ([GOOD, '{"t": 0.0125, "raw": [1, 2]'], "line 3: invalid JSON"),
    ([GOOD, "[1, 2]"], "line 3: must be a JSON object"),
    ([GOOD, ""], "line 3: invalid JSON"),
    (['{"raw": [1, 2]}'], "line 2: t: missing"),
    (['{"t": "0", "raw": [1, 2]}'], "line 2: t: must be a number"),
    (['{"t": -1, "raw": [1, 2]}'], "line 2: t: must be a finite number >= 0"),
    (['{"t": NaN, "raw": [1, 2]}'], "line 2: t: must be a finite number >= 0"),
    (['{"t": 0.5, "event": "lock"}'], 'line 2: event: must be "unlock" or "door"'),
    (['{"t": 0.5, "event": "door", "state": "ajar"}'], 'line 2: state: must be "open" or "closed"'),
    (['{"t": 0.5, "event": "door"}'], "line 2: state: missing"),
    (['{"t": 0.5, "event": "door", "state": "open", "x": 1}'], 'line 2: unknown key "x"'),
    (['{"t": 0.5, "event": "unlock"}'], 'line 2: an unlock needs exactly one of "resident"'),
    (['{"t": 0.5, "event": "unlock", "resident": "a", "operator": "b"}'], "exactly one of"),
    (['{"t": 0.5, "event": "unlock", "resident": ""}'], "line 2: resident: must be a non-empty"),
    (['{"t": 0.5, "event": "unlock", "resident": "a", "id": 1}'], 'line 2: unknown key "id"'),
    (['{"t": 0.5, "door": "open"}'], 'line 2: unknown key "door"'),
    (
        [GOOD, '{"t": 0.05, "raw": [1, 2]}', '{"t": 0.01, "event": "door", "state": "open"}'],
        "line 4: t 0.01 is out of order",
    ),
]


@pytest.mark.parametrize(("body", "message"), BODY_ERRORS, ids=lambda x: str(x)[:40])
def test_body_errors_name_the_line(tmp_path: Path, body: list[str], message: str) -> None:
    path = _write(tmp_path, _header(), body)
    spec, items = read_trace(path)
    assert spec.cabinet_id == "c"
    with pytest.raises(InputError) as info:
        list(items)
    assert str(info.value).startswith(f"{path}: "), str(info.value)
    assert message in str(info.value), str(info.value)


def _without(key: str) -> dict[str, Any]:
    h = _header()
    del h[key]
    return h


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    h = _header()
    node: Any = h
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return h


HEADER_ERRORS: list[tuple[dict[str, Any], str]] = [
    (_without("cabinet"), "line 1: cabinet: missing"),
    (_without("channels"), "line 1: channels: missing"),
    (_with(["format"], "freshbox-trace/2"), 'line 1: format: expected "freshbox-trace/1"'),
    (_with(["extra"], 1), "line 1: extra: unknown field"),
    (_with(["sample_rate_hz"], 0), "line 1: sample_rate_hz: must be a number > 0"),
    (_with(["channels"], []), "line 1: channels: must list at least one channel"),
    (_with(["channels", 1, "channel"], 0), "line 1: channels[1].channel: duplicate channel 0"),
    (_with(["channels", 0, "counts_per_g"], 0), "line 1: channels[0].counts_per_g: must be"),
    (_with(["channels", 0, "offset"], 0), "line 1: channels[0].offset: unknown field"),
    (_with(["lanes", 0, "channel"], 7), "line 1: lanes[0].channel: no channel 7 in channels"),
    (_with(["lanes", 1, "price_fen"], 7), "lanes[1].price_fen: not allowed for a weighed lane"),
    (_with(["stock", "2"], [100.0]), "line 1: stock.2: lane 2 is not a tracked lane"),
    (_with(["stock", "5"], [100.0]), "line 1: stock.5: unknown lane 5"),
]


@pytest.mark.parametrize(("header", "message"), HEADER_ERRORS, ids=lambda x: str(x)[:40])
def test_header_errors_name_the_field(tmp_path: Path, header: dict[str, Any], message: str) -> None:
    path = _write(tmp_path, header, [GOOD])
    with pytest.raises(InputError) as info:
        read_trace(path)
    assert message in str(info.value), str(info.value)


def test_lane_without_channel_in_a_trace(tmp_path: Path) -> None:
    h = _header()
    del h["lanes"][0]["channel"]
    with pytest.raises(InputError, match=r"line 1: lanes\[0\]\.channel: missing"):
        read_trace(_write(tmp_path, h, []))


def test_empty_and_garbled_headers(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text("")
    with pytest.raises(InputError, match=r"e\.jsonl: line 1: missing header"):
        read_trace(path)
    path.write_text("{nope\n")
    with pytest.raises(InputError, match=r"e\.jsonl: line 1: invalid JSON"):
        read_trace(path)
    with pytest.raises(InputError, match="cannot read"):
        read_trace(tmp_path / "missing.jsonl")


def test_trace_made_by_hand_reads(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _header(),
        [
            '{"t": 12.3375, "raw": [1152310, 84190]}',
            '{"t": 12.35, "event": "unlock", "resident": "r-17"}',
            '{"t": 12.35, "raw": [1152311, null]}',
            '{"t": 13.1, "event": "door", "state": "open"}',
            '{"t": 19.6, "event": "door", "state": "closed"}',
        ],
    )
    spec, items = read_trace(path)
    assert spec.stock == {1: [612.4, 598.0]} and spec.calibrations[1].zero_counts == -50.0
    got = list(items)
    assert got[1:2] == [UnlockEvent(12.35, "r-17")] and got[3:] == [
        DoorEvent(13.1, True),
        DoorEvent(19.6, False),
    ]
    block = got[2]
    assert isinstance(block, SampleBlock) and np.isnan(block.raw[0, 1])


def test_reading_is_fast(tmp_path: Path) -> None:
    s = parse_scenario(
        {
            "format": "freshbox-scenario/1",
            "lanes": [
                {"lane": n, "sku": f"s{n}", "mode": "tracked", "price_fen": 1} for n in range(1, 5)
            ],
            "timeline": [{"t": 400.0, "do": "wait"}],
        },
        "speed",
    )
    sim = SimulatedCabinet(s)
    path = tmp_path / "big.jsonl"
    rows = write_trace(path, sim.spec, sim.stream())
    assert rows == 32000
    start = time.perf_counter()
    _, items = read_trace(path)
    n = sum(it.t.shape[0] for it in items if isinstance(it, SampleBlock))
    elapsed = time.perf_counter() - start
    assert n == rows
    assert n / elapsed > 40000  # ~200k lines/s on an idle machine; lenient under load
