"""Random scenarios with their true bills, for tests and benchmarks of the pipeline.

``generate_scenario(seed, tier)`` builds a cabinet of 2-16 lanes stocked with
realistic produce, 1-3 shopping sessions (takes, sometimes several items at once,
returns to the same lane, misplaced returns, foreign objects, unused unlocks),
and fills ``expect`` from the simulator's truth. Every gesture is physically
sensible and distinguishable in principle:

* gestures are at least ``MIN_GAP_S`` apart;
* unit packs lie within 2.5 sd of their nominal weight (sd 1-2 % of it), so a
  count is unambiguous within 3 sd;
* tracked items on a lane are at least ``TRACKED_APART_G`` apart;
* a misplaced item or a foreign object weighs what no count of the target lane's
  packs, no item of a tracked target lane and no item still out of the cabinet
  would weigh (within a margin).

Tiers: ``standard`` (the physics of ``docs/scenario.md``'s example), ``hard``
(noisier, more invalid samples, a 200 g hand, an 80 g slam, slower settling, and
the door closing within 0.3 s of the last take) and ``slow`` (standard at 10 SPS).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge.model import Lane, LaneMode
from firmware_mock.ledger import Ledger, Taken
from firmware_mock.scenario import Action, Physics, Scenario
from firmware_mock.simulator import SimulatedCabinet

Tier = Literal["standard", "hard", "slow"]

TIER_PHYSICS: dict[str, Physics] = {
    "standard": Physics(),
    "hard": Physics(
        noise_g=2.5,
        invalid_rate=0.04,
        hand_press_g=200.0,
        door_slam_g=80.0,
        settle_s=0.6,
    ),
    "slow": Physics(sample_rate_hz=10.0),
}

#: Least time between two gestures of a session (s).
MIN_GAP_S = 0.9
#: Least difference between two tracked items of a lane (g).
TRACKED_APART_G = 15.0
#: Margin beyond 3 sd by which a misplaced or foreign weight must miss every explanation (g).
AMBIGUITY_MARGIN_G = 40.0


@dataclass(frozen=True, slots=True)
class Produce:
    """A catalogue entry: unit packs of ``lo`` g, or tracked/weighed items in [lo, hi] g."""

    sku: str
    name: str
    mode: LaneMode
    lo: float
    hi: float
    price: tuple[int, int]  # fen per item (unit, tracked) or per kg (weighed)


CATALOGUE: tuple[Produce, ...] = (
    Produce("tomato-500", "Tomatoes 500 g", "unit", 500, 500, (590, 990)),
    Produce("chili-150", "Chili 150 g", "unit", 150, 150, (290, 490)),
    Produce("mushroom-250", "Button mushrooms 250 g", "unit", 250, 250, (490, 890)),
    Produce("strawberry-300", "Strawberries 300 g", "unit", 300, 300, (1290, 2290)),
    Produce("cherry-tomato-400", "Cherry tomatoes 400 g", "unit", 400, 400, (690, 1190)),
    Produce("grapes-750", "Grapes 750 g", "unit", 750, 750, (1290, 1990)),
    Produce("potato-1000", "Potatoes 1 kg", "unit", 1000, 1000, (490, 790)),
    Produce("carrot-800", "Carrots 800 g", "unit", 800, 800, (390, 690)),
    Produce("ginger-100", "Ginger 100 g", "unit", 100, 100, (250, 450)),
    Produce("garlic-200", "Garlic 200 g", "unit", 200, 200, (390, 690)),
    Produce("blueberry-125", "Blueberries 125 g", "unit", 125, 125, (990, 1590)),
    Produce("kiwi-600", "Kiwis 600 g", "unit", 600, 600, (990, 1490)),
    Produce("eggs-10", "Eggs x10", "tracked", 560, 680, (990, 1590)),
    Produce("melon-half", "Half a hami melon", "tracked", 700, 1400, (890, 1690)),
    Produce("pumpkin-wedge", "Pumpkin wedge", "tracked", 500, 1200, (390, 890)),
    Produce("pineapple", "Pineapple", "tracked", 900, 1500, (890, 1490)),
    Produce("pomelo", "Pomelo", "tracked", 900, 1450, (990, 1590)),
    Produce("cabbage", "Cabbage", "tracked", 700, 1300, (390, 690)),
    Produce("tofu-box", "Tofu box", "tracked", 300, 450, (350, 550)),
    Produce("bokchoy", "Bok choy", "weighed", 250, 450, (600, 1000)),
    Produce("spinach", "Spinach", "weighed", 150, 300, (800, 1400)),
    Produce("leek", "Leek", "weighed", 200, 400, (600, 1000)),
    Produce("celery", "Celery", "weighed", 400, 800, (500, 900)),
    Produce("lettuce", "Lettuce", "weighed", 250, 500, (700, 1200)),
    Produce("water-spinach", "Water spinach", "weighed", 200, 450, (600, 1100)),
    Produce("coriander", "Coriander", "weighed", 150, 250, (1600, 2600)),
)

_MODE_P = {"unit": 0.5, "tracked": 0.25, "weighed": 0.25}


def generate_scenario(rng_seed: int, tier: Tier) -> Scenario:
    """A random, valid scenario of ``tier`` with ``expect`` from the simulator's truth."""
    if tier not in TIER_PHYSICS:
        raise ValueError(f"unknown tier {tier!r}: expected standard, hard or slow")
    rng = np.random.default_rng(rng_seed)
    lanes, stock = _cabinet(rng)
    timeline = _Timeline(rng, lanes, stock, hard=tier == "hard").build()
    scenario = Scenario(
        name=f"corpus {tier} #{rng_seed}",
        seed=rng_seed,
        physics=TIER_PHYSICS[tier],
        lanes=lanes,
        stock=stock,
        timeline=timeline,
    )
    truth = SimulatedCabinet(scenario).truth_sessions()
    return dataclasses.replace(scenario, expect={"sessions": truth})


