"""The crash test of the real billing process: SIGKILL it at random instants, again and again.

``tests/crash_billing.py`` runs the cabinet controller (filter, level tracker,
session state machine, billing, store) on a persistent store, fed flat out by a
simulated cabinet in virtual time; on every start it calls ``recover()`` first.
Each round starts it on the same database, kills it with SIGKILL after a delay
drawn from a seeded generator (some rounds do not wait for ``ready``, so the kill
may land during imports, while the store opens or while the controller is built;
some kill just after ``ready``, while the predecessor's session is being
recovered; the rest in the middle of shopping sessions), then reopens the store
and checks it:

* ``check_consistency()`` finds nothing;
* every billed session has its outbox 'sale' row (with its total) and sale lines
  summing to its total, with evidence for every lane that sold; every expired one
  is a zero ``unlock_unused`` record with its outbox row;
* every outbox 'sale' row has its billed or expired session;
* at most one session is open, and only the newest one (the one in progress);
  an open session whose door opened has its baseline saved;
* sessions began in time order (virtual time stays monotonic across restarts);
* nothing finished before is changed or lost, and every session the process
  printed as finished is in the store exactly as printed;
* a session left open by a kill is, once a later run gets to it, billed with the
  flag ``recovered`` (its door had opened) or expired as ``unlock_unused``.

A last run goes to completion: it recovers, bills new sessions and exits 0,
leaving a consistent store with no open session.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from crash_billing import BillingRun

from edge.store import CabinetStore, SessionRow

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "crash_billing.py"
ROOT = HERE.parent
CABINET_ID = "cab-crash-billing"  # as in crash_billing.py
#: the cabinet layout of generate_scenario(SEED, "standard"): 9 lanes, every lane mode
SEED = 20261137
KILLS = 28
FINAL_SESSIONS = 12


@dataclass
class _Tally:
    """Where the kills landed."""

    startup: int = 0  # before "ready": imports, opening the store, building the cabinet
    recovering: int = 0  # after "ready", before any new session began
    in_recovery: int = 0  # ... of which before the predecessor's open session was finished
    sessions: int = 0  # while new sessions ran
    interrupted: int = 0  # kills that left a session open
    recovered: int = 0  # ... that a later run billed (flag recovered)
    expired: int = 0  # ... that a later run expired (unlock_unused)
    left: dict[str, int] = field(default_factory=dict)  # state of the sessions left open
    # session id -> state it was left in by a kill, until a later run finishes it
    waiting: dict[str, str] = field(default_factory=dict)


def _spawn(db: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(db), str(SEED), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> bytes:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    # byte by byte, unbuffered: what follows the line stays in the pipe for communicate()
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        byte = os.read(fd, 1) if readable else b""
        if not byte:
            break
        line += byte
    if not line.startswith(b"ready "):
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"billing process did not get ready: {line!r}\n{err.decode(errors='replace')}")
    return line


def _printed(out: bytes) -> tuple[int | None, list[list[str]]]:
    """The count of sessions stored at start (None if it never got ready) and the
    complete session lines the process printed."""
    text = out.decode()
    lines = text.split("\n")[:-1]  # a line cut by the kill has no newline: ignore it
    stored = None
    finished: list[list[str]] = []
    for line in lines:
        word = line.split()
        if word[0] == "ready":
            stored = int(word[1])
        elif word[0] in ("billed", "expired"):
            assert len(word) == 5, line
            finished.append(word)
        else:
            assert word[0] == "done", line
    return stored, finished


def _verify(db: Path) -> list[SessionRow]:
    """Reopen the store and check everything; returns its sessions in order."""
    with CabinetStore(db, cabinet_id=CABINET_ID) as store:
        assert store.check_consistency() == []
        state = store.outbox_state()
        pending = store.outbox_pending(limit=1_000_000)
        assert state.acked_upto == 0  # nothing acks in this test: every row is still there
        assert [o.seq for o in pending] == list(range(1, state.last_seq + 1))
        by_seq = {o.seq: o for o in pending}
        sessions = store.sessions()
        by_id = {s.session_id: s for s in sessions}

        for s in sessions:
            lines = store.sale_lines(s.session_id)
            if s.state in ("billed", "expired"):
                assert s.outbox_seq is not None
                row = by_seq[s.outbox_seq]
                assert (row.kind, row.ref) == ("sale", s.session_id)
                assert row.payload["session_id"] == s.session_id
                assert row.payload["total_fen"] == s.total_fen
            else:
                assert s.outbox_seq is None
            if s.state == "billed":
                assert s.billed_at is not None and s.total_fen is not None
                assert sum(ln.amount_fen for ln in lines) == s.total_fen
                assert {ln.lane for ln in lines} <= {e.lane for e in store.evidence(s.session_id)}
                assert s.role == "resident" or s.total_fen == 0  # only residents pay
                assert s.recovered == ("recovered" in s.flags)
            elif s.state == "expired":
                assert s.total_fen == 0 and "unlock_unused" in s.flags and not lines
                assert s.opened_at is None
            else:
                assert not lines
        for row in pending:
            if row.kind == "sale":
                s = by_id[row.ref]
                assert s.state in ("billed", "expired")
                assert s.outbox_seq == row.seq

        open_now = store.open_sessions()
        assert len(open_now) <= 1, [s.session_id for s in open_now]
        if open_now:
            assert open_now[0].session_id == sessions[-1].session_id  # the one in progress
            s = open_now[0]
            assert (s.state == "unlocked") == (s.opened_at is None)
            assert s.state == "unlocked" or s.baseline  # recoverable: the baseline is saved
        starts = [s.unlocked_at for s in sessions]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        return sessions


def _check_round(
    before: list[SessionRow], after: list[SessionRow], finished: list[list[str]], tally: _Tally
) -> None:
    """What one run changed: nothing finished was lost or altered, what it printed is
    stored, and the sessions left open by earlier kills were recovered properly."""
    by_id = {s.session_id: s for s in after}
    assert [s.session_id for s in after[: len(before)]] == [s.session_id for s in before]
    for old in before:
        if old.state in ("billed", "expired"):
            new = by_id[old.session_id]
            assert (new.state, new.total_fen, new.outbox_seq, new.flags) == (
                old.state,
                old.total_fen,
                old.outbox_seq,
                old.flags,
            )
    for status, sid, role, total, flags in finished:
        s = by_id[sid]
        assert (s.state, s.role, s.total_fen) == (status, role, int(total))
        assert sorted(s.flags) == sorted([] if flags == "-" else flags.split(","))
    for sid, left_as in list(tally.waiting.items()):
        s = by_id[sid]
        if s.state in ("unlocked", "open", "closed"):
            continue  # killed again before the recovery was done: still to come
        if left_as == "unlocked":
            assert s.state == "expired" and "unlock_unused" in s.flags, s
            tally.expired += 1
        else:
            assert s.state == "billed" and "recovered" in s.flags and s.recovered, s
            assert s.closed_at is not None and s.billed_at is not None
            assert s.billed_at >= s.closed_at
            tally.recovered += 1
        del tally.waiting[sid]
    assert len(tally.waiting) <= 1


@pytest.mark.slow
def test_sigkill_the_billing_process_at_random_instants(tmp_path: Path) -> None:
    db = tmp_path / "cabinet.db"
    rng = random.Random(SEED)
    started = time.monotonic()
    tally = _Tally()
    before: list[SessionRow] = []
    for round_no in range(KILLS):
        proc = _spawn(db)
        head = b""
        try:
            kind = round_no % 4
            if kind == 0:  # blind: during imports, opening the store, building, or later
                time.sleep(rng.uniform(0.0, 0.15) if round_no % 8 == 0 else rng.uniform(0.1, 0.5))
            else:
                head = _wait_ready(proc)
                # just after ready (recovering the predecessor's session), or later
                time.sleep(rng.uniform(0.0, 0.02) if kind == 1 else rng.uniform(0.0, 0.35))
        finally:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")
        stored, finished = _printed(head + out)
        after = _verify(db)
        _check_round(before, after, finished, tally)
        open_now = [s for s in after if s.state in ("unlocked", "open", "closed")]
        if stored is None:
            tally.startup += 1
            assert len(after) == len(before)  # it never got to a session
        elif len(after) == stored:
            tally.recovering += 1
            tally.in_recovery += any(s.session_id in tally.waiting for s in open_now)
        else:
            tally.sessions += 1
        if open_now:
            if open_now[0].session_id not in tally.waiting:
                tally.interrupted += 1
                tally.left[open_now[0].state] = tally.left.get(open_now[0].state, 0) + 1
            tally.waiting.setdefault(open_now[0].session_id, open_now[0].state)
        before = after

    print(f"\nafter {KILLS} kills: {tally}, {len(before)} sessions")
    # the kills landed everywhere, and the process made real progress between them
    assert tally.startup >= 3 and tally.recovering >= 2 and tally.sessions >= 10, tally
    assert len(before) >= KILLS
    assert tally.interrupted >= 5, tally

    # a last run goes to completion: recovers, bills new sessions, exits cleanly
    proc = _spawn(db, "--sessions", str(FINAL_SESSIONS))
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")
    stored, finished = _printed(out)
    assert stored == len(before)
    assert out.decode().splitlines()[-1] == f"done {FINAL_SESSIONS}"
    after = _verify(db)
    _check_round(before, after, finished, tally)
    assert len(after) == len(before) + FINAL_SESSIONS
    assert not [s for s in after if s.state in ("unlocked", "open", "closed")]
    assert not tally.waiting  # every session a kill left open was recovered
    assert tally.recovered + tally.expired == tally.interrupted
    # which phase a kill lands in depends on the machine's timing: the unlocked phase is
    # short, so a run may interrupt no unlock before its door opened; that recovery is
    # pinned down deterministically by test_sessions'
    # test_power_cut_before_the_door_opened_expires_the_unlock
    assert tally.recovered + tally.expired >= 2, tally
    assert any(s.state == "billed" and s.total_fen for s in after)  # residents did pay
    elapsed = time.monotonic() - started
    print(f"\n{tally}, {len(after)} sessions, {elapsed:.1f} s")
    assert elapsed < 40


def test_an_unlock_just_after_a_restart_is_not_orphaned_by_the_recovery(tmp_path: Path) -> None:
    """Found while writing the crash test (crash_billing.py waits for the recovery to
    avoid it): after a restart with a session to recover, a verified unlock that arrives
    before the controller's first full statistics window (0.4 s at 80 SPS, 2.5 s at
    10 SPS) must be refused as busy or kept; it must not be left open forever."""
    db = tmp_path / "cabinet.db"
    first = BillingRun(db, SEED)
    first.recover()
    first.idle(3.0)
    old = first.unlock("r-1")
    first.idle(1.0)
    first.feed(first.sim.open_door())
    first.idle(1.0)
    first.store.close()  # the process dies with the door open

    second = BillingRun(db, SEED)
    try:
        assert second.recovered == 1
        new = second.cabinet.unlock(second.offset, "r-2")  # before the first sample
        second.idle(20.0)  # r-2 never opens the door: the unlock must expire
        recovered = second.store.session(old)
        assert recovered is not None and recovered.state == "billed"
        assert "recovered" in recovered.flags
        assert second.cabinet.lock.locked
        assert second.store.open_sessions() == []
        if new is not None:
            row = second.store.session(new)
            assert row is not None and row.state == "expired"
    finally:
        second.store.close()
