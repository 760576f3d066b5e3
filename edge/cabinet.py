"""The cabinet controller: samples and door events in, bills and alarms out.

One code path serves the daemon (real time), simulations and trace replays
(virtual time): time is whatever the samples and events say it is, so the
controller never reads a clock of its own.

    SampleBlock -> ChannelFilter -> LevelTracker -> (tick) -> session timers,
    settling, billing -> CabinetStore (session, lines, evidence, outbox in one
    transaction)
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from ulid import ULID

from edge.billing import Bill, BillingPolicy, Evidence, LaneReading, bill_session
from edge.hardware.interfaces import Lock
from edge.model import (
    CabinetInput,
    CabinetSpec,
    DoorEvent,
    FloatArray,
    Lane,
    SampleBlock,
)
from edge.session import Phase, Session, SessionConfig, SessionResult
from edge.store import CabinetStore, InventoryRow
from edge.weighing import ChannelFilter, LevelTracker, WeighingConfig, WindowStats

log = logging.getLogger("freshbox.edge")


def ulid_factory(epoch: datetime, rng: random.Random | None = None) -> Callable[[float], str]:
    """Session ids: ULIDs whose time part is the wall time of the session's start.

    With a seeded ``rng`` the ids are reproducible, which keeps simulations deterministic.
    """

    def new_id(t: float) -> str:
        ms = int((epoch + timedelta(seconds=t)).timestamp() * 1000)
        tail = rng.randbytes(10) if rng is not None else os.urandom(10)
        return str(ULID.from_bytes(ms.to_bytes(6, "big") + tail))

    return new_id


#: below this sample rate (Hz) a shelf's ringing aliases into slow swings
SLOW_SAMPLE_RATE_HZ = 40.0

#: how precisely (g) a weighed lane's level must be known before it is billed
WEIGHED_TOLERANCE_G = 2.5


def settle_tolerance_g(lane: Lane, tracked_items: Iterable[float] = ()) -> float:
    """How precisely (g) a lane's level must be known before it can be billed.

    A unit lane only has to tell whole packs apart; a tracked lane has to tell
    its recorded items apart; a weighed lane is priced by the gram.
    """
    if lane.mode == "unit":
        return min(max(0.12 * float(lane.unit_weight_g or 0.0), 3.0), 40.0)
    if lane.mode == "tracked":
        items = sorted(tracked_items)
        gaps = [b - a for a, b in itertools.pairwise(items) if b - a > 0.5]
        smallest = min(gaps) if gaps else (items[0] if items else 100.0)
        return min(max(smallest / 4.0, 1.5), 20.0)
    return WEIGHED_TOLERANCE_G


@dataclass(slots=True)
class _Outputs:
    sessions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


class Cabinet:
    """Everything a cabinet decides, fed one input at a time.

    ``feed`` takes ``SampleBlock``, ``UnlockEvent`` and ``DoorEvent`` in time
    order. Bills go to the store (and to ``on_session``); alarms and faults go
    to the store as events (and to ``on_event``).
    """

    def __init__(
        self,
        spec: CabinetSpec,
        *,
        store: CabinetStore,
        lock: Lock,
        epoch: datetime,
        weighing: WeighingConfig | None = None,
        sessions: SessionConfig | None = None,
        billing: BillingPolicy | None = None,
        new_id: Callable[[float], str] | None = None,
        on_session: Callable[[SessionResult], None] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.lock = lock
        self.epoch = epoch
        self.weighing = weighing or WeighingConfig()
        self.session_config = sessions or SessionConfig()
        self.policy = billing or BillingPolicy()
        self.new_id = new_id or ulid_factory(epoch)
        self.on_session = on_session
        self.on_event = on_event
        self.filter = ChannelFilter(spec.calibrations)
        self.tracker = LevelTracker(self.filter.channels, spec.sample_rate_hz, self.weighing)
        self.tick_rows = self.weighing.tick_samples(spec.sample_rate_hz)
        column = {c.channel: i for i, c in enumerate(spec.calibrations)}
        for lane in spec.lanes:
            if lane.channel not in column:
                raise ValueError(f"lane {lane.lane}: channel {lane.channel} has no calibration")
        self.lanes = tuple(sorted(spec.lanes, key=lambda ln: ln.lane))
        self.lane_column = {ln.lane: column[ln.channel] for ln in self.lanes}
        # what the store remembers wins over the configured stock: restocking and
        # sales since the configuration was written must survive a restart
        remembered = store.inventory()
        self.tracked_stock: dict[int, list[float]] = {
            ln.lane: list(
                remembered[ln.lane].items
                if ln.lane in remembered and remembered[ln.lane].sku == ln.sku
                else spec.stock.get(ln.lane, [])
            )
            for ln in self.lanes
            if ln.mode == "tracked"
        }
        self._tolerance = np.full(self.filter.channels, 1e6)
        self._refresh_tolerances()
        self.session: Session | None = None
        self.door_open = False
        self.now = 0.0
        self._stats: WindowStats | None = None
        self._faulted = np.zeros(self.filter.channels, dtype=np.bool_)
        self._loud_since = np.full(self.filter.channels, np.inf)
        self._clean_since = np.full(self.filter.channels, np.inf)
        self.out = _Outputs()
        self._pending_recovery: list[Session] = []

    # -- inputs ----------------------------------------------------------------
    def feed(self, item: CabinetInput) -> None:
        """Take one input, in time order."""
        if isinstance(item, SampleBlock):
            self.samples(item)
        elif isinstance(item, DoorEvent):
            self.door(item.t, item.open)
        else:
            self.unlock(item.t, item.resident, item.role, item.session_id)

    def samples(self, block: SampleBlock) -> None:
        """Filter a block of raw samples and evaluate the cabinet every tick."""
        n = block.t.shape[0]
        if n == 0:
            return
        grams = self.filter.process(block.raw)
        step = self.tick_rows
        for start in range(0, n, step):
            stop = min(start + step, n)
            self.tracker.push(block.t[start:stop], grams[start:stop])
            self._tick(float(block.t[stop - 1]))

    def unlock(
        self, t: float, resident: str, role: str = "resident", session_id: str | None = None
    ) -> str | None:
        """A verified unlock. Returns the session id, or None when the cabinet is busy."""
        self.now = max(self.now, t)
        if self.session is not None or self.door_open or self._pending_recovery:
            # (sessions found after a restart are settled first: see recover())
            log.info("unlock for %s refused at %.2f: cabinet busy", resident, t)
            self._event(t, "unlock_refused", resident=resident, reason="busy")
            return None
        sid = session_id or self.new_id(t)
        kind = "operator" if role == "operator" else "resident"
        self.session = Session(session_id=sid, resident=resident, role=kind, unlocked_at=t)
        self.store.begin_session(sid, resident, kind, t)
        self.lock.unlock()
        log.info("session %s: unlocked for %s (%s) at %.2f", sid, resident, kind, t)
        return sid

    def door(self, t: float, is_open: bool) -> None:
        """The door switch changed state."""
        self.now = max(self.now, t)
        if is_open == self.door_open:
            return
        self.door_open = is_open
        if is_open:
            self._door_opened(t)
        else:
            self._door_closed(t)

    def recover(self, door_open: bool = False) -> int:
        """After a restart: pick up sessions the store says were never finished.

        A session whose door never opened expires as ``unlock_unused``; one that
        was open is billed from the baseline it saved when the door opened, with
        the flag ``recovered``. Returns how many sessions were found.
        """
        rows = self.store.open_sessions()
        for row in rows:
            session = Session(
                session_id=row.session_id,
                resident=row.resident,
                role=row.role,
                unlocked_at=row.unlocked_at,
                recovered=True,
            )
            if row.opened_at is None or not row.baseline:
                session.phase = Phase.UNLOCKED
            else:
                session.opened_at = row.opened_at
                session.baseline = {int(k): float(v) for k, v in row.baseline.items()}
                session.phase = Phase.OPEN
                session.closed_at = row.closed_at  # kept: the door did close then
            self._pending_recovery.append(session)
        self.door_open = door_open
        return len(rows)

    # -- the tick ----------------------------------------------------------------
    def _tick(self, t: float) -> None:
        self.now = t
        s = self.tracker.stats()
        if s is None:
            return
        self._stats = s
        if self._pending_recovery:
            self._resume(t)
        self._check_faults(t)
        session = self.session
        if session is None:
            if not self.door_open:
                self.tracker.update_idle(s, learn_noise=True)
            return
        if session.phase is Phase.UNLOCKED:
            if not self.door_open:
                self.tracker.update_idle(s, learn_noise=True)
            if t - session.unlocked_at >= self.session_config.unlock_window_s:
                self._expire(session, session.unlocked_at + self.session_config.unlock_window_s)
        elif session.phase is Phase.OPEN:
            assert session.opened_at is not None
            if not session.alarmed and t - session.opened_at >= self.session_config.door_alarm_s:
                session.alarmed = True
                self._event(
                    session.opened_at + self.session_config.door_alarm_s,
                    "door_open_too_long",
                    session_id=session.session_id,
                )
            if session.role == "operator":
                self._track_restock(session, s)
        elif session.phase is Phase.SETTLING:
            assert session.closed_at is not None
            settled = self.tracker.settled(s, session.closed_at, self._gain_tolerance(session, s))
            settled |= self._faulted
            cols = [self.lane_column[ln.lane] for ln in self.lanes]
            if bool(settled[cols].all()):
                self._finish(session, s, unsettled=False)
            elif t - session.closed_at >= self.session_config.max_settle_s:
                self._finish(session, s, unsettled=True)

    def _resume(self, t: float) -> None:
        session = self._pending_recovery.pop(0)
        if session.phase is Phase.UNLOCKED:
            self.session = session
            self._expire(session, t)
            return
        self.session = session
        log.warning("session %s: recovered after restart at %.2f", session.session_id, t)
        if not self.door_open:
            session.phase = Phase.SETTLING
            if session.closed_at is None:  # the door closed while the cabinet was down
                session.closed_at = t
                self.store.mark_closed(session.session_id, t)

    # -- door --------------------------------------------------------------------
    def _door_opened(self, t: float) -> None:
        session = self.session
        if session is not None and session.phase is Phase.SETTLING:
            # re-opened before the bill: the lock was engaged, so this is forced entry;
            # bill what can be proved now and treat the rest as a forced opening.
            if self._stats is not None:
                self._finish(session, self._stats, unsettled=True)
            session = None
        if session is not None and session.phase is Phase.UNLOCKED:
            session.phase = Phase.OPEN
            session.opened_at = t
            self._take_baseline(session)
            self.store.mark_opened(session.session_id, t, session.baseline)
            log.info("session %s: door opened at %.2f", session.session_id, t)
            return
        if session is not None:
            return
        # the door opened while locked
        sid = self.new_id(t)
        forced = Session(session_id=sid, resident="", role="forced", unlocked_at=t)
        forced.phase = Phase.OPEN
        forced.opened_at = t
        self._take_baseline(forced)
        self.session = forced
        self.store.begin_session(sid, "", "forced", t)
        self.store.mark_opened(sid, t, forced.baseline)
        self._event(t, "door_forced", session_id=sid)

    def _door_closed(self, t: float) -> None:
        self.lock.lock()
        session = self.session
        if session is None or session.phase is not Phase.OPEN:
            return
        session.phase = Phase.SETTLING
        session.closed_at = t
        self.store.mark_closed(session.session_id, t)
        log.info("session %s: door closed at %.2f", session.session_id, t)

    def _take_baseline(self, session: Session) -> None:
        s = self._stats
        level = self.tracker.stable_level.copy()
        sigma = self.tracker.stable_sigma.copy()
        if s is not None:
            missing = np.isnan(level)
            level = np.where(missing, s.mean, level)
            sigma = np.where(
                missing | ~np.isfinite(sigma), s.level_sigma(self.tracker.noise), sigma
            )
        # the baseline averages many windows: the measured spread shrinks with them
        sigma = self._slow_rate_floor(sigma, self.tracker.baseline_gain())
        for ln in self.lanes:
            col = self.lane_column[ln.lane]
            if math.isfinite(level[col]):
                session.baseline[ln.lane] = float(level[col])
                session.baseline_sigma[ln.lane] = float(sigma[col])
            else:
                session.faulted_lanes.add(ln.lane)

    # -- outcomes ------------------------------------------------------------------
    def _expire(self, session: Session, t: float) -> None:
        self.lock.lock()
        record = self._record(session, billed_at=t, bill=None, flags=["unlock_unused"])
        self.store.expire_session(session.session_id, t, record)
        self.session = None
        log.info("session %s: unlock unused, relocked at %.2f", session.session_id, t)
        self._emit(SessionResult(session.session_id, record))

    def _finish(self, session: Session, s: WindowStats, *, unsettled: bool) -> None:
        t = s.t
        # the uncertainty of each level: white noise, plus a quarter of the worst case of
        # what is left of the ringing (calibrated: scripts/bench_sigma.py), floored at
        # low sample rates by what the window itself shows
        sigma_after = np.hypot(
            s.level_sigma(self.tracker.noise), self.tracker.ringing_bound(s) / 4.0
        )
        sigma_after = self._slow_rate_floor(sigma_after, 1.0)
        after = s.mean
        readings: list[LaneReading] = []
        for ln in self.lanes:
            col = self.lane_column[ln.lane]
            before = session.baseline.get(ln.lane)
            faulted = ln.lane in session.faulted_lanes or bool(self._faulted[col])
            level = float(after[col])
            if before is None or not math.isfinite(level):
                faulted = True
            before_g = before if before is not None else (level if math.isfinite(level) else 0.0)
            after_g = level if math.isfinite(level) else before_g
            sigma = math.hypot(session.baseline_sigma.get(ln.lane, 0.0), float(sigma_after[col]))
            readings.append(
                LaneReading(
                    lane=ln, before_g=before_g, after_g=after_g, sigma_g=sigma, faulted=faulted
                )
            )
        if session.role == "operator":
            bill = self._restock(session, readings)
        else:
            bill = bill_session(readings, self.tracked_stock, self.policy)
        flags = list(bill.flags)
        if unsettled and bill.lines and "needs_review" not in flags:
            flags.append("needs_review")
        if session.recovered:
            flags.append("recovered")
        if session.role == "forced":
            flags.append("door_forced")
        record = self._record(session, billed_at=t, bill=bill, flags=sorted(set(flags)))
        charged = session.role == "resident"
        if session.role == "resident":
            self._apply_sale(bill)
        elif session.role == "forced":
            self._apply_sale(bill)  # the stock is gone either way
        if not charged:
            record["lines"], record["total_fen"] = [], 0
        items = {ln.lane: list(ln.items_g) for ln in bill.lines if ln.items_g}
        stored_lines = [
            {**ln, "items": items[ln["lane"]]} if ln["lane"] in items else ln
            for ln in record["lines"]
        ]
        self.store.finish_session(
            session.session_id,
            closed_at=session.closed_at if session.closed_at is not None else t,
            billed_at=t,
            total_fen=record["total_fen"],
            flags=record["flags"],
            lines=stored_lines,
            evidence=record["evidence"],
            payload=record,
            inventory=self._inventory(after),
        )
        if session.role == "forced":
            loss = bill.to_json()
            self._event(
                t,
                "loss",
                session_id=session.session_id,
                lines=loss["lines"],
                value_fen=loss["total_fen"],
                evidence=loss["evidence"],
            )
        mask = np.isfinite(after)
        self.tracker.set_levels(mask, after, sigma_after, t)
        self.session = None
        log.info(
            "session %s: billed %d fen at %.2f (%.2f s after close) flags=%s",
            session.session_id,
            record["total_fen"],
            t,
            t - (session.closed_at if session.closed_at is not None else t),
            record["flags"],
        )
        self._emit(SessionResult(session.session_id, record))

    def _apply_sale(self, bill: Bill) -> None:
        for line in bill.lines:
            stock = self.tracked_stock.get(line.lane)
            if stock is None:
                continue
            for w in line.items_g:
                _remove_closest(stock, w)
        for lane_no, weights in bill.returned_to.items():
            if lane_no in self.tracked_stock:
                self.tracked_stock[lane_no].extend(weights)
        self._refresh_tolerances()

    def _track_restock(self, session: Session, s: WindowStats) -> None:
        ok = self.tracker.stable(s)
        for ln in self.lanes:
            if ln.mode != "tracked":
                continue
            col = self.lane_column[ln.lane]
            if not ok[col]:
                continue
            plateaus = session.plateaus.setdefault(ln.lane, [session.baseline.get(ln.lane, 0.0)])
            if abs(float(s.mean[col]) - plateaus[-1]) > max(
                8.0, 4 * float(self.tracker.noise[col])
            ):
                plateaus.append(float(s.mean[col]))

    def _restock(self, session: Session, readings: list[LaneReading]) -> Bill:
        """A restocking session: weight added is stock, never a sale."""
        for r in readings:
            if r.lane.mode != "tracked" or r.faulted:
                continue
            stock = self.tracked_stock.setdefault(r.lane.lane, [])
            plateaus = [*session.plateaus.get(r.lane.lane, [r.before_g]), r.after_g]
            threshold = max(8.0, 4 * r.sigma_g)
            for a, b in itertools.pairwise(plateaus):
                step = b - a
                if step > threshold:
                    stock.append(round(step, 1))
                elif step < -threshold:
                    _remove_closest(stock, -step)
        self._refresh_tolerances()
        empty = Bill(lines=(), total_fen=0, flags=(), evidence=(), returned_to={})
        evidence = [
            {"lane": r.lane.lane, "before_g": r.before_g, "after_g": r.after_g}
            for r in readings
            if abs(r.after_g - r.before_g) > max(self.policy.min_change_g, 3 * r.sigma_g)
        ]
        return _with_evidence(empty, evidence)

    def _slow_rate_floor(self, sigma: FloatArray, averaging_gain: float) -> FloatArray:
        """Sampled slowly, ringing aliases into slow swings the noise model misses: there
        a level is never surer than the spread of batch means in the window shows
        (narrowed by ``averaging_gain`` for levels averaged over many windows)."""
        if self.spec.sample_rate_hz >= SLOW_SAMPLE_RATE_HZ:
            return sigma
        batch = self.tracker.batch_sigma() / averaging_gain
        floored: FloatArray = np.maximum(sigma, np.where(np.isfinite(batch), batch, 0.0))
        return floored

    def _gain_tolerance(self, session: Session, s: WindowStats) -> FloatArray:
        """Settling precision per channel: a lane that gained weight may hold produce put
        back from a weighed lane, so it is measured as precisely as a weighed lane."""
        tolerance = self._tolerance.copy()
        for ln in self.lanes:
            col = self.lane_column[ln.lane]
            before = session.baseline.get(ln.lane)
            if before is not None and s.mean[col] - before > self.policy.min_change_g:
                tolerance[col] = min(tolerance[col], WEIGHED_TOLERANCE_G)
        return tolerance

    def _refresh_tolerances(self) -> None:
        for ln in self.lanes:
            col = self.lane_column[ln.lane]
            self._tolerance[col] = settle_tolerance_g(ln, self.tracked_stock.get(ln.lane, ()))

    def _fault_reasons(self, t: float) -> list[str]:
        """Why each channel is faulted now ("" when it is not)."""
        w = self.weighing
        rate = self.spec.sample_rate_hz
        silent = self.tracker.faulted(t)
        invalid = self.filter.invalid_share > w.fault_invalid_share
        stuck = self.filter.same_run >= max(20, w.fault_stuck_s * rate)
        s = self._stats
        noisy = np.zeros(self.filter.channels, dtype=np.bool_)
        if s is not None and self.session is None and not self.door_open:
            # ringing after a load change passes within seconds; a noisy cell does not
            loud = s.std > w.fault_noise_g
            self._loud_since = np.where(loud, np.fmin(self._loud_since, t), np.inf)
            noisy = t - self._loud_since >= w.fault_noise_s
        reasons = []
        for col in range(self.filter.channels):
            if silent[col]:
                reasons.append("no reading")
            elif invalid[col]:
                reasons.append(f"{100 * self.filter.invalid_share[col]:.0f} % invalid readings")
            elif stuck[col]:
                reasons.append("stuck value")
            elif noisy[col] and s is not None:
                reasons.append(f"noise {float(s.std[col]):.0f} g rms out of band")
            else:
                reasons.append("")
        return reasons

    def _check_faults(self, t: float) -> None:
        reasons = self._fault_reasons(t)
        now_bad = np.array([bool(r) for r in reasons], dtype=np.bool_)
        # hysteresis: a faulted channel counts again only after fault_clear_s clean
        self._clean_since = np.where(now_bad, np.inf, np.fmin(self._clean_since, t))
        faulted = now_bad | (self._faulted & (t - self._clean_since < self.weighing.fault_clear_s))
        new = faulted & ~self._faulted
        self._faulted = faulted
        if not new.any():
            return
        for ln in self.lanes:
            col = self.lane_column[ln.lane]
            if new[col]:
                if self.session is not None:
                    self.session.faulted_lanes.add(ln.lane)
                self._event(
                    t, "sensor_fault", lane=ln.lane, channel=ln.channel, reason=reasons[col]
                )

    def alarm(self, t: float, kind: str, **data: Any) -> None:
        """Record an alarm raised outside the weighing pipeline (the lock, for one)."""
        self._event(t, kind, **data)

    # -- records -----------------------------------------------------------------
    def _record(
        self, session: Session, *, billed_at: float, bill: Bill | None, flags: list[str]
    ) -> dict[str, Any]:
        body = bill.to_json() if bill is not None else {"lines": [], "total_fen": 0, "evidence": []}
        return {
            "session_id": session.session_id,
            "resident": session.resident,
            "role": session.role,
            "unlocked_at": _r(session.unlocked_at),
            "opened_at": _r(session.opened_at),
            "closed_at": _r(session.closed_at),
            "billed_at": _r(billed_at),
            "lines": body["lines"],
            "total_fen": body["total_fen"],
            "flags": flags,
            "evidence": body["evidence"],
        }

    def _event(self, t: float, kind: str, **data: Any) -> None:
        session_id = data.pop("session_id", None)
        self.store.record_event(t, kind, session_id=session_id, data=data)
        event = {
            "t": _r(t),
            "type": kind,
            **({"session_id": session_id} if session_id else {}),
            **data,
        }
        self.out.events.append(event)
        log.log(
            logging.INFO if kind == "unlock_refused" else logging.WARNING,
            "event %s at %.2f %s",
            kind,
            t,
            data,
        )
        if self.on_event is not None:
            self.on_event(event)

    def _emit(self, result: SessionResult) -> None:
        self.out.sessions.append(result.record)
        if self.on_session is not None:
            self.on_session(result)

    def _inventory(self, level: FloatArray) -> dict[int, InventoryRow]:
        """Per-lane inventory after a session: level (g), packs, recorded items."""
        rows: dict[int, InventoryRow] = {}
        for ln in self.lanes:
            g = float(level[self.lane_column[ln.lane]])
            if not math.isfinite(g):
                continue
            count = None
            if ln.mode == "unit" and ln.unit_weight_g:
                count = max(0, round(g / ln.unit_weight_g))
            elif ln.mode == "tracked":
                count = len(self.tracked_stock.get(ln.lane, []))
            rows[ln.lane] = InventoryRow(
                lane=ln.lane,
                sku=ln.sku,
                mode=ln.mode,
                level_g=round(g, 1),
                count=count,
                items=list(self.tracked_stock.get(ln.lane, [])),
            )
        return rows

    def seed_inventory(self) -> bool:
        """Record what the shelves hold when the store has no inventory yet (a new cabinet,
        or a new store): from the current stable levels, while no session runs. True once
        the store has an inventory."""
        if self.store.inventory():
            return True
        if self.session is not None or self.door_open:
            return False
        level = np.asarray(self.tracker.stable_level, dtype=float)
        cols = [self.lane_column[ln.lane] for ln in self.lanes]
        if not bool(np.all(np.isfinite(level[cols]))):
            return False
        self.store.set_inventory(self._inventory(level), replace=True)
        return True

    # -- views ---------------------------------------------------------------------
    def levels(self) -> dict[int, float]:
        """The last stable level of each lane (g)."""
        return {
            ln.lane: float(self.tracker.stable_level[self.lane_column[ln.lane]])
            for ln in self.lanes
        }


def _remove_closest(stock: list[float], weight_g: float) -> None:
    """Take the recorded item closest to ``weight_g`` off a tracked lane's list."""
    if stock:
        stock.remove(min(stock, key=lambda x: abs(x - weight_g)))


def _with_evidence(bill: Bill, evidence: Sequence[Mapping[str, float]]) -> Bill:
    ev = tuple(
        Evidence(
            lane=int(e["lane"]),
            before_g=float(e["before_g"]),
            after_g=float(e["after_g"]),
            delta_g=float(e["after_g"]) - float(e["before_g"]),
        )
        for e in evidence
    )
    return Bill(lines=(), total_fen=0, flags=(), evidence=ev, returned_to={})


def _r(t: float | None) -> float | None:
    return None if t is None else round(t, 3)


def utc_epoch(text: str = "2026-01-01T00:00:00Z") -> datetime:
    """The wall time that virtual time zero stands for."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