# ------------------------------------------------------------------ cabinet


def _cabinet(rng: np.random.Generator) -> tuple[tuple[Lane, ...], dict[int, list[float]]]:
    n = int(rng.integers(2, 17))
    modes: list[LaneMode] = ["unit", "tracked", "weighed"]
    lanes: list[Lane] = []
    stock: dict[int, list[float]] = {}
    used: set[str] = set()
    for lane_no in range(1, n + 1):
        mode = modes[int(rng.choice(3, p=[_MODE_P[m] for m in modes]))]
        options = [p for p in CATALOGUE if p.mode == mode]
        fresh = [p for p in options if p.sku not in used] or options
        prod = fresh[int(rng.integers(len(fresh)))]
        sku = prod.sku if prod.sku not in used else f"{prod.sku}-{lane_no}"
        used.add(sku)
        price = int(rng.integers(prod.price[0], prod.price[1] + 1))
        count = int(rng.integers(2, 9))
        if mode == "unit":
            sd = math.ceil(prod.lo * float(rng.uniform(0.01, 0.02)) * 10.0) / 10.0  # >= 1 %
            lanes.append(
                Lane(lane_no, sku, mode, lane_no - 1, prod.name, price_fen=price,
                     unit_weight_g=prod.lo, unit_weight_sd_g=sd)
            )  # fmt: skip
            draws = np.clip(rng.normal(prod.lo, sd, count), prod.lo - 2.5 * sd, prod.lo + 2.5 * sd)
            stock[lane_no] = [round(float(w), 1) for w in draws]
        elif mode == "tracked":
            lanes.append(Lane(lane_no, sku, mode, lane_no - 1, prod.name, price_fen=price))
            stock[lane_no] = _apart(rng, prod.lo, prod.hi, count)
        else:
            lanes.append(Lane(lane_no, sku, mode, lane_no - 1, prod.name, price_fen_per_kg=price))
            stock[lane_no] = [round(float(w), 1) for w in rng.uniform(prod.lo, prod.hi, count)]
    return tuple(lanes), stock


