"""``SimulatedCabinet``: a cabinet's sensors and door, driven by a scenario or by hand.

Two ways to use it:

* virtual time: ``SimulatedCabinet(scenario).stream()`` yields ``SampleBlock``,
  ``UnlockEvent`` and ``DoorEvent`` in time order, the whole timeline played;
* real time (the daemon's development backend): ``SimulatedCabinet.live(...)``,
  then ``advance(t_end)`` (or ``read(until)``, the ``WeightSource`` protocol) for
  the samples up to now and ``take``/``return_item``/``place``/``press``/
  ``open_door``/``close_door``/``unlock`` to act at the current time.

``truth_sessions()`` tells what really left the cabinet, session by session.
Everything random comes from generators seeded with the scenario's seed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from edge.errors import InputError
from edge.model import (
    CabinetInput,
    CabinetSpec,
    Calibration,
    DoorEvent,
    Lane,
    Role,
    SampleBlock,
    UnlockEvent,
)
from firmware_mock.ledger import ActionError, Item, Ledger, loss_rate_per_s
from firmware_mock.scenario import Action, Physics, Scenario
from firmware_mock.shelf import GLITCH_RATE, Shelves, draw_calibrations

#: Samples generated at a time in ``stream`` (then cut into blocks).
CHUNK_SAMPLES = 2048


class SimulatedCabinet:
    """A simulated cabinet: lanes on load cells, a door, and the people of a scenario."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        cabinet_id: str = "sim",
        glitch_rate: float = GLITCH_RATE,
        calibrations: Sequence[Calibration] | None = None,
    ) -> None:
        """Build the cabinet of ``scenario`` and schedule the physics of its timeline.

        ``glitch_rate``: share of valid-looking glitch samples (0 for clean signals).
        ``calibrations``: the channels (raw columns, in this order) and their calibration;
        by default one per lane channel, in channel order, drawn from the seed.
        """
        self.scenario = scenario
        self.physics: Physics = scenario.physics
        lanes = scenario.lanes
        calib_rng, shelf_rng = np.random.default_rng(scenario.seed).spawn(2)
        drawn = draw_calibrations(sorted(ln.channel for ln in lanes), calib_rng)
        self.calibrations: tuple[Calibration, ...] = (
            drawn if calibrations is None else tuple(calibrations)
        )
        channels = [c.channel for c in self.calibrations]
        if len(set(channels)) != len(channels):
            raise ValueError(f"duplicate channel in calibrations: {channels}")
        for ln in lanes:
            if ln.channel not in channels:
                raise ValueError(f"lane {ln.lane}: no calibration for channel {ln.channel}")
        self._col = {ln.lane: channels.index(ln.channel) for ln in lanes}
        self.spec = CabinetSpec(
            cabinet_id=cabinet_id,
            sample_rate_hz=float(self.physics.sample_rate_hz),
            calibrations=self.calibrations,
            lanes=lanes,
            stock={
                ln.lane: list(scenario.stock.get(ln.lane, []))
                for ln in lanes
                if ln.mode == "tracked"
            },
        )
        self._ledger = Ledger(
            lanes, scenario.stock, loss_rate_per_s(self.physics.moisture_loss_pct_per_day)
        )
        static = [0.0] * len(self.calibrations)
        decaying = [0.0] * len(self.calibrations)
        for lane, items in self._ledger.shelves.items():
            for it in items:
                (decaying if it.decays else static)[self._col[lane]] += it.weight0_g
        self._shelves = Shelves(
            self.physics, self.calibrations, static, decaying, shelf_rng, glitch_rate=glitch_rate
        )
        self._fs = float(self.physics.sample_rate_hz)
        self._k = 0  # next sample index
        self._now = 0.0  # the cabinet clock (s): samples before it have been produced
        self._door_open = False
        self._events: list[UnlockEvent | DoorEvent] = []
        self._end = scenario.end_time()
        self._timeline_pending = bool(scenario.timeline)
        self._schedule(scenario.timeline)

    @classmethod
    def live(
        cls,
        lanes: Sequence[Lane],
        stock: Mapping[int, Sequence[float]],
        physics: Physics | None = None,
        seed: int = 0,
        *,
        cabinet_id: str = "sim",
        glitch_rate: float = GLITCH_RATE,
        calibrations: Sequence[Calibration] | None = None,
    ) -> SimulatedCabinet:
        """A cabinet without a timeline, for a real-time daemon to drive (``calibrations``:
        those of the cabinet's configuration, else drawn from the seed)."""
        scenario = Scenario(
            name=cabinet_id,
            seed=seed,
            physics=physics or Physics(),
            lanes=tuple(lanes),
            stock={k: [float(w) for w in v] for k, v in stock.items()},
        )
        return cls(
            scenario, cabinet_id=cabinet_id, glitch_rate=glitch_rate, calibrations=calibrations
        )

    # ------------------------------------------------------------ state

    @property
    def now(self) -> float:
        """The cabinet clock (s): every sample before it has been produced."""
        return self._now

    @property
    def door_open(self) -> bool:
        """Whether the door is open at ``now``."""
        return self._door_open

    @property
    def is_open(self) -> bool:
        """``DoorSwitch`` protocol: the same as ``door_open``."""
        return self._door_open

    @property
    def sample_rate_hz(self) -> float:
        """Samples per second per channel."""
        return self._fs

    @property
    def end_time(self) -> float:
        """When the scenario's stream ends (s)."""
        return self._end

    def shelf_g(self, lane: int) -> list[float]:
        """True weights (g) of the items on ``lane`` now, in stock-list order."""
        self._ledger.check_lane(lane)
        loss = self._ledger.loss_per_s
        return [it.weight(self._now, loss) for it in self._ledger.shelves[lane]]

    def true_load_g(self, lane: int) -> float:
        """What lies on ``lane`` now (g): its items and any foreign objects, without the
        transients (hands, rings) of gestures in progress."""
        return sum(self.shelf_g(lane)) + self._ledger.foreign_g[lane]

    def truth_sessions(self) -> list[dict[str, object]]:
        """What each session really took, in the shape of ``expect.sessions``
        (``docs/scenario.md``); for a scenario, of its whole timeline."""
        return copy.deepcopy(self._ledger.truth())

    # ------------------------------------------------------------ virtual time

    def stream(self, block_s: float = 0.1) -> Iterator[CabinetInput]:
        """The whole scenario: sample blocks of at most ``block_s`` seconds and the
        timeline's events, in time order (an event at T follows every sample with
        t < T and precedes those with t >= T). Ends at the final ``wait``, or 5 s
        after the last action."""
        if self._k != 0:
            raise RuntimeError("stream() plays the scenario from t = 0 and can run only once")
        per_block = max(1, int(block_s * self._fs + 1e-9))
        for ev in self._events:
            yield from self._blocks(self._index_at(ev.t), per_block)
            self._now = max(self._now, ev.t)
            if isinstance(ev, DoorEvent):
                self._door_open = ev.open
            yield ev
        yield from self._blocks(self._index_at(self._end), per_block)
        self._now = max(self._now, self._end)
        self._timeline_pending = False

    def _blocks(self, k_stop: int, per_block: int) -> Iterator[SampleBlock]:
        chunk = per_block * max(1, CHUNK_SAMPLES // per_block)
        while self._k < k_stop:
            k1 = min(k_stop, self._k + chunk)
            t, raw = self._shelves.samples(self._k, k1)
            self._k = k1
            self._now = max(self._now, k1 / self._fs)
            for j in range(0, t.shape[0], per_block):
                yield SampleBlock(t[j : j + per_block], raw[j : j + per_block])

    def _index_at(self, t: float) -> int:
        """The index of the first sample at or after ``t`` (s)."""
        k = max(0, math.ceil(t * self._fs))
        while k > 0 and (k - 1) / self._fs >= t:
            k -= 1
        while k / self._fs < t:
            k += 1
        return k

    # ------------------------------------------------------------ real time

    def advance(self, t_end: float) -> SampleBlock:
        """The samples from where the last call stopped up to (not including) ``t_end`` (s)."""
        k_stop = max(self._k, self._index_at(t_end))
        t, raw = self._shelves.samples(self._k, k_stop)
        self._k = k_stop
        self._now = max(self._now, t_end)
        return SampleBlock(t, raw)

    def read(self, until: float) -> SampleBlock:
        """``WeightSource`` protocol: the same as ``advance``."""
        return self.advance(until)

    def close(self) -> None:
        """``WeightSource`` protocol: nothing to release."""

    def unlock(self, resident: str, role: Role = "resident") -> UnlockEvent:
        """A verified unlock now (for the truth); returns the event to feed the pipeline."""
        self._live_check()
        self._ledger.unlock(self._now, resident, role)
        return UnlockEvent(self._now, resident, role)

    def open_door(self) -> DoorEvent:
        """The door opens now."""
        self._live_check()
        self._ledger.open(self._now)
        self._door_open = True
        return DoorEvent(self._now, True)

    def close_door(self) -> DoorEvent:
        """The door closes now: every lane rings with the slam."""
        self._live_check()
        self._ledger.close(self._now)
        self._shelves.slam(self._now)
        self._door_open = False
        return DoorEvent(self._now, False)

    def take(self, lane: int, item_index: int = 0, count: int = 1) -> list[float]:
        """A hand reaches in now and takes ``count`` items from ``item_index`` of the lane's
        stock list; returns their weights (g)."""
        self._live_check()
        taken = self._ledger.take(self._now, lane, item_index, count)
        self._move(lane, [tk.item for tk in taken], -1.0, self._now, hand=True, start=True)
        return [tk.weight_g for tk in taken]

    def return_item(self, lane: int, taken_index: int) -> float:
        """Put item ``taken_index`` (in order of taking, this visit) on ``lane`` now;
        returns its weight (g)."""
        self._live_check()
        taken = self._ledger.return_item(self._now, lane, taken_index)
        self._move(lane, [taken.item], 1.0, self._now, hand=True, start=True)
        return taken.item.weight(self._now, self._ledger.loss_per_s)

    def place(self, lane: int, weight_g: float) -> None:
        """Put something of ``weight_g`` grams on ``lane`` now (foreign, or stock when an
        operator restocks)."""
        self._live_check()
        item = self._ledger.place(self._now, lane, weight_g)
        self._move(lane, [item], 1.0, self._now, hand=False, start=True)

    def press(self, lane: int, weight_g: float, duration_s: float) -> None:
        """Press ``weight_g`` grams on ``lane`` from now for ``duration_s`` seconds."""
        self._live_check()
        self._ledger.check_lane(lane)
        self._shelves.press(self._col[lane], self._now, duration_s, weight_g)

    def _live_check(self) -> None:
        if self._timeline_pending:
            raise RuntimeError("this cabinet plays a timeline: act only after stream() ends")

    # ------------------------------------------------------------ timeline

    def _schedule(self, timeline: Sequence[Action]) -> None:
        """Play the timeline through the ledger and schedule its physics and events."""
        closes = [a.t for a in timeline if a.do == "close"]
        opened_at = -math.inf
        for i, a in enumerate(timeline):
            if a.do == "open":
                opened_at = a.t
            hi = next((c for c in closes if c >= a.t), math.inf)
            try:
                self._schedule_action(a, opened_at, hi)
            except ActionError as e:
                where = f"timeline[{i}]" + (f".{e.field}" if e.field else "")
                raise InputError(f"{self.scenario.name or 'scenario'}: {where}: {e.problem}") from e

    def _schedule_action(self, a: Action, opened_at: float, hi: float) -> None:
        """One action; a gesture stays within [``opened_at``, ``hi``] (door open .. close)."""
        lane = a.lane if a.lane is not None else 0
        if a.do == "unlock":
            role: Role = a.role or "resident"
            self._ledger.unlock(a.t, a.resident or "", role)
            self._events.append(UnlockEvent(a.t, a.resident or "", role))
        elif a.do == "open":
            self._ledger.open(a.t)
            self._events.append(DoorEvent(a.t, True))
        elif a.do == "close":
            self._ledger.close(a.t)
            self._shelves.slam(a.t)
            self._events.append(DoorEvent(a.t, False))
        elif a.do == "take":
            taken = self._ledger.take(a.t, lane, a.item or 0, a.count or 1)
            items = [tk.item for tk in taken]
            self._move(lane, items, -1.0, a.t, hand=True, lo=opened_at, hi=hi)
        elif a.do == "return":
            back = self._ledger.return_item(a.t, lane, a.item or 0)
            self._move(lane, [back.item], 1.0, a.t, hand=True, lo=opened_at, hi=hi)
        elif a.do == "place":
            item = self._ledger.place(a.t, lane, a.weight_g or 0.0)
            self._move(lane, [item], 1.0, a.t, hand=False, lo=opened_at, hi=hi)
        elif a.do == "press":
            self._ledger.check_lane(lane)
            self._shelves.press(self._col[lane], a.t, a.duration_s or 0.0, a.weight_g or 0.0)

    def _move(
        self,
        lane: int,
        items: Sequence[Item],
        sign: float,
        t: float,
        *,
        hand: bool,
        lo: float = -math.inf,
        hi: float = math.inf,
        start: bool = False,
    ) -> None:
        static = sign * sum(it.weight0_g for it in items if not it.decays)
        decaying = sign * sum(it.weight0_g for it in items if it.decays)
        self._shelves.gesture(
            self._col[lane], t, static, decaying, hand=hand, lo=lo, hi=hi, start_at_t=start
        )
