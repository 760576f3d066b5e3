"""Billing rules: turn the change of weight on each lane into bill lines and flags.

Pure, deterministic functions; no I/O, no clock, no global state. Units: weights in
grams (g), money in integer fen (1 CNY = 100 fen).

The contract (``DESIGN.md``, "Billing rules") with **never overcharge** above all:

* ``delta = after_g - before_g`` per lane. ``|delta|`` at or below the lane's
  no-change threshold ``max(min_change_g, k_sigma * sigma_g)`` is no change.
* ``unit`` lanes: the count ``n`` fits when
  ``|loss - n*u| <= max(tolerance_floor_g, k_count * sqrt(n*sd**2 + sigma**2))``.
  One fit: bill it. Several fits: bill the lowest, ``needs_review``. No fit: bill the
  lower neighbouring count (the largest ``n`` with ``n*u - tol(n) <= loss``),
  ``needs_review``.
* ``tracked`` lanes: a subset ``S`` of the recorded weights fits when
  ``|loss - sum(S)| <= max(tolerance_floor_g, k_sigma * sigma) + item_allowance * sum(S)``.
  Found exactly (dynamic programming over sums at 0.1 g resolution, bit-parallel).
  Fits of one size only: bill that size, choosing the subset whose sum is closest to the
  loss. Fits of several sizes: bill the smallest, ``needs_review``. No fit: bill
  ``min(k_lo, k_hi)`` items, ``needs_review``, where ``k_lo`` is the fewest items whose
  heaviest choice reaches the loss (at least that many left, if the loss is items) and
  ``k_hi`` the most items whose lightest choice stays within the loss (at most that many).
* ``weighed`` lanes: billed weight = loss - ``k_margin * sigma`` (the measurement can only
  make us charge less), truncated to 0.1 g; ``amount = price_per_kg * dg // 10000``
  (exact integers). A loss below ``min_weighed_g`` is no sale.
* A gain on a lane is first explained as a misplaced return (``misplaced_return``) of
  items taken from other lanes in this session: packs of a unit lane, recorded items of
  a tracked lane, produce of a weighed lane, from up to ``max_return_sources`` lanes
  per gain. Among all consistent assignments of gains the one that charges the least is
  billed (depth-first search, cheapest first, branch and bound, at most
  ``max_search_nodes`` explanations tried, else ``needs_review``). An unexplained gain is
  a ``foreign_object``; items taken are still charged.
  Returns are matched with the worst-case (linear) tolerance
  ``max(floor, k*(sigma_gain + sum(j*sd) + sum(sigma_weighed))) + item_allowance *
  tracked_weight``, because a missed return is an overcharge. A unit lane may give back
  up to the most packs its loss can be (each pack ``k*sd`` light) and then bills
  ``max(0, count - returned)``; a tracked lane may give back any recorded items that some
  fitting take contains, and bills the fewest items the rest of its loss can be; produce
  is refunded up to the most the gain can hold (``rest + tol``), dearest first.
* ``faulted`` lanes (or an unreadable level) get no line and raise ``sensor_fault``;
  their evidence is kept.

Limits (the scales cannot show these; an operator sees the flags): a return onto a lane
that itself lost items, or a foreign object left on a lane whose items went elsewhere,
hides a gain inside a loss; items of a faulted lane found elsewhere are foreign
objects; produce of two weighed lanes on one lane is refunded dearest first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from edge.errors import EdgeError
from edge.model import Lane

__all__ = [
    "FLAG_FOREIGN_OBJECT",
    "FLAG_MISPLACED_RETURN",
    "FLAG_NEEDS_REVIEW",
    "FLAG_SENSOR_FAULT",
    "Bill",
    "BillLine",
    "BillingError",
    "BillingPolicy",
    "Evidence",
    "LaneReading",
    "bill_session",
]

FLAG_MISPLACED_RETURN = "misplaced_return"
FLAG_FOREIGN_OBJECT = "foreign_object"
FLAG_NEEDS_REVIEW = "needs_review"
FLAG_SENSOR_FAULT = "sensor_fault"

#: float slack for comparisons of weights (g), so a value exactly on a tolerance fits
_EPS_G = 1e-6
#: tracked weights are matched at this resolution: 10 steps per gram (0.1 g)
_Q_PER_G = 10
#: at most this many candidate item subsets per source lane when explaining one gain
_MAX_PIECES = 256
#: at most this many candidate explanations of one gain; beyond it, needs_review
_MAX_EXPLANATIONS = 5_000
#: search nodes allowed when enumerating candidate item subsets for one gain
_MAX_PIECE_NODES = 20_000
#: iterations allowed when counting units on one lane (guards absurd configurations)
_MAX_UNIT_STEPS = 1_000_000


class BillingError(EdgeError, ValueError):
    """A lane, reading or policy cannot be billed; the message names the lane and field."""


@dataclass(frozen=True, slots=True)
class BillingPolicy:
    """Tolerances of the billing rules. Weights in grams."""

    #: how many standard deviations a count may be off and still explain a loss (-)
    k_sigma: float = 3.0
    #: unit lanes: how many standard deviations (pack spread and noise) a count may be off
    #: and still fit (-). Wider than k_sigma: packs do come 3 sd light, and a count that
    #: fits only that far is still far likelier than its neighbours; where two counts fit,
    #: the lower is billed and the bill is flagged, so this never raises a bill.
    k_count: float = 4.0
    #: weighed lanes: the billed weight is the loss less this many standard deviations
    #: (-). The level uncertainty is calibrated (measured error / claimed sigma has sd
    #: ~1; scripts/bench_sigma.py), so 3.5 keeps the chance of billing a weighed line
    #: above the truth near 1 in 4,000, and then by a fraction of a gram.
    k_margin: float = 3.5
    #: |delta| at or below max(this, k_sigma*sigma) is "no change" (g)
    min_change_g: float = 8.0
    #: smallest sale on a weighed lane (g)
    min_weighed_g: float = 5.0
    #: smallest tolerance used when matching a weight to items (g)
    tolerance_floor_g: float = 2.0
    #: tracked items: share of its recorded weight an item may have gained or lost since
    #: stocking (drying, handling, recording error) (fraction, 0.005 = 0.5 %)
    item_allowance: float = 0.005
    #: one gain may be explained by items from at most this many other lanes (lanes);
    #: 0 disables misplaced-return matching (every gain is a foreign object)
    max_return_sources: int = 2
    #: nodes of the misplaced-return assignment search; beyond it the cheapest
    #: assignment found so far is used and the bill is flagged needs_review (nodes)
    max_search_nodes: int = 2_000

    def __post_init__(self) -> None:
        checks: tuple[tuple[str, bool], ...] = (
            ("k_sigma", math.isfinite(self.k_sigma) and self.k_sigma > 0),
            ("k_count", math.isfinite(self.k_count) and self.k_count > 0),
            ("k_margin", math.isfinite(self.k_margin) and self.k_margin >= 0),
            ("min_change_g", math.isfinite(self.min_change_g) and self.min_change_g >= 0),
            ("min_weighed_g", math.isfinite(self.min_weighed_g) and self.min_weighed_g >= 0),
            (
                "tolerance_floor_g",
                math.isfinite(self.tolerance_floor_g) and self.tolerance_floor_g >= 0,
            ),
            ("item_allowance", 0 <= self.item_allowance < 0.5),
            ("max_return_sources", self.max_return_sources >= 0),
            ("max_search_nodes", self.max_search_nodes >= 1),
        )
        for name, ok in checks:
            if not ok:
                raise BillingError(
                    f"billing policy: {name} = {getattr(self, name)!r} is out of range"
                )

    def no_change_g(self, sigma_g: float) -> float:
        """The no-change threshold (g) of a lane whose delta has standard deviation ``sigma_g``."""
        return max(self.min_change_g, self.k_sigma * sigma_g)


@dataclass(frozen=True, slots=True)
class LaneReading:
    """What the weighing pipeline saw on one lane during one session."""

    lane: Lane
    before_g: float  # stable level before the door opened (g)
    after_g: float  # settled level after the door closed (g)
    sigma_g: float  # standard deviation of after_g - before_g from sensor noise (g)
    faulted: bool = False  # the lane's channel had a sensor fault during the session


@dataclass(frozen=True, slots=True)
class BillLine:
    """One lane's sale. ``weight_g`` is the weight that left the lane and was kept (g);
    on weighed lanes it is the billed weight and ``unit_price_fen`` is fen per kg."""

    lane: int
    sku: str
    qty: int
    weight_g: float
    unit_price_fen: int
    amount_fen: int
    items_g: tuple[float, ...] = ()  # tracked lanes: the recorded weights of the items judged taken


@dataclass(frozen=True, slots=True)
class Evidence:
    """The levels a lane's bill was computed from (g)."""

    lane: int
    before_g: float
    after_g: float
    delta_g: float


