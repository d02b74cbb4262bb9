"""The policies the offline evaluation compares, registered by name.

Each policy says which queries it would like to send to the large model along the evaluation's
stream (one row per simulated column: seed x budget grid x budget, one column per query), and
whether it runs as a cascade (the small model answers first) or a router (one model answers).
The evaluation then spends each column's budget along the stream under the same guards for
every policy. The threshold policy is the service's own rule (``services.threshold``), run on
a recorded signal such as the margin or on a trained router's score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from services.policy.pacing import large_alone_when_paced, paced_rate
from services.threshold import escalates, quantile_index

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Mode = Literal["cascade", "route"]
# What a policy scores queries with: each signal the records carry, a trained router's score,
# or nothing.
SignalSource = Literal["recorded", "trained"] | None

THRESHOLD = "threshold"  # the service's rule; the evaluation runs it on every recorded signal
# The service's rule for a tenant with a budget per query: the threshold, and L alone whenever
# the budget's surplus pays for it.
THRESHOLD_LARGE_ALONE = "threshold+large_alone"


class OfflineStream(Protocol):
    """What a policy reads of the evaluation's stream (``services.evaluation.simulate.Stream``)."""

    @property
    def n(self) -> int: ...  # queries in the stream
    @property
    def warmup(self) -> int: ...
    @property
    def orders(self) -> npt.NDArray[np.int64]: ...  # (seeds, n): each seed's query order
    @property
    def seed_of(self) -> npt.NDArray[np.int64]: ...  # (columns,): each column's seed
    @property
    def uniform(self) -> FloatArray: ...  # (seeds, n): each seed's uniform draws
    @property
    def small_correct(self) -> BoolArray: ...  # (seeds, n), in each seed's order
    @property
    def large_correct(self) -> BoolArray: ...

    def grid_rates(self, mode: Mode) -> FloatArray:
        """The target rate of every (grid, budget), flattened."""
        ...

    def rates(self, mode: Mode) -> FloatArray:
        """The target rate of every column."""
        ...


Rule = Callable[[OfflineStream, FloatArray | None, Mode], BoolArray]


@dataclass(frozen=True)
class OfflinePolicy:
    mode: Mode
    signal: SignalSource
    rule: Rule
    # Whether a query goes to L alone when the budget per query's surplus pays for it
    # (services.policy.pacing): the service's step for a tenant with a budget per query.
    large_alone: bool = False

    def wants(self, stream: OfflineStream, signal: FloatArray | None = None) -> BoolArray:
        """(columns, n): whether the policy would send each query to the large model."""
        return self.rule(stream, signal, self.mode)


def streaming_escalations(signal: FloatArray, rates: FloatArray, warmup: int) -> BoolArray:
    """For a stream in this order, which queries the service would escalate at each rate.

    The history includes the current query, as in the service; the threshold and the decision
    are the service's own functions. Returns (rates, queries).
    """
    n = len(signal)
    wants = np.empty((len(rates), n), dtype=bool)
    history = np.empty(n)
    for t, value in enumerate(signal):
        position = int(np.searchsorted(history[:t], value, side="right"))
        history[position + 1 : t + 1] = history[position:t]
        history[position] = value
        threshold = history[quantile_index(t + 1, rates)]
        wants[:, t] = escalates(value, threshold, history_size=t + 1, warmup=warmup)
    return wants


def threshold_rule(stream: OfflineStream, signal: FloatArray | None, mode: Mode) -> BoolArray:
    """Below the running p-quantile of the signal (after the warm-up): the service's rule."""
    if signal is None:
        raise ValueError("the threshold policy needs a signal")
    per_grid = stream.grid_rates(mode)
    wants = np.stack(
        [streaming_escalations(signal[order], per_grid, stream.warmup) for order in stream.orders]
    )  # (seeds, grids*budgets, n)
    return wants.reshape(-1, stream.n)


