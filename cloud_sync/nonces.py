"""Accepted command nonces, kept on disk until their commands expire.

The cabinet refuses a command whose nonce it accepted before (``replayed``,
docs/protocol.md section 4). That must survive a restart: a command redelivered
after a crash, or replayed by someone who recorded it, must not unlock the door
twice. A nonce is written (``synchronous=FULL``) **before** its command is
executed, and forgotten once its command has expired (then the expiry check
refuses the command anyway).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, MutableSet
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cloud_sync.records import format_at

__all__ = ["NonceStore"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class NonceStore(MutableSet[str]):
    """A persistent set of nonces with expiry times (thread-safe).

    ``nonce in store`` asks whether it was accepted and has not been purged;
    :meth:`remember` stores one with its command's ``expires``; :meth:`purge`
    forgets the expired ones. ``add`` (the :class:`MutableSet` method) remembers a
    nonce for ``default_ttl``.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        now: Callable[[], datetime] | None = None,
        default_ttl: timedelta = timedelta(hours=24),
    ) -> None:
        self.path = Path(path)
        self._now = now or _utcnow
        self._ttl = default_ttl
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS nonces ("
            " nonce TEXT PRIMARY KEY, expires TEXT NOT NULL, name TEXT, accepted_at TEXT)"
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __contains__(self, nonce: object) -> bool:
        if not isinstance(nonce, str):
            return False
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM nonces WHERE nonce = ?", [nonce]).fetchone()
        return row is not None

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            rows = self._conn.execute("SELECT nonce FROM nonces ORDER BY rowid").fetchall()
        return iter([r[0] for r in rows])

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM nonces").fetchone()[0])

    def remember(self, nonce: str, expires: str, name: str | None = None) -> bool:
        """Store ``nonce`` until ``expires`` (protocol time); False if it was already there."""
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO nonces (nonce, expires, name, accepted_at)"
                " VALUES (?, ?, ?, ?)",
                [nonce, expires, name, format_at(self._now())],
            )
            return cur.rowcount == 1

    def add(self, value: str) -> None:
        self.remember(value, format_at(self._now() + self._ttl))

    def discard(self, value: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM nonces WHERE nonce = ?", [value])

    def purge(self, now: datetime | None = None) -> int:
        """Forget nonces whose commands have expired; returns how many."""
        cutoff = format_at(now or self._now())
        with self._lock:
            cur = self._conn.execute("DELETE FROM nonces WHERE expires <= ?", [cutoff])
            return int(cur.rowcount)
