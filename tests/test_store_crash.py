"""The crash test: SIGKILL a process that bills sessions flat out, again and again.

``tests/crash_writer.py`` opens a CabinetStore and bills sessions as fast as it
can. Each round starts it, kills it with SIGKILL at a random instant (a seeded
generator picks the delays; some kills land while it is still starting up,
applying migrations or recovering its predecessor's open sessions), reopens the
store and checks that it is consistent: every billed session has its outbox
record, every outbox 'sale' record has its billed (or expired) session, the
outbox has no seq gaps, and every sale the writer saw committed is there.
A last round runs the writer to completion to show the store still works.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.store import CabinetStore

HERE = Path(__file__).resolve().parent
WRITER = HERE / "crash_writer.py"
ROOT = HERE.parent
CABINET_ID = "cab-crash"  # as in crash_writer.py
SEED = 20261128
KILLS = 36
#: every this-many rounds the kill ignores "ready" and may land during start-up
BLIND_EVERY = 4


def _spawn(db: Path, journal: Path, seed: int, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(db), str(journal), "--seed", str(seed), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def _wait_ready(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if readable else b""
    if line.strip() != b"ready":
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"writer did not get ready: {line!r}\n{err.decode(errors='replace')}")


def _verify(db: Path, journal: Path) -> dict[str, int]:
    """Reopen the store after a kill and check everything; returns a few counts."""
    with CabinetStore(db, cabinet_id=CABINET_ID) as store:
        assert store.check_consistency() == []
        state = store.outbox_state()
        pending = store.outbox_pending(limit=1_000_000)
        assert [o.seq for o in pending] == list(range(state.acked_upto + 1, state.last_seq + 1))
        sessions = {s.session_id: s for s in store.sessions()}

        billed = [s for s in sessions.values() if s.state == "billed"]
        by_seq = {o.seq: o for o in pending}
        for s in billed:  # every billed session has its outbox row (or it was acked)
            assert s.outbox_seq is not None
            if s.outbox_seq > state.acked_upto:
                row = by_seq[s.outbox_seq]
                assert (row.kind, row.ref) == ("sale", s.session_id)
                assert row.payload["total_fen"] == s.total_fen
            else:
                assert s.outbox_seq not in by_seq
        for row in pending:  # every outbox 'sale' row has its billed (or expired) session
            if row.kind == "sale":
                s = sessions[row.ref]
                assert s.outbox_seq == row.seq
                assert s.state == "billed" or (
                    s.state == "expired" and "unlock_unused" in s.flags and s.total_fen == 0
                )
        for line in journal.read_text().splitlines():  # committed sales are durable
            session_id, seq = line.split()
            s = sessions[session_id]
            assert (s.state, s.outbox_seq) == ("billed", int(seq))
        open_now = store.open_sessions()
        for s in open_now:
            assert s.state != "unlocked" or s.opened_at is None
            assert s.state == "unlocked" or s.baseline  # recoverable: the baseline is saved
        return {
            "billed": len(billed),
            "open": len(open_now),
            "pending": len(pending),
            "last_seq": state.last_seq,
        }


@pytest.mark.slow
def test_sigkill_at_random_instants_never_breaks_the_store(tmp_path: Path) -> None:
    db = tmp_path / "cabinet.db"
    journal = tmp_path / "committed.txt"
    journal.touch()
    rng = random.Random(SEED)
    started = time.monotonic()
    kills_with_open_sessions = 0
    billed_before = 0
    for round_no in range(KILLS):
        proc = _spawn(db, journal, SEED + round_no)
        try:
            if round_no % BLIND_EVERY == 0:
                time.sleep(rng.uniform(0.0, 0.45))  # maybe during imports, migrations, recovery
            else:
                _wait_ready(proc)
                time.sleep(rng.uniform(0.0, 0.1))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        assert proc.returncode == -signal.SIGKILL, "the writer stopped before it was killed"
        counts = _verify(db, journal)
        assert counts["billed"] >= billed_before  # nothing committed is ever lost
        billed_before = counts["billed"]
        kills_with_open_sessions += counts["open"] > 0

    committed = journal.read_text().splitlines()
    assert len(committed) > KILLS  # the writer made real progress between kills
    assert kills_with_open_sessions >= 3  # kills did land in the middle of sessions

    # After all the kills the store still works: a final run bills 50 sessions and exits.
    before = _verify(db, journal)
    proc = _spawn(db, journal, SEED + KILLS, "--count", "50")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert out.decode().split() == ["ready", "done", "50"]
    after = _verify(db, journal)
    assert after["open"] == 0  # it recovered everything its predecessors left open
    assert after["billed"] >= before["billed"] + 50
    assert after["last_seq"] > before["last_seq"]
    assert time.monotonic() - started < 60