def random_rule(stream: OfflineStream, _signal: FloatArray | None, mode: Mode) -> BoolArray:
    """Each query to the large model with probability equal to the column's rate."""
    wants: BoolArray = stream.uniform[stream.seed_of] < stream.rates(mode)[:, None]
    return wants


def oracle_rule(stream: OfflineStream, _signal: FloatArray | None, _mode: Mode) -> BoolArray:
    """Exactly the queries the small model gets wrong and the large one right."""
    wanted = ~stream.small_correct & stream.large_correct  # (seeds, n)
    chosen: BoolArray = wanted[stream.seed_of]
    return chosen


class StepRule(Protocol):
    """A rule that decides query by query from what each column has done so far, as the
    service does under budget pacing; ``Stream.run`` asks it at every step."""

    def wants(self, t: int, spent: FloatArray) -> BoolArray:
        """(columns,): whether each column would send query t to the large model, given what
        each spent on the queries before it."""
        ...

    def large_alone(self, t: int, spent: FloatArray) -> BoolArray:
        """(columns,): whether query t skips the small model (before the budget guard)."""
        ...

    def record(self, t: int, escalated: BoolArray) -> None:
        """Which columns escalated query t (both tiers answered it)."""
        ...


class PacedThreshold:
    """The service's threshold at the paced rate (``pacing.paced_rate``) on a recorded signal:
    the rule of a tenant with a budget per query under ``budget_pacing_queries``."""

    def __init__(
        self,
        stream: OfflineStream,
        signal: FloatArray,
        *,
        budget: FloatArray,
        large_cost: FloatArray,
        window: int,
    ) -> None:
        """``budget`` and ``large_cost`` (the expected c_l) per column, as ``Stream`` has them."""
        self.warmup = stream.warmup
        self.seed_of = stream.seed_of
        self.rates = stream.rates("cascade")
        self.budget = budget
        self.large_cost = large_cost
        self.window = window
        self.ordered = signal[stream.orders]  # (seeds, n)
        self.history = np.empty_like(self.ordered)  # each seed's sorted margins so far

    def wants(self, t: int, spent: FloatArray) -> BoolArray:
        value = self.ordered[:, t]
        for seed, history in enumerate(self.history):  # the current query joins H
            position = int(np.searchsorted(history[:t], value[seed], side="right"))
            history[position + 1 : t + 1] = history[position:t]
            history[position] = value[seed]
        rates = paced_rate(
            self.rates, budget_per_query=self.budget, answered=t, spent=spent,
            large_cost=self.large_cost, window=self.window,
        )  # fmt: skip
        threshold = self.history[self.seed_of, quantile_index(t + 1, rates)]
        chosen: BoolArray = np.asarray(
            escalates(value[self.seed_of], threshold, history_size=t + 1, warmup=self.warmup)
        )
        return chosen

    def large_alone(self, t: int, spent: FloatArray) -> BoolArray:
        return np.asarray(
            large_alone_when_paced(budget_per_query=self.budget, large_cost=self.large_cost)
        )

    def record(self, t: int, escalated: BoolArray) -> None:
        pass  # the rate reads only the spend


OFFLINE_POLICIES: dict[str, OfflinePolicy] = {
    THRESHOLD: OfflinePolicy("cascade", "recorded", threshold_rule),
    THRESHOLD_LARGE_ALONE: OfflinePolicy("cascade", "recorded", threshold_rule, large_alone=True),
    "random": OfflinePolicy("route", None, random_rule),
    "oracle": OfflinePolicy("cascade", None, oracle_rule),
    # The trained routers: FrugalGPT's score is a cascade's signal; the others route.
    "frugalgpt": OfflinePolicy("cascade", "trained", threshold_rule),
    "routing": OfflinePolicy("route", "trained", threshold_rule),
    "hybridllm": OfflinePolicy("route", "trained", threshold_rule),
}


def policies_scored_by(signal: SignalSource) -> list[str]:
    """The registered policies that score queries with ``signal``, in registration order."""
    return [name for name, policy in OFFLINE_POLICIES.items() if policy.signal == signal]