@dataclass(frozen=True, slots=True)
class Bill:
    """The outcome of one session. Money in fen, weights in grams."""

    lines: tuple[BillLine, ...]
    total_fen: int
    flags: tuple[str, ...]  # sorted, unique
    evidence: tuple[Evidence, ...]  # every lane whose level changed, by lane
    #: lane -> weights (g) of misplaced items now lying on that lane (tracked items keep
    #: their recorded weight, so the store can move them in its stock)
    returned_to: dict[int, tuple[float, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``lines``, ``total_fen``, ``flags`` and ``evidence`` as in ``docs/bills.md``.

        Weights are rounded to 0.1 g; an evidence ``delta_g`` is the difference of the
        rounded levels, so a receipt adds up.
        """
        evidence = []
        for ev in self.evidence:
            before, after = _r1(ev.before_g), _r1(ev.after_g)
            evidence.append(
                {
                    "lane": ev.lane,
                    "before_g": before,
                    "after_g": after,
                    "delta_g": _r1(after - before),
                }
            )
        return {
            "lines": [
                {
                    "lane": ln.lane,
                    "sku": ln.sku,
                    "qty": ln.qty,
                    "weight_g": _r1(ln.weight_g),
                    "unit_price_fen": ln.unit_price_fen,
                    "amount_fen": ln.amount_fen,
                }
                for ln in self.lines
            ],
            "total_fen": self.total_fen,
            "flags": list(self.flags),
            "evidence": evidence,
        }


def _r1(x: float) -> float:
    """Round to 0.1 g, without a negative zero."""
    return round(x, 1) + 0.0


# ---------------------------------------------------------------------------------------
# unit lanes


def _count_units(
    loss: float, u: float, sd: float, sigma: float, policy: BillingPolicy
) -> tuple[int, bool]:
    """(count to bill, needs_review) for a unit lane that lost ``loss`` g."""
    k, floor = policy.k_count, policy.tolerance_floor_g
    sd2, s2 = sd * sd, sigma * sigma

    def tol(n: int) -> float:
        return max(floor, k * math.sqrt(n * sd2 + s2))

    # No n below `start` can fit: n*u + tol(n) <= n*(u + k*sd) + floor + k*sigma < loss.
    start = max(1, int((loss - floor - k * sigma) // (u + k * sd)))
    # n*u - k*sd*sqrt(n) is nondecreasing from n_mono on; used to stop the scan exactly.
    n_mono = math.ceil((k * sd / (2 * u)) ** 2) if sd > 0 else 0
    n_low = start - 1  # every n < start has n*u <= loss, so n*u - tol(n) <= loss
    fits: list[int] = []
    n = start
    while True:
        t = tol(n)
        if n * u - t <= loss + _EPS_G:
            n_low = n
            if loss <= n * u + t + _EPS_G:
                fits.append(n)
        elif n >= n_mono and n * u - (floor + k * sigma + k * sd * math.sqrt(n)) > loss:
            break
        n += 1
        if n - start > _MAX_UNIT_STEPS:
            raise BillingError(f"unit lane: loss {loss:.1f} g is absurd for unit weight {u} g")
    if len(fits) == 1:
        return fits[0], False
    if fits:
        return fits[0], True
    return n_low, True


def _most_units(loss: float, u: float, sd: float, sigma: float, policy: BillingPolicy) -> int:
    """The most packs a loss of ``loss`` g can be, every pack and the noise at the worst
    case: max n with ``n*u - max(floor, k*(sigma + n*sd)) <= loss``. Packs found on other
    lanes are matched against this bound, so a count billed low does not hide a return."""
    k, floor = policy.k_sigma, policy.tolerance_floor_g
    by_floor = math.floor((loss + floor) / u + 1e-9)
    slope = max(u - k * sd, u / 4)  # packs spread wider than u/k: keep the bound finite
    by_spread = math.floor((loss + k * sigma) / slope + 1e-9)
    return max(0, by_floor, by_spread)


# ---------------------------------------------------------------------------------------
# tracked lanes: exact subset sums over 0.1 g steps, one big-int bitset per subset size


def _closest_bit(bits: int, target: float, prefer_low: bool) -> int:
    """The set bit of ``bits`` nearest to ``target`` (ties: lower if ``prefer_low``)."""
    tf = max(-1, math.floor(target))
    below = bits & ((1 << (tf + 1)) - 1) if tf >= 0 else 0
    above = bits >> (tf + 1)
    a = below.bit_length() - 1 if below else -1
    b = (above & -above).bit_length() - 1 + tf + 1 if above else -1
    if a < 0:
        return b
    if b < 0:
        return a
    da, db = target - a, b - target
    if da < db or (da == db and prefer_low):
        return a
    return b


def _subset_dp(
    q: Sequence[int], lo: int, hi: int, target: float, kmin: int, kmax: int, prefer_low: bool
) -> dict[int, tuple[int, ...]]:
    """For each size k in [kmin, kmax], the indices of a k-subset of ``q`` whose sum lies
    in [lo, hi] and is nearest to ``target`` (sizes with no such subset are absent)."""
    mask = (1 << (hi + 1)) - 1
    reach = [0] * (kmax + 1)
    reach[0] = 1
    hist: list[list[int]] = []
    for i, w in enumerate(q):
        hist.append(reach.copy())
        for k in range(min(i + 1, kmax), 0, -1):
            prev = reach[k - 1]
            if prev:
                reach[k] |= (prev << w) & mask
    keep = ~((1 << lo) - 1) if lo > 0 else -1
    out: dict[int, tuple[int, ...]] = {}
    for k in range(kmin, kmax + 1):
        bits = reach[k] & keep
        if not bits:
            continue
        s = _closest_bit(bits, target, prefer_low)
        idx: list[int] = []
        kk = k
        for i in range(len(q) - 1, -1, -1):
            if kk == 0:
                break
            if (hist[i][kk] >> s) & 1:
                continue
            idx.append(i)
            kk -= 1
            s -= q[i]
        out[k] = tuple(reversed(idx))
    return out


def _subset_search(
    q: Sequence[int], lo: int, hi: int, target: float, kmin: int, kmax: int
) -> dict[int, tuple[int, ...]]:
    """Like ``_subset_dp``, solving for the complement when that is cheaper (large takes)."""
    m = len(q)
    kmin, kmax = max(kmin, 0), min(kmax, m)
    total = sum(q)
    lo, hi = max(lo, 0), min(hi, total)
    if kmin > kmax or lo > hi:
        return {}
    direct = (hi + 64) * (kmax + 1)
    comp = (total - lo + 64) * (m - kmin + 1)
    if comp < direct:
        res = _subset_dp(q, total - hi, total - lo, total - target, m - kmax, m - kmin, False)
        out: dict[int, tuple[int, ...]] = {}
        for c, sub in res.items():
            taken = set(sub)
            out[m - c] = tuple(i for i in range(m) if i not in taken)
        return out
    return _subset_dp(q, lo, hi, target, kmin, kmax, True)


def _size_bounds(qs: Sequence[int], lo: int, hi: int) -> tuple[int | None, int]:
    """(k_lo, k_hi): the fewest items whose heaviest choice reaches ``lo`` (None if even
    all do not) and the most items whose lightest choice stays within ``hi``."""
    srt = sorted(qs)
    k_lo: int | None = None
    acc = 0
    if lo <= 0:
        k_lo = 0
    else:
        for k, w in enumerate(reversed(srt), start=1):
            acc += w
            if acc >= lo:
                k_lo = k
                break
    k_hi, acc = 0, 0
    for k, w in enumerate(srt, start=1):
        acc += w
        if acc > hi:
            break
        k_hi = k
    return k_lo, k_hi


def _fit_subsets(
    q: Sequence[int], avail: Sequence[int], lo: int, hi: int, target: float
) -> dict[int, tuple[int, ...]]:
    """Fitting subsets of the items ``avail`` (indices into ``q``), best per size."""
    sub = [q[i] for i in avail]
    k_lo, k_hi = _size_bounds(sub, lo, hi)
    if k_lo is None or k_lo > k_hi:
        return {}
    res = _subset_search(sub, lo, hi, target, k_lo, k_hi)
    return {k: tuple(avail[j] for j in idx) for k, idx in res.items()}


@dataclass(slots=True)
class _Tracked:
    """A tracked lane that lost weight."""

    reading: LaneReading
    loss: float
    stock: tuple[float, ...]
    q: tuple[int, ...]
    lo: int  # fit window of the taken items' sum (0.1 g steps)
    hi: int
    fitted: bool  # some subset fits the loss
    chosen: tuple[int, ...]  # stock indices of the items judged taken (before returns)
    review: bool
    k_hi: int  # the most items that can have left the lane
    cache: dict[frozenset[int], tuple[tuple[int, ...], bool] | None] = field(default_factory=dict)

    def resolve(self, returned: frozenset[int]) -> tuple[tuple[int, ...], bool] | None:
        """The items kept by the resident when the items ``returned`` were put on other
        lanes, with an ambiguity flag; None if no fitting take contains them."""
        if not returned:
            return self.chosen, self.review
        if returned in self.cache:
            return self.cache[returned]
        res: tuple[tuple[int, ...], bool] | None
        if not self.fitted:
            # No take fits the loss: the lane bills its conservative count less the
            # items found elsewhere (the least of the consistent interpretations).
            left = max(0, len(self.chosen) - len(returned))
            res = (tuple(i for i in self.chosen if i not in returned)[:left], False)
        else:
            shift = sum(self.q[i] for i in returned)
            avail = [i for i in range(len(self.q)) if i not in returned]
            fits = _fit_subsets(
                self.q, avail, self.lo - shift, self.hi - shift, self.loss * _Q_PER_G - shift
            )
            res = (fits[min(fits)], len(fits) > 1) if fits else None
        self.cache[returned] = res
        return res


def _quantize(w: float) -> int:
    return math.floor(w * _Q_PER_G + 0.5)


def _estimate_tracked(
    reading: LaneReading, loss: float, stock: Sequence[float], policy: BillingPolicy
) -> _Tracked:
    for i, w in enumerate(stock):
        if not (math.isfinite(w) and w > 0):
            raise BillingError(
                f"lane {reading.lane.lane}: tracked_stock[{i}] = {w!r} is not a weight"
            )
    q = tuple(_quantize(w) for w in stock)
    base = max(policy.tolerance_floor_g, policy.k_sigma * reading.sigma_g)
    frac = policy.item_allowance
    lo = math.ceil((loss - base) / (1 + frac) * _Q_PER_G - _EPS_G)
    hi = math.floor((loss + base) / (1 - frac) * _Q_PER_G + _EPS_G)
    target = loss * _Q_PER_G
    fits = _fit_subsets(q, range(len(q)), lo, hi, target)
    k_lo, k_hi = _size_bounds(q, lo, hi)
    if fits:
        k = min(fits)
        return _Tracked(reading, loss, tuple(stock), q, lo, hi, True, fits[k], len(fits) > 1, k_hi)
    k_lo_n = len(q) if k_lo is None else k_lo
    c = min(k_lo_n, k_hi)
    chosen: tuple[int, ...] = ()
    if c > 0:
        chosen = _subset_search(q, 0, sum(q), target, c, c)[c]
    return _Tracked(reading, loss, tuple(stock), q, lo, hi, False, chosen, True, max(k_lo_n, k_hi))


# ---------------------------------------------------------------------------------------
# weighed lanes


def _weighed_sale(
    remaining_g: float, sigma: float, price_per_kg: int, policy: BillingPolicy
) -> tuple[int, int]:
    """(billed weight in 0.1 g steps, amount in fen) for ``remaining_g`` g kept."""
    if remaining_g < policy.min_weighed_g:
        return 0, 0
    billed = remaining_g - policy.k_margin * sigma
    if billed <= 0:
        return 0, 0
    dg = math.floor(billed * _Q_PER_G + 1e-9)
    return dg, price_per_kg * dg // (1000 * _Q_PER_G)


# ---------------------------------------------------------------------------------------
# lanes that lost weight, and misplaced returns


@dataclass(slots=True)
class _Unit:
    """A unit lane that lost weight."""

    reading: LaneReading
    loss: float
    count: int  # packs billed before returns
    review: bool
    most: int  # the most packs that can have left (worst-case tolerance): returns may use them


@dataclass(slots=True)
class _Weighed:
    reading: LaneReading
    loss: float


_Source = _Unit | _Tracked | _Weighed


@dataclass(frozen=True, slots=True)
class _Piece:
    """Items of one source lane lying on a gained lane."""

    source: int  # index into the sources
    units: int = 0  # unit lanes: how many packs
    items: tuple[int, ...] = ()  # tracked lanes: stock indices
    weighed: bool = False  # weighed lanes: some produce (the amount follows the gain)


@dataclass(frozen=True, slots=True)
class _State:
    units: tuple[int, ...]  # per source: packs returned
    items: tuple[frozenset[int], ...]  # per source: tracked items returned
    refund: tuple[float, ...]  # per source: weighed grams refunded (generously)
    attributed: tuple[float, ...]  # per source: estimated grams found on other lanes
    surely: tuple[float, ...]  # per source: weighed grams surely on other lanes (at least)


@dataclass(frozen=True, slots=True)
class _Match:
    lane: int
    weights: tuple[float, ...]


def _gain_slack(
    gain: float, sigma: float, sources: Sequence[_Source], policy: BillingPolicy
) -> float:
    """A generous bound on any explanation's tolerance (g), used only for pruning."""
    lin = sigma
    for s in sources:
        if isinstance(s, _Unit):
            lin += (s.reading.lane.unit_weight_sd_g or 0.0) * s.most
        elif isinstance(s, _Weighed):
            lin += s.reading.sigma_g
    return (
        max(policy.tolerance_floor_g, policy.k_sigma * lin) + 2 * policy.item_allowance * gain + 1.0
    )


@dataclass(slots=True)
class _Cut:
    """Set when a candidate enumeration hit one of its limits."""

    cut: bool = False


def _subsets_between(
    items: Sequence[tuple[float, int]], wlo: float, whi: float, max_size: int, cut: _Cut
) -> list[tuple[int, ...]]:
    """Index tuples of subsets of ``items`` (weight, index; sorted by weight) with
    1..max_size members and total weight in [wlo, whi]; equal weights deduplicated."""
    out: list[tuple[int, ...]] = []
    nodes = 0
    chosen: list[int] = []

    def rec(start: int, total: float) -> None:
        nonlocal nodes
        nodes += 1
        if chosen and total >= wlo:
            out.append(tuple(sorted(chosen)))
        if len(chosen) >= max_size:
            return
        prev = math.nan
        for j in range(start, len(items)):
            if len(out) >= _MAX_PIECES or nodes >= _MAX_PIECE_NODES:
                cut.cut = True
                return
            w, idx = items[j]
            if total + w > whi:
                break
            if w == prev:
                continue
            prev = w
            chosen.append(idx)
            rec(j + 1, total + w)
            chosen.pop()

    rec(0, 0.0)
    return out


def _pieces(
    si: int, src: _Source, state: _State, wlo: float, whi: float, cut: _Cut
) -> list[_Piece]:
    """Fixed-weight pieces (unit packs, tracked items) of one source within [wlo, whi] g."""
    if isinstance(src, _Unit):
        u = float(src.reading.lane.unit_weight_g or 0.0)
        avail = src.most - state.units[si]
        j0 = max(1, math.ceil(wlo / u - 1e-9))
        j1 = min(avail, math.floor(whi / u + 1e-9))
        return [_Piece(si, units=j) for j in range(j0, j1 + 1)]
    if isinstance(src, _Tracked):
        used = state.items[si]
        items = sorted((w, i) for i, w in enumerate(src.stock) if i not in used)
        max_size = src.k_hi - len(used)
        subsets = _subsets_between(items, wlo, whi, max_size, cut)
        return [_Piece(si, items=s) for s in subsets]
    return []


def _explanations(
    gain: float, sigma: float, sources: Sequence[_Source], state: _State, policy: BillingPolicy
) -> tuple[list[tuple[_Piece, ...]], bool]:
    """Candidate explanations of one gain (checked exactly by ``_apply``), and whether
    the candidates were cut short."""
    slack = _gain_slack(gain, sigma, sources, policy)
    live: list[int] = []
    for si, s in enumerate(sources):
        if isinstance(s, _Unit):
            if s.most - state.units[si] > 0:
                live.append(si)
        elif isinstance(s, _Tracked) or s.loss - state.surely[si] > _EPS_G:
            live.append(si)
    out: list[tuple[_Piece, ...]] = []
    cut = _Cut()

    def order(si: int) -> tuple[int, int]:
        # the last fixed source is searched with the tight window: make it the one with
        # the most item subsets (tracked lanes, the most items)
        s = sources[si]
        return (1, len(s.stock) - len(state.items[si])) if isinstance(s, _Tracked) else (0, 0)

    for size in range(1, min(policy.max_return_sources, len(live)) + 1):
        for combo in combinations(live, size):
            fixed = sorted((si for si in combo if not isinstance(sources[si], _Weighed)), key=order)
            weighed = tuple(_Piece(si, weighed=True) for si in combo if si not in fixed)
            _combine(gain, slack, fixed, weighed, sources, state, 0, (), 0.0, out, cut)
            if len(out) >= _MAX_EXPLANATIONS:
                return out[:_MAX_EXPLANATIONS], True
    return out, cut.cut


def _combine(
    gain: float,
    slack: float,
    fixed: Sequence[int],
    weighed: tuple[_Piece, ...],
    sources: Sequence[_Source],
    state: _State,
    pos: int,
    acc: tuple[_Piece, ...],
    weight: float,
    out: list[tuple[_Piece, ...]],
    cut: _Cut,
) -> None:
    """Append to ``out`` every choice of one piece per fixed source (from ``pos`` on)
    whose weights could add up to ``gain`` together with the produce of ``weighed``."""
    if len(out) >= _MAX_EXPLANATIONS:
        return
    if pos == len(fixed):
        out.append(acc + weighed)
        return
    si = fixed[pos]
    if weighed:  # the produce takes the rest, so the fixed part is at most about the gain
        wlo, whi = 0.0, gain - weight + slack
    elif pos == len(fixed) - 1:  # the last fixed piece must be near the rest of the gain
        wlo, whi = gain - weight - slack, gain - weight + slack
    else:
        wlo, whi = 0.0, gain - weight + slack
    for p in _pieces(si, sources[si], state, wlo, whi, cut):
        w = _piece_weight(p, sources)
        _combine(
            gain, slack, fixed, weighed, sources, state, pos + 1, (*acc, p), weight + w, out, cut
        )


def _piece_weight(p: _Piece, sources: Sequence[_Source]) -> float:
    """Nominal weight (g) of a fixed piece."""
    src = sources[p.source]
    if isinstance(src, _Unit):
        return p.units * float(src.reading.lane.unit_weight_g or 0.0)
    if isinstance(src, _Tracked):
        return sum(src.stock[i] for i in p.items)
    return 0.0


def _apply(
    pieces: tuple[_Piece, ...],
    lane: int,
    gain: float,
    sigma: float,
    sources: Sequence[_Source],
    state: _State,
    policy: BillingPolicy,
) -> tuple[_State, _Match] | None:
    """The state after explaining ``gain`` by ``pieces``, or None if they do not fit."""
    k = policy.k_sigma
    fixed = tracked_w = 0.0
    lin = sigma
    weighed: list[int] = []
    for p in pieces:
        src = sources[p.source]
        if isinstance(src, _Unit):
            fixed += _piece_weight(p, sources)
            lin += p.units * (src.reading.lane.unit_weight_sd_g or 0.0)
        elif isinstance(src, _Tracked):
            w = _piece_weight(p, sources)
            fixed += w
            tracked_w += w
        else:
            lin += src.reading.sigma_g
            weighed.append(p.source)
    tol = max(policy.tolerance_floor_g, k * lin) + policy.item_allowance * tracked_w
    rest = gain - fixed
    if weighed and fixed > 0:
        # produce joins a match only for weight the items leave unexplained: the same
        # items without produce are a candidate of their own
        lin_fixed = lin - sum(sources[si].reading.sigma_g for si in weighed)
        tol_fixed = max(policy.tolerance_floor_g, k * lin_fixed) + policy.item_allowance * tracked_w
        if rest <= tol_fixed + _EPS_G:
            return None
    units = list(state.units)
    items = list(state.items)
    refund = list(state.refund)
    attributed = list(state.attributed)
    surely = list(state.surely)
    produce = 0.0
    if weighed:
        # room: the loss less the least produce earlier gains can have held
        cap = sum(sources[si].loss - surely[si] for si in weighed)
        if not (-tol - _EPS_G <= rest <= cap + tol + _EPS_G):
            return None
        # Refund the most produce the gain can hold (rest + tol), so that noise and pack
        # spread cannot overcharge it; the dearest produce is refunded first. Capacity is
        # checked against the least produce earlier gains surely held (rest - tol).
        produce = min(max(rest, 0.0), cap)
        # the sale margin of each weighed lane already covers its own sigma: refund
        # the gain's and the packs' uncertainty on top, not the produce's twice
        sigma_w = sum(sources[si].reading.sigma_g for si in weighed)
        extra = k * (lin - sigma_w) + policy.item_allowance * tracked_w
        give, est, sure = max(0.0, rest + extra), produce, max(0.0, rest - tol)
        order = sorted(
            weighed, key=lambda si: (-(sources[si].reading.lane.price_fen_per_kg or 0), si)
        )
        for si in order:
            loss = sources[si].loss
            g_i = min(loss - refund[si], give)
            e_i = min(loss - attributed[si], est)
            s_i = min(loss - surely[si], sure)
            refund[si] += g_i
            attributed[si] += e_i
            surely[si] += s_i
            give, est, sure = give - g_i, est - e_i, sure - s_i
    elif abs(rest) > tol + _EPS_G:
        return None
    # the packs share what the gain leaves after tracked items and produce, by nominal weight
    unit_w = fixed - tracked_w
    scale = (gain - tracked_w - produce) / unit_w if unit_w > 0 else 0.0
    weights: list[float] = []
    for p in pieces:
        src = sources[p.source]
        if isinstance(src, _Unit):
            units[p.source] += p.units
            pack = scale * float(src.reading.lane.unit_weight_g or 0.0)
            attributed[p.source] += pack * p.units
            weights.extend([pack] * p.units)
        elif isinstance(src, _Tracked):
            new = items[p.source] | frozenset(p.items)
            if src.resolve(new) is None:
                return None
            items[p.source] = new
            item_w = [src.stock[i] for i in p.items]
            attributed[p.source] += sum(item_w)
            weights.extend(item_w)
    if produce > 0:
        weights.append(produce)
    new_state = _State(tuple(units), tuple(items), tuple(refund), tuple(attributed), tuple(surely))
    return new_state, _Match(lane, tuple(weights))


def _charge(sources: Sequence[_Source], state: _State, policy: BillingPolicy) -> int:
    """Total fen the source lanes would bill in ``state``."""
    total = 0
    for si, s in enumerate(sources):
        price = s.reading.lane.price_fen or 0
        if isinstance(s, _Unit):
            total += max(0, s.count - state.units[si]) * price
        elif isinstance(s, _Tracked):
            res = s.resolve(state.items[si])
            total += len(res[0]) * price if res is not None else 0
        else:
            per_kg = s.reading.lane.price_fen_per_kg or 0
            total += _weighed_sale(s.loss - state.refund[si], s.reading.sigma_g, per_kg, policy)[1]
    return total


@dataclass(slots=True)
class _Search:
    best_key: tuple[int, int, int] | None = None
    best_state: _State | None = None
    best_matches: tuple[_Match | None, ...] = ()
    nodes: int = 0
    stopped: bool = False  # the node budget ran out: remaining gains are foreign objects
    cut: bool = False  # some gain had more candidate explanations than were tried


def _most_refund(pieces: tuple[_Piece, ...], gain: float, sources: Sequence[_Source]) -> int:
    """An upper bound (fen) on what explaining ``gain`` by ``pieces`` can take off the
    bill, whatever was matched before."""
    fen = 0
    for p in pieces:
        lane = sources[p.source].reading.lane
        if p.weighed:
            fen += (lane.price_fen_per_kg or 0) * math.ceil(gain + 1) // 1000 + 1
        else:
            fen += (p.units + len(p.items)) * (lane.price_fen or 0)
    return fen


def _match_gains(
    gains: Sequence[tuple[int, float, float]],
    sources: Sequence[_Source],
    policy: BillingPolicy,
) -> tuple[_State, tuple[_Match | None, ...], bool]:
    """Assign gains (lane, g, sigma) to returns so the charge is least (then the fewest
    foreign objects, then the fewest pieces; ties: the first found).

    Depth-first over the gains, cheapest children first, pruned by an upper bound on
    what the remaining gains can still take off. Returns the final state, per gain its
    match (None = foreign object), and whether the search was cut short (then the bill
    needs review)."""
    n = len(sources)
    start = _State((0,) * n, (frozenset(),) * n, (0.0,) * n, (0.0,) * n, (0.0,) * n)
    search = _Search()
    # bound[i]: the most fen gains i.. can take off (candidates only shrink with depth)
    bound = [0] * (len(gains) + 1)
    if policy.max_return_sources > 0:
        for gi in range(len(gains) - 1, -1, -1):
            _, g, sigma = gains[gi]
            expls, _cut = _explanations(g, sigma, sources, start, policy)
            best = max((_most_refund(e, g, sources) for e in expls), default=0)
            bound[gi] = bound[gi + 1] + best

    def dfs(
        gi: int, state: _State, charge: int, matches: tuple[_Match | None, ...], pieces: int
    ) -> None:
        if search.best_key is not None and charge - bound[gi] > search.best_key[0]:
            return
        if gi == len(gains):
            key = (charge, sum(m is None for m in matches), pieces)
            if search.best_key is None or key < search.best_key:
                search.best_key, search.best_state, search.best_matches = key, state, matches
            return
        lane, g, sigma = gains[gi]
        children: list[tuple[int, int, _State, _Match]] = []
        if policy.max_return_sources > 0 and not search.stopped:
            explanations, cut = _explanations(g, sigma, sources, state, policy)
            search.cut |= cut
            for expl in explanations:
                search.nodes += 1
                if search.nodes > policy.max_search_nodes:
                    search.stopped = True
                    break
                res = _apply(expl, lane, g, sigma, sources, state, policy)
                if res is not None:
                    children.append((_charge(sources, res[0], policy), len(expl), *res))
        children.sort(key=lambda c: (c[0], c[1]))  # stable: ties keep the enumeration order
        for child_charge, size, child, match in children:
            dfs(gi + 1, child, child_charge, (*matches, match), pieces + size)
        dfs(gi + 1, state, charge, (*matches, None), pieces)  # the gain as a foreign object

    dfs(0, start, _charge(sources, start, policy), (), 0)
    assert search.best_state is not None
    return search.best_state, search.best_matches, search.stopped or search.cut


# ---------------------------------------------------------------------------------------
# the session


def _require(lane: Lane, name: str, ok: bool) -> None:
    if not ok:
        raise BillingError(
            f"lane {lane.lane} ({lane.sku}, {lane.mode}): "
            f"{name} = {getattr(lane, name)!r} is missing or invalid"
        )


def _check_lane(lane: Lane) -> None:
    if lane.mode == "unit":
        u, sd = lane.unit_weight_g, lane.unit_weight_sd_g
        _require(lane, "unit_weight_g", u is not None and math.isfinite(u) and u > 0)
        _require(lane, "unit_weight_sd_g", sd is None or (math.isfinite(sd) and sd >= 0))
    if lane.mode in ("unit", "tracked"):
        _require(lane, "price_fen", lane.price_fen is not None and lane.price_fen >= 0)
    elif lane.mode == "weighed":
        p = lane.price_fen_per_kg
        _require(lane, "price_fen_per_kg", p is not None and p >= 0)
    else:
        raise BillingError(
            f"lane {lane.lane}: mode = {lane.mode!r} is not unit, tracked or weighed"
        )


def bill_session(
    readings: Sequence[LaneReading],
    tracked_stock: Mapping[int, Sequence[float]],
    policy: BillingPolicy = BillingPolicy(),
) -> Bill:
    """Bill one resident session from the per-lane levels before and after (g).

    ``tracked_stock[lane]`` lists the recorded weights (g) of the items on each tracked
    lane before the session (a missing lane has none). Returns the bill; the caller
    removes each tracked line's ``items_g`` from its stock and records ``returned_to``.
    Raises ``BillingError`` for a reading or lane that cannot be billed (bad sigma,
    duplicate lane, a changed lane without its weights or price).
    """
    seen: set[int] = set()
    flags: set[str] = set()
    evidence: list[Evidence] = []
    sources: list[_Source] = []
    gains: list[tuple[int, float, float]] = []
    for r in sorted(readings, key=lambda r: r.lane.lane):
        lane = r.lane
        if lane.lane in seen:
            raise BillingError(f"lane {lane.lane}: more than one reading")
        seen.add(lane.lane)
        delta = r.after_g - r.before_g
        if r.sigma_g < 0:
            raise BillingError(
                f"lane {lane.lane}: sigma_g = {r.sigma_g!r} is not a standard deviation"
            )
        # an unreadable level or noise estimate is a sensor fault: never guess
        finite = math.isfinite(delta) and math.isfinite(r.sigma_g)
        thr = policy.no_change_g(r.sigma_g) if math.isfinite(r.sigma_g) else policy.min_change_g
        if math.isfinite(delta) and abs(delta) > thr:
            evidence.append(Evidence(lane.lane, r.before_g, r.after_g, delta))
        if r.faulted or not finite:
            flags.add(FLAG_SENSOR_FAULT)
            continue
        if abs(delta) <= thr:
            continue
        if delta > 0:
            gains.append((lane.lane, delta, r.sigma_g))
            continue
        _check_lane(lane)
        loss = -delta
        if lane.mode == "unit":
            u = float(lane.unit_weight_g or 0.0)
            count, review = _count_units(loss, u, lane.unit_weight_sd_g or 0.0, r.sigma_g, policy)
            most = _most_units(loss, u, lane.unit_weight_sd_g or 0.0, r.sigma_g, policy)
            sources.append(_Unit(r, loss, count, review, max(most, count)))
            if review:
                flags.add(FLAG_NEEDS_REVIEW)
        elif lane.mode == "tracked":
            t = _estimate_tracked(r, loss, tracked_stock.get(lane.lane, ()), policy)
            sources.append(t)
            if t.review:
                flags.add(FLAG_NEEDS_REVIEW)
        else:
            sources.append(_Weighed(r, loss))

    n = len(sources)
    state = _State((0,) * n, (frozenset(),) * n, (0.0,) * n, (0.0,) * n, (0.0,) * n)
    returned_to: dict[int, tuple[float, ...]] = {}
    if gains:
        matches: tuple[_Match | None, ...] = (None,) * len(gains)
        if sources:
            state, matches, truncated = _match_gains(gains, sources, policy)
            if truncated:
                flags.add(FLAG_NEEDS_REVIEW)
        for m in matches:
            if m is None:
                flags.add(FLAG_FOREIGN_OBJECT)
            else:
                flags.add(FLAG_MISPLACED_RETURN)
                returned_to[m.lane] = m.weights

    lines: list[BillLine] = []
    for si, s in enumerate(sources):
        lane = s.reading.lane
        kept_g = max(0.0, s.loss - state.attributed[si])
        if isinstance(s, _Unit):
            qty = max(0, s.count - state.units[si])
            price = lane.price_fen or 0
            if qty > 0:
                lines.append(BillLine(lane.lane, lane.sku, qty, kept_g, price, qty * price))
        elif isinstance(s, _Tracked):
            res = s.resolve(state.items[si])
            kept, review = res if res is not None else (s.chosen, True)
            if review:
                flags.add(FLAG_NEEDS_REVIEW)
            price = lane.price_fen or 0
            if kept:
                lines.append(
                    BillLine(
                        lane.lane,
                        lane.sku,
                        len(kept),
                        kept_g,
                        price,
                        len(kept) * price,
                        tuple(s.stock[i] for i in kept),
                    )
                )
        else:
            per_kg = lane.price_fen_per_kg or 0
            dg, amount = _weighed_sale(s.loss - state.refund[si], s.reading.sigma_g, per_kg, policy)
            if dg > 0:
                lines.append(BillLine(lane.lane, lane.sku, 1, dg / _Q_PER_G, per_kg, amount))

    return Bill(
        lines=tuple(lines),
        total_fen=sum(ln.amount_fen for ln in lines),
        flags=tuple(sorted(flags)),
        evidence=tuple(evidence),
        returned_to=returned_to,
    )
