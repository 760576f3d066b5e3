"""The whole pipeline through the command line, in process: scenarios, recorded traces,
traces recorded on another cabinet, malformed input and the store a run leaves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.model import INVALID_CODES
from edge.store import CabinetStore
from firmware_mock.scenario import load_scenario
from firmware_mock.simulator import SimulatedCabinet
from freshbox_cli import main

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "scenarios").glob("*.json"))
BASIC = Path(__file__).parent / "fixtures" / "scenarios" / "basic-purchase.json"

SESSION_KEYS = {
    "session_id",
    "resident",
    "role",
    "unlocked_at",
    "opened_at",
    "closed_at",
    "billed_at",
    "lines",
    "total_fen",
    "flags",
    "evidence",
}
LINE_KEYS = {"lane", "sku", "qty", "weight_g", "unit_price_fen", "amount_fen"}
EVIDENCE_KEYS = {"lane", "before_g", "after_g", "delta_g"}


# ------------------------------------------------------------------ helpers


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``freshbox ARGS`` in process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = cli(capsys, *args, "--json")
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def truth_of(path: Path) -> list[dict[str, Any]]:
    """What really left the cabinet in each session of a scenario (the simulator's ledger)."""
    truth: list[dict[str, Any]] = SimulatedCabinet(load_scenario(path)).truth_sessions()
    return truth


def summary(session: dict[str, Any]) -> tuple[list[tuple[str, int]], list[str]]:
    return [(ln["sku"], ln["qty"]) for ln in session["lines"]], sorted(session["flags"])


def lanes_of(path: Path) -> dict[int, dict[str, Any]]:
    data = json.loads(path.read_text())
    return {ln["lane"]: ln for ln in data["lanes"]}


def assert_bills_match(result: dict[str, Any], path: Path) -> None:
    """``result`` bills each session as the scenario's ``expect`` says, weighed lines
    within 5 g of the true weight and never above it."""
    expect = load_scenario(path).expect
    assert expect is not None
    wanted = expect["sessions"]
    assert isinstance(wanted, list)
    got = result["sessions"]
    assert len(got) == len(wanted), (path.stem, got)
    truth = truth_of(path)
    lanes = lanes_of(path)
    for i, (g, w, t) in enumerate(zip(got, wanted, truth, strict=True)):
        expected_lines = [(ln["sku"], ln["qty"]) for ln in w["lines"]]
        assert summary(g) == (expected_lines, sorted(w["flags"])), (path.stem, i, g)
        true_weight = {ln["sku"]: ln.get("weight_g") for ln in t["lines"]}
        for line in g["lines"]:
            if lanes[line["lane"]]["mode"] == "weighed":
                truth_g = true_weight[line["sku"]]
                assert truth_g is not None
                assert line["weight_g"] <= truth_g, (path.stem, line, truth_g)
                assert truth_g - line["weight_g"] <= 5.0, (path.stem, line, truth_g)


def assert_bills_md_shape(result: dict[str, Any], path: Path) -> None:
    """Every key of docs/bills.md, totals that add up, and a bill within 2 s of closing."""
    assert set(result) == {"sessions", "events"}
    assert isinstance(result["events"], list)
    lanes = lanes_of(path)
    for s in result["sessions"]:
        assert set(s) == SESSION_KEYS, set(s) ^ SESSION_KEYS
        assert isinstance(s["session_id"], str) and len(s["session_id"]) == 26  # a ULID
        assert s["role"] in ("resident", "operator")
        assert isinstance(s["flags"], list)
        assert all(isinstance(f, str) for f in s["flags"])
        for line in s["lines"]:
            assert set(line) == LINE_KEYS
            lane = lanes[line["lane"]]
            assert line["sku"] == lane["sku"]
            if lane["mode"] == "weighed":
                assert line["qty"] == 1
                assert line["unit_price_fen"] == lane["price_fen_per_kg"]
                decigrams = round(line["weight_g"] * 10)
                assert line["amount_fen"] == line["unit_price_fen"] * decigrams // 10000
            else:
                assert line["unit_price_fen"] == lane["price_fen"]
                assert line["amount_fen"] == line["qty"] * line["unit_price_fen"]
        assert s["total_fen"] == sum(ln["amount_fen"] for ln in s["lines"])
        for ev in s["evidence"]:
            assert set(ev) == EVIDENCE_KEYS
            assert ev["delta_g"] == pytest.approx(ev["after_g"] - ev["before_g"], abs=0.11)
        # every lane that sold has its evidence
        assert {ln["lane"] for ln in s["lines"]} <= {ev["lane"] for ev in s["evidence"]}
        assert isinstance(s["unlocked_at"], float | int)
        assert isinstance(s["billed_at"], float | int)
        if s["closed_at"] is not None:
            assert s["opened_at"] is not None
            assert s["unlocked_at"] <= s["opened_at"] <= s["closed_at"]
            # 80 SPS: billed as soon as the levels are proved, and within 2 s
            assert 0.0 <= s["billed_at"] - s["closed_at"] <= 2.0, s
        else:
            assert "unlock_unused" in s["flags"] and s["lines"] == [] and s["total_fen"] == 0


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each fixture scenario recorded once with ``freshbox sim record``."""
    out = tmp_path_factory.mktemp("traces")
    paths: dict[str, Path] = {}
    for path in FIXTURES:
        trace = out / f"{path.stem}.jsonl"
        assert main(["sim", "record", str(path), "-o", str(trace)]) == 0
        paths[path.stem] = trace
    return paths


@pytest.fixture(scope="module")
def runs(traces: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """``freshbox sim run --json`` of each fixture (stdout captured by hand: module scope)."""
    import contextlib
    import io

    results: dict[str, dict[str, Any]] = {}
    for path in FIXTURES:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["sim", "run", str(path), "--json"]) == 0
        results[path.stem] = json.loads(buf.getvalue())
    return results


# ------------------------------------------------------------------ scenarios


def test_there_are_four_fixture_scenarios() -> None:
    assert [p.stem for p in FIXTURES] == [
        "basic-purchase",
        "misplaced-return",
        "tracked-eggs-and-foreign-object",
        "unused-unlock-then-hard-purchase",
    ]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_sim_run_bills_as_expected(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli_json(capsys, "sim", "run", str(path))
    assert_bills_match(result, path)
    assert_bills_md_shape(result, path)
    assert result["events"] == []


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_sim_run_is_deterministic(
    path: Path, capsys: pytest.CaptureFixture[str], runs: dict[str, dict[str, Any]]
) -> None:
    assert cli_json(capsys, "sim", "run", str(path)) == runs[path.stem]


def test_sim_run_human_output_lists_the_bill(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "sim", "run", str(BASIC))
    assert code == 0 and err == ""
    assert "tomato-500" in out and "bokchoy" in out and "total 10.23 CNY" in out


# ------------------------------------------------------------------ record / replay


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_record_then_replay_bills_as_run(
    path: Path,
    capsys: pytest.CaptureFixture[str],
    traces: dict[str, Path],
    runs: dict[str, dict[str, Any]],
) -> None:
    replayed = cli_json(capsys, "sim", "replay", str(traces[path.stem]))
    ran = runs[path.stem]
    assert len(replayed["sessions"]) == len(ran["sessions"])
    for a, b in zip(replayed["sessions"], ran["sessions"], strict=True):
        assert a["lines"] == b["lines"]
        assert a["flags"] == b["flags"]
        assert a["evidence"] == b["evidence"]
        for key in ("resident", "role", "unlocked_at", "opened_at", "closed_at", "billed_at"):
            assert a[key] == b[key], key
    assert replayed["events"] == ran["events"]
    assert_bills_match(replayed, path)


def _rewrite_as_elsewhere(src: Path, dst: Path) -> None:
    """The same recording as another cabinet would have made it: another calibration of
    every channel, an empty reading that is no longer the header's zero (a constant
    offset) and a zero that creeps during the recording (+40 counts per minute)."""
    lines = src.read_text().splitlines()
    header = json.loads(lines[0])
    old = [dict(ch) for ch in header["channels"]]  # the calibration it was recorded with
    n = len(old)
    new_zero = [-210_000, 55_321, 123_456, -7][:n]
    new_cpg = [151.25, 262.5, 199.0, 230.75][:n]
    offset = [4_000, -6_500, 2_500, 9_000][:n]  # counts: the zero moved since calibration
    drift_per_min = 40.0
    for ch, z, c in zip(header["channels"], new_zero, new_cpg, strict=True):
        ch["zero_counts"] = z
        ch["counts_per_g"] = c
    out = [json.dumps(header)]
    invalid = set(INVALID_CODES)
    for line in lines[1:]:
        obj = json.loads(line)
        if "raw" in obj:
            t = obj["t"]
            raw = []
            for i, v in enumerate(obj["raw"]):
                if v is None or v in invalid:
                    raw.append(v)  # a missing reading or an invalid code stays one
                    continue
                grams = (v - old[i]["zero_counts"]) / old[i]["counts_per_g"]
                counts = new_zero[i] + offset[i] + new_cpg[i] * grams + drift_per_min * t / 60.0
                value = int(np.clip(round(counts), -8388607, 8388606))
                raw.append(value)
            obj["raw"] = raw
        out.append(json.dumps(obj))
    dst.write_text("\n".join(out) + "\n")


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_trace_recorded_elsewhere_bills_the_same(
    path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    traces: dict[str, Path],
    runs: dict[str, dict[str, Any]],
) -> None:
    elsewhere = tmp_path / "elsewhere.jsonl"
    _rewrite_as_elsewhere(traces[path.stem], elsewhere)
    header = json.loads(elsewhere.read_text().split("\n", 1)[0])
    assert header["channels"][0]["zero_counts"] == -210_000  # the rewrite took effect
    replayed = cli_json(capsys, "sim", "replay", str(elsewhere))
    assert_bills_match(replayed, path)
    assert_bills_md_shape(replayed, path)
    ran = runs[path.stem]
    for a, b in zip(replayed["sessions"], ran["sessions"], strict=True):
        assert summary(a) == summary(b)
        assert a["total_fen"] == pytest.approx(b["total_fen"], abs=5)  # weighed: a few fen
        for la, lb in zip(a["lines"], b["lines"], strict=True):
            assert la["weight_g"] == pytest.approx(lb["weight_g"], abs=2.0)
        delta_a = {e["lane"]: e["delta_g"] for e in a["evidence"]}
        delta_b = {e["lane"]: e["delta_g"] for e in b["evidence"]}
        assert delta_a.keys() == delta_b.keys()
        for lane, d in delta_b.items():
            assert delta_a[lane] == pytest.approx(d, abs=2.0)


# ------------------------------------------------------------------ bad input


def _basic() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(BASIC.read_text())
    return data


def _scenario_unknown_field(tmp: Path) -> tuple[Path, str]:
    data = _basic()
    data["timeline"][3]["hand"] = "left"
    path = tmp / "unknown-field.json"
    path.write_text(json.dumps(data, indent=1))
    return path, "timeline[3].hand: unknown field"


def _scenario_unknown_physics(tmp: Path) -> tuple[Path, str]:
    data = _basic()
    data["physics"]["humidity_pct"] = 60
    path = tmp / "unknown-physics.json"
    path.write_text(json.dumps(data, indent=1))
    return path, "physics.humidity_pct: unknown field"


def _scenario_bad_lane(tmp: Path) -> tuple[Path, str]:
    data = _basic()
    data["timeline"][4]["lane"] = 9
    path = tmp / "bad-lane.json"
    path.write_text(json.dumps(data, indent=1))
    return path, "timeline[4].lane: unknown lane 9"


def _scenario_bad_stock_lane(tmp: Path) -> tuple[Path, str]:
    data = _basic()
    data["stock"]["7"] = [100.0]
    path = tmp / "bad-stock-lane.json"
    path.write_text(json.dumps(data, indent=1))
    return path, "stock.7"


def _scenario_invalid_json(tmp: Path) -> tuple[Path, str]:
    text = json.dumps(_basic(), indent=1).splitlines()
    # drop the comma at the end of line 4 ("seed": 1,): JSON breaks on line 5
    assert text[3] == ' "seed": 1,'
    text[3] = text[3][:-1]
    path = tmp / "invalid.json"
    path.write_text("\n".join(text) + "\n")
    return path, "line 5: invalid JSON"


def _trace_lines(traces: dict[str, Path]) -> list[str]:
    return traces["basic-purchase"].read_text().splitlines()


def _trace_out_of_order(tmp: Path, traces: dict[str, Path]) -> tuple[Path, str]:
    lines = _trace_lines(traces)
    # well after the session was billed (t ~ 14 s): a run must still leave no store
    n = 1200  # 1-based line number
    assert '"raw"' in lines[n - 2] and '"raw"' in lines[n - 1]
    lines[n - 2], lines[n - 1] = lines[n - 1], lines[n - 2]
    path = tmp / "out-of-order.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, f"line {n}: t "


def _trace_event_out_of_order(tmp: Path, traces: dict[str, Path]) -> tuple[Path, str]:
    lines = _trace_lines(traces)
    i = next(k for k, x in enumerate(lines) if '"door"' in x and '"closed"' in x)
    obj = json.loads(lines[i])
    obj["t"] = 2.0  # a door event dated before the samples already read
    lines[i] = json.dumps(obj)
    path = tmp / "event-out-of-order.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, f"line {i + 1}: t 2.0 is out of order"


def _trace_wrong_raw_length(tmp: Path, traces: dict[str, Path]) -> tuple[Path, str]:
    lines = _trace_lines(traces)
    n = 700
    obj = json.loads(lines[n - 1])
    assert "raw" in obj
    obj["raw"] = obj["raw"][:3]
    lines[n - 1] = json.dumps(obj)
    path = tmp / "short-raw.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, f"line {n}: raw must be an array of 4 readings"


def _trace_bad_header(tmp: Path, traces: dict[str, Path]) -> tuple[Path, str]:
    lines = _trace_lines(traces)
    header = json.loads(lines[0])
    header["channels"][2]["counts_per_g"] = -3.5
    lines[0] = json.dumps(header)
    path = tmp / "bad-header.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, "line 1: channels[2].counts_per_g"


def _trace_header_unknown_field(tmp: Path, traces: dict[str, Path]) -> tuple[Path, str]:
    lines = _trace_lines(traces)
    header = json.loads(lines[0])
    header["temperature_c"] = 21
    lines[0] = json.dumps(header)
    path = tmp / "header-unknown.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, "line 1: temperature_c: unknown field"


SCENARIO_ERRORS = [
    _scenario_unknown_field,
    _scenario_unknown_physics,
    _scenario_bad_lane,
    _scenario_bad_stock_lane,
    _scenario_invalid_json,
]
TRACE_ERRORS = [
    _trace_out_of_order,
    _trace_event_out_of_order,
    _trace_wrong_raw_length,
    _trace_bad_header,
    _trace_header_unknown_field,
]


def _assert_rejected(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str, db_dir: Path
) -> None:
    db = db_dir / "cabinet.db"
    code, out, err = cli(capsys, *args, "--json", "--db", str(db))
    assert code == 2, (code, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert message in lines[0], lines[0]
    assert lines[0].startswith("freshbox: ")
    assert not db.exists()
    assert sorted(p.name for p in db_dir.iterdir()) == []  # no -wal, -shm, .part either


@pytest.mark.parametrize("make", SCENARIO_ERRORS, ids=lambda f: f.__name__[len("_scenario_") :])
def test_bad_scenario_exits_2_with_one_line_and_no_store(
    make: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, message = make(tmp_path)
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    _assert_rejected(capsys, ["sim", "run", str(path)], message, db_dir)
    # the same file, recorded: an error too, and no trace is left behind
    out = tmp_path / "rec" / "t.jsonl"
    out.parent.mkdir()
    code, _, err = cli(capsys, "sim", "record", str(path), "-o", str(out))
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("make", TRACE_ERRORS, ids=lambda f: f.__name__[len("_trace_") :])
def test_bad_trace_exits_2_with_one_line_and_no_store(
    make: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], traces: dict[str, Path]
) -> None:
    path, message = make(tmp_path, traces)
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    _assert_rejected(capsys, ["sim", "replay", str(path)], message, db_dir)


def test_missing_input_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for sub in ("run", "replay"):
        db_dir = tmp_path / sub
        db_dir.mkdir()
        _assert_rejected(capsys, ["sim", sub, str(tmp_path / "nope.json")], "nope.json", db_dir)


# ------------------------------------------------------------------ the store


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_db_keeps_a_consistent_store_with_one_outbox_sale_per_session(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sub" / "cabinet.db"
    result = cli_json(capsys, "sim", "run", str(path), "--db", str(db))
    assert db.exists()
    with CabinetStore(db, cabinet_id="sim") as store:
        assert store.check_consistency() == []
        assert store.open_sessions() == []
        pending = store.outbox_pending(limit=1000)
        sales = [r for r in pending if r.kind == "sale"]
        assert [r.ref for r in sales] == [s["session_id"] for s in result["sessions"]]
        assert len({r.ref for r in sales}) == len(sales)
        events = [r for r in pending if r.kind == "event"]
        assert len(events) == len(result["events"])
        for s in result["sessions"]:
            row = store.session(s["session_id"])
            assert row is not None
            assert row.total_fen == s["total_fen"]
            assert row.state == ("expired" if "unlock_unused" in s["flags"] else "billed")
            assert sorted(row.flags) == sorted(s["flags"])
            lines = store.sale_lines(s["session_id"])
            assert [(ln.lane, ln.sku, ln.qty, ln.amount_fen) for ln in lines] == [
                (ln["lane"], ln["sku"], ln["qty"], ln["amount_fen"]) for ln in s["lines"]
            ]
            payload = next(r.payload for r in sales if r.ref == s["session_id"])
            assert payload == s


def test_replay_db_is_consistent_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], traces: dict[str, Path]
) -> None:
    db = tmp_path / "replay.db"
    result = cli_json(capsys, "sim", "replay", str(traces["basic-purchase"]), "--db", str(db))
    with CabinetStore(db, cabinet_id="sim") as store:
        assert store.check_consistency() == []
        sales = [r for r in store.outbox_pending(limit=1000) if r.kind == "sale"]
        assert [r.ref for r in sales] == [s["session_id"] for s in result["sessions"]]
