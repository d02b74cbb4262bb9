"""The streaming policies of PAPER.md, run for many budgets, cost schemes and seeds at once.

Every column of the simulation is one (seed, budget grid, budget): the seed fixes the stream
order, the grid fixes the costs and the budget range. The policies themselves (what each would
send to the large model) are registered in ``services.policy.offline``; the threshold policy is
the service's own rule on the running history of the signal, so the evaluation escalates
exactly what the service would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from services.evaluation.data import BoolArray, FloatArray
from services.policy import offline, pacing
from services.policy.offline import OFFLINE_POLICIES, Mode, PacedThreshold, StepRule, threshold_rule

BUDGET_POINTS = 100
streaming_escalations = offline.streaming_escalations  # the service's rule along one stream


@dataclass(frozen=True)
class CostScheme:
    name: str
    small: FloatArray  # cost of each scored query on each tier
    large: FloatArray


@dataclass(frozen=True)
class BudgetGrid:
    """Average budgets per query from c_s to c_l (the paper's code) or to c_s + c_l."""

    scheme: CostScheme
    upper: Literal["c_l", "c_s+c_l"]

    @property
    def name(self) -> str:
        return f"{self.scheme.name}, B in [c_s, {self.upper}]"

    @property
    def budgets(self) -> FloatArray:
        small, large = self.scheme.small.mean(), self.scheme.large.mean()
        top = large if self.upper == "c_l" else small + large
        budgets: FloatArray = np.linspace(small, top, BUDGET_POINTS)
        return budgets

    def rates(self, mode: Mode) -> FloatArray:
        """p(B) = (B - c_s) / c_l for a cascade; q(B) = (B - c_s) / (c_l - c_s) for routing."""
        small, large = self.scheme.small.mean(), self.scheme.large.mean()
        scale = large if mode == "cascade" else max(large - small, 1e-12)
        rates: FloatArray = np.clip((self.budgets - small) / scale, 0.0, 1.0)
        return rates


@dataclass(frozen=True)
class Curves:
    """Per grid, per budget, averaged over seeds."""

    accuracy: FloatArray  # (grids, budgets)
    large_share: FloatArray
    spend: FloatArray


class Stream:
    """The scored queries of one pair, in one order per seed."""

    def __init__(
        self,
        *,
        small_correct: BoolArray,
        large_correct: BoolArray,
        grids: list[BudgetGrid],
        seeds: list[int],
        warmup: int,
        orders: npt.NDArray[np.int64] | None = None,
    ) -> None:
        """``orders`` (one row per seed) replaces the seeded shuffles, e.g. to replay a stream."""
        self.n = len(small_correct)
        self.grids = grids
        self.seeds = seeds
        self.warmup = warmup
        self.orders = (
            orders
            if orders is not None
            else np.stack([np.random.default_rng(seed).permutation(self.n) for seed in seeds])
        )
        self.small_correct = small_correct[self.orders]  # (seeds, n)
        self.large_correct = large_correct[self.orders]
        self.uniform = np.stack(
            [np.random.default_rng(10_000 + seed).random(self.n) for seed in seeds]
        )
        # (seed, grid, budget) columns, flattened
        shape = (len(seeds), len(grids), BUDGET_POINTS)
        self.seed_of = np.broadcast_to(np.arange(len(seeds))[:, None, None], shape).ravel()
        self.grid_of = np.broadcast_to(np.arange(len(grids))[None, :, None], shape).ravel()
        self.budget = np.broadcast_to(
            np.stack([grid.budgets for grid in grids])[None], shape
        ).ravel()
        small_costs = np.stack([grid.scheme.small for grid in grids])  # (grids, n)
        large_costs = np.stack([grid.scheme.large for grid in grids])
        # What the service would expect the large call to cost: the scheme's average.
        self.large_cost_expected = large_costs.mean(axis=1)[self.grid_of]
        self.small_cost = small_costs[:, self.orders].transpose(1, 0, 2)  # (seeds, grids, n)
        self.large_cost = large_costs[:, self.orders].transpose(1, 0, 2)
        suffix = np.cumsum(self.small_cost[..., ::-1], axis=-1)[..., ::-1]
        self.small_cost_after = np.concatenate(  # cost of S for every query after t
            [suffix[..., 1:], np.zeros((*suffix.shape[:-1], 1))], axis=-1
        )

    def grid_rates(self, mode: Mode) -> FloatArray:
        """The target rate of every (grid, budget), flattened."""
        rates: FloatArray = np.stack([grid.rates(mode) for grid in self.grids]).ravel()
        return rates

    def rates(self, mode: Mode) -> FloatArray:
        """The target rate of every column."""
        per_grid = np.stack([grid.rates(mode) for grid in self.grids])  # (grids, budgets)
        return np.broadcast_to(per_grid[None], (len(self.seeds), *per_grid.shape)).ravel()

    # -- what the registered policies want to do at each step, per column ------------------
    def threshold_wants(self, signal: FloatArray, mode: Mode) -> BoolArray:
        """Below the running p-quantile of the signal (after the warm-up): the service's rule."""
        return threshold_rule(self, signal, mode)

    def random_wants(self) -> BoolArray:
        return OFFLINE_POLICIES["random"].wants(self)

    def oracle_wants(self) -> BoolArray:
        return OFFLINE_POLICIES["oracle"].wants(self)

    def paced_threshold(self, signal: FloatArray, window: int) -> PacedThreshold:
        """The service's rule under ``budget_pacing_queries = window``, for ``run``."""
        return PacedThreshold(
            self, signal, budget=self.budget, large_cost=self.large_cost_expected, window=window
        )

    # -- the budgeted stream ---------------------------------------------------------------
    def run(self, wants: BoolArray | StepRule, mode: Mode, *, large_alone: bool = False) -> Curves:
        """Spend each column's budget B * n along the stream, with the paper's budget guards.

        A cascade always pays c_s and escalates (paying c_l too) only if what is left still pays
        c_s for every later query; a router sends a query to L alone only on the same condition.
        With ``large_alone``, a query goes to L alone (no small call) whenever the surplus of
        the budget per query pays for it (``services.policy.pacing``), as in the service, with
        the grid's average c_l as the expected large cost. Unlike the service, whose L-alone
        queries add no margin, the threshold here was computed with every query's signal in
        the history: the L-alone queries are chosen without looking at the signal, so the
        history's quantiles are the same in expectation. A query no model can be paid for
        counts as wrong. ``wants`` is either every query's wish up front, (columns, n), or a
        ``StepRule`` asked at each step with what each column has spent so far (then
        ``large_alone`` asks the rule's own large-alone test), and told what escalated.
        """
        step_rule = None if isinstance(wants, np.ndarray) else wants
        seed, grid = self.seed_of, self.grid_of
        remaining = self.budget * self.n
        correct = np.zeros(remaining.shape)
        large_calls = np.zeros(remaining.shape)
        no_alone = np.zeros(remaining.shape, dtype=bool)
        for t in range(self.n):
            small_cost = self.small_cost[seed, grid, t]
            large_cost = self.large_cost[seed, grid, t]
            reserve = self.small_cost_after[seed, grid, t]
            small_ok = self.small_correct[seed, t]
            large_ok = self.large_correct[seed, t]
            affordable = remaining >= small_cost
            spent_before = self.budget * self.n - remaining
            if step_rule is None:
                wants_now = wants[:, t]  # type: ignore[index]
                alone_wanted = pacing.covers_large(
                    budget_per_query=self.budget, answered=t, spent=spent_before,
                    large_cost=self.large_cost_expected,
                )  # fmt: skip
            else:
                wants_now = step_rule.wants(t, spent_before)
                alone_wanted = step_rule.large_alone(t, spent_before)
            alone = (
                np.asarray(alone_wanted) & (remaining - large_cost >= reserve)
                if large_alone
                else no_alone
            )
            if mode == "cascade":
                to_large = ~alone & wants_now & (remaining - small_cost - large_cost >= reserve)
                spent = np.where(affordable, small_cost + to_large * large_cost, 0.0)
                spent = np.where(alone, large_cost, spent)
                ok = np.where(alone | to_large, large_ok, small_ok & affordable)
                if step_rule is not None:
                    step_rule.record(t, to_large)  # both tiers answered these
                to_large |= alone
            else:
                to_large = (alone | wants_now) & (remaining - large_cost >= reserve)
                on_small = ~to_large & affordable
                spent = np.where(to_large, large_cost, np.where(on_small, small_cost, 0.0))
                ok = np.where(to_large, large_ok, small_ok & on_small)
            remaining -= spent
            correct += ok
            large_calls += to_large
        shape = (len(self.seeds), len(self.grids), BUDGET_POINTS)
        spend = (self.budget * self.n - remaining) / self.n
        return Curves(
            accuracy=_seed_mean(correct / self.n, shape),
            large_share=_seed_mean(large_calls / self.n, shape),
            spend=_seed_mean(spend, shape),
        )


def _seed_mean(values: npt.NDArray[np.float64], shape: tuple[int, int, int]) -> FloatArray:
    mean: FloatArray = values.reshape(shape).mean(axis=0)
    return mean