def _apart(rng: np.random.Generator, lo: float, hi: float, count: int) -> list[float]:
    """``count`` (fewer if [lo, hi] is too narrow) weights in [lo, hi] g, pairwise at least
    ``TRACKED_APART_G`` apart, in random order."""
    gap = TRACKED_APART_G + 0.1  # rounding to 0.1 g keeps them 15 g apart
    count = min(count, int((hi - lo) // gap) + 1)
    slack = (hi - lo) - (count - 1) * gap
    base = np.sort(rng.uniform(0.0, slack, count)) + lo + gap * np.arange(count)
    rng.shuffle(base)
    return [round(float(w), 1) for w in base]


# ------------------------------------------------------------------ timeline


class _Timeline:
    """Builds a timeline action by action, keeping a ledger to stay physically valid."""

    def __init__(
        self,
        rng: np.random.Generator,
        lanes: Sequence[Lane],
        stock: dict[int, list[float]],
        *,
        hard: bool,
    ) -> None:
        self.rng = rng
        self.lanes = {ln.lane: ln for ln in lanes}
        self.ledger = Ledger(lanes, stock)
        self.hard = hard
        self.actions: list[Action] = []
        self.t = 0.0
        #: lanes holding a misplaced item or a foreign object: an operator clears them
        #: before anyone shops there again, so later sessions do not take from them
        self.cluttered: set[int] = set()

    def build(self) -> tuple[Action, ...]:
        rng = self.rng
        self._add("wait")
        self.t = float(rng.uniform(2.0, 4.0))
        sessions = int(rng.integers(1, 4))
        unused_at = int(rng.integers(sessions + 1)) if rng.random() < 0.2 else -1
        for s in range(sessions + 1):
            if s == unused_at:
                self._add("unlock", resident=self._resident())
                self.t += float(rng.uniform(16.0, 22.0))
            if s < sessions:
                self._session()
                self.t += float(rng.uniform(4.0, 10.0))
        self._add("wait")
        return tuple(self.actions)

    def _resident(self) -> str:
        return f"r-{int(self.rng.integers(1, 500))}"

    def _session(self) -> None:
        rng = self.rng
        self._add("unlock", resident=self._resident())
        self.t += float(rng.uniform(0.5, 2.5))
        self._add("open")
        self.t += float(rng.uniform(0.8, 2.0))
        n_takes = int(rng.integers(1, 5))
        extras = [
            kind
            for kind, p in (("return", 0.3), ("misplaced", 0.2), ("foreign", 0.15))
            if rng.random() < p
        ]
        # plan: a take, then maybe an extra, ...; in the hard tier a take comes last
        plan: list[str] = ["take"] * n_takes
        if "return" in extras:
            last = len(plan) - 1 if self.hard else len(plan)
            plan.insert(int(rng.integers(1, max(1, last) + 1)), "return")
        # misplaced items and foreign objects come after the last take, so their weight
        # can be checked against everything taken in the session
        plan += [kind for kind in ("misplaced", "foreign") if kind in extras]
        for step in plan:
            self.t = round(self.t, 2)
            if self._take() if step == "take" else self._extra(step):
                self.t += float(rng.uniform(MIN_GAP_S, 2.2))
        if self.hard and self.actions[-1].do in ("take", "place"):
            self.t = self.actions[-1].t + float(rng.uniform(0.2, 0.3))
        else:
            self.t += float(rng.uniform(0.3, 1.8))
        self._add("close")

    def _take(self) -> bool:
        rng = self.rng
        full = [n for n, items in self.ledger.shelves.items() if items and n not in self.cluttered]
        if not full:
            return False
        lane = full[int(rng.integers(len(full)))]
        n = len(self.ledger.shelves[lane])
        mode = self.lanes[lane].mode
        count = 1
        if mode != "tracked" and n >= 2 and rng.random() < 0.25:
            count = int(rng.integers(2, min(3, n) + 1))
        item = int(rng.integers(n - count + 1))
        if mode == "tracked":
            candidates = [i for i in range(n) if self._tracked_take_unique(lane, i)]
            if not candidates:
                return False
            item = candidates[int(rng.integers(len(candidates)))]
        self.ledger.take(self.t, lane, item, count)
        if count > 1:
            self._add("take", lane=lane, item=item, count=count)
        else:
            self._add("take", lane=lane, item=item)
        return True

    def _tracked_take_unique(self, lane: int, index: int) -> bool:
        """Whether taking item ``index`` keeps the lane's loss this session explainable by
        one number of items only: no subset of another size of what the lane held when
        the door opened weighs the same (within noise and drying)."""
        visit = self.ledger.visit
        assert visit is not None
        shelf = [it.weight0_g for it in self.ledger.shelves[lane]]
        gone = [tk.weight_g for tk in visit.taken if tk.lane == lane and tk.returned_to != lane]
        loss = [*gone, shelf[index]]
        held = shelf + gone
        target = sum(loss)
        tol = 8.0 + 0.01 * target
        for size in (len(loss) - 1, len(loss) + 1):
            if size < 1 or size > len(held):
                continue
            for combo in itertools.combinations(held, size):
                if abs(sum(combo) - target) <= tol:
                    return False
        return True

    def _extra(self, kind: str) -> bool:
        rng = self.rng
        visit = self.ledger.visit
        assert visit is not None
        out = [i for i, tk in enumerate(visit.taken) if tk.returned_to is None]
        # a gain on a lane that also lost items hides inside the loss: aim at untouched lanes
        touched = {tk.lane for tk in visit.taken} | self.cluttered
        if kind == "foreign":
            lanes = [n for n in self.lanes if n not in touched]
            if not lanes:
                return False
            lane = lanes[int(rng.integers(len(lanes)))]
            for _ in range(50):
                w = round(float(rng.uniform(60.0, 600.0)), 1)
                if self._unambiguous(lane, w, visit.taken, source=None):
                    self.ledger.place(self.t, lane, w)
                    self._add("place", lane=lane, weight_g=w)
                    self.cluttered.add(lane)
                    return True
            return False
        if not out:
            return False
        idx = out[int(rng.integers(len(out)))]
        taken = visit.taken[idx]
        if kind == "return":
            target = taken.lane
        else:
            others = [n for n in self.lanes if n != taken.lane and n not in touched]
            rng.shuffle(others)
            fits = [
                n
                for n in others
                if self._unambiguous(n, taken.weight_g, visit.taken, source=taken.lane)
                and self._no_cheaper_reading(n, taken, visit.taken)
            ]
            if not fits:
                return False
            target = fits[0]
        self.ledger.return_item(self.t, target, idx)
        self._add("return", lane=target, item=idx)
        if target != taken.lane:
            self.cluttered.add(target)
        return True

    def _unambiguous(
        self, lane: int, w: float, taken: Sequence[Taken], *, source: int | None
    ) -> bool:
        """Whether ``w`` grams arriving on ``lane`` can only be what it is (a misplaced
        item from lane ``source``, or a foreign object when ``source`` is None), not
        packs of the lane, a tracked item of it, an item taken from it, or an item of
        another lane still out of the cabinet."""
        spec = self.lanes[lane]
        m = AMBIGUITY_MARGIN_G
        if spec.mode == "unit":
            unit = spec.unit_weight_g or 0.0
            sd = spec.unit_weight_sd_g or 0.0
            k = max(1, round(w / unit))
            for kk in (k - 1, k, k + 1):
                if kk >= 1 and abs(w - kk * unit) <= 3.0 * sd * kk**0.5 + m:
                    return False
        if spec.mode == "tracked":
            weights = [it.weight0_g for it in self.ledger.shelves[lane]]
            if any(abs(w - x) <= m for x in weights):
                return False
        for tk in taken:
            close = abs(w - tk.weight_g) <= m
            if close and tk.lane == lane:
                return False
            if close and tk.returned_to is None and tk.lane != source:
                return False
        if source is None:
            # a foreign object must not look like anything a resident could have put back
            return not self._readable_as(w, lane, taken, truth=None)
        return True

    def _no_cheaper_reading(self, lane: int, moved: Taken, taken: Sequence[Taken]) -> bool:
        """Whether ``moved`` arriving on ``lane`` can only be read as itself. Billing must
        read an ambiguous gain the cheaper way, so a scenario with one would have no
        single right bill."""
        if self.lanes[moved.lane].mode == "weighed":
            elsewhere = any(
                self.lanes[tk.lane].mode == "weighed" and tk.lane != moved.lane
                for tk in taken
                if tk.returned_to != tk.lane
            )
            if elsewhere:  # produce of two weighed lanes on one lane reads either way
                return False
        return not self._readable_as(moved.weight_g, lane, taken, truth=moved)

    def _readable_as(
        self, w: float, lane: int, taken: Sequence[Taken], *, truth: Taken | None
    ) -> bool:
        """Whether ``w`` grams arriving on ``lane`` could be read as items taken this
        session other than ``truth``: pieces from up to two lanes (any number of packs
        of a unit lane, one to three recorded items of a tracked lane), plus any part of
        the produce taken from weighed lanes, as billing's matching may read it."""
        m = AMBIGUITY_MARGIN_G
        # what the scales see as lost: everything not put back on its own lane (a
        # misplaced item still shows as a loss on the lane it came from)
        out = [tk for tk in taken if tk.returned_to != tk.lane and tk.lane != lane]
        produce = sum(tk.weight_g for tk in out if self.lanes[tk.lane].mode == "weighed")
        pieces: dict[int, list[tuple[float, bool]]] = {}  # lane -> (weight, is the truth)
        for n in {tk.lane for tk in out}:
            spec = self.lanes[n]
            mine = [tk for tk in out if tk.lane == n]
            if spec.mode == "unit":
                u = float(spec.unit_weight_g or 0.0)
                is_truth = truth is not None and truth.lane == n
                pieces[n] = [(j * u, is_truth and j == 1) for j in range(1, len(mine) + 1)]
            elif spec.mode == "tracked":
                # billing may read the lane's loss as other items of the same count, so
                # any items the lane held when the door opened can be the piece
                held = [(it.weight0_g, False) for it in self.ledger.shelves[n]]
                held += [(tk.weight_g, tk is truth) for tk in mine]
                found: list[tuple[float, bool]] = []
                for size in range(1, min(3, len(mine)) + 1):
                    for combo in itertools.combinations(held, size):
                        only_truth = size == 1 and combo[0][1]
                        found.append((sum(x for x, _ in combo), only_truth))
                pieces[n] = found
        sums: list[float] = (
            [] if truth is not None and self.lanes[truth.lane].mode == "weighed" else [0.0]
        )
        lanes = list(pieces)
        for i, a in enumerate(lanes):
            for wa, ta in pieces[a]:
                if not ta:
                    sums.append(wa)
                for b in lanes[i + 1 :]:
                    sums.extend(wa + wb for wb, _ in pieces[b])
        return any(x - m <= w <= x + produce + m for x in sums)

    def _add(self, do: str, **kw: object) -> None:
        t = self.t = round(self.t, 2)
        if do == "unlock":
            self.ledger.unlock(t, str(kw["resident"]))
        elif do == "open":
            self.ledger.open(t)
        elif do == "close":
            self.ledger.close(t)
        self.actions.append(Action(t=t, do=do, **kw))  # type: ignore[arg-type]
