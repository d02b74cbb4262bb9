"""What ``twotier eval`` is doing while it runs: which pair, which stage, how far along.

The evaluation reports to an ``EvalProgress``; the command line draws it (``services.cli``).
A first run spends minutes loading the embedding model and embedding every query and answer
for the trained routers; later runs read the embeddings from the cache and skip those stages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from services.evaluation.data import PairData

# Stages of one pair, in the order they run. The embedding stages run only on a cache miss.
LOADING_EMBEDDING_MODEL = "loading the embedding model"
EMBEDDING = "embedding"  # followed by what is embedded: "embedding queries"
TRAINING_ROUTERS = "training the routers"
SIMULATING = "simulating the policies"

# (stage, done, total): ``total`` is 0 where the stage has no count to show.
StageReport = Callable[[str, int, int], None]


def ignore_stage(_stage: str, _done: int = 0, _total: int = 0) -> None:
    """A ``StageReport`` for callers that show no progress."""


class EvalProgress(Protocol):
    def started(self, pairs: Sequence[PairData]) -> None:
        """Every pair the run will evaluate, in order, before the first begins."""

    def stage(self, pair: PairData, stage: str, done: int, total: int) -> None:
        """``pair`` is in ``stage``; ``done`` of ``total`` items (both 0: no count)."""

    def finished(self, pair: PairData) -> None:
        """``pair`` is evaluated."""


class NoProgress:
    """Shows nothing (library use, tests of the numbers)."""

    def started(self, pairs: Sequence[PairData]) -> None:
        pass

    def stage(self, pair: PairData, stage: str, done: int, total: int) -> None:
        pass

    def finished(self, pair: PairData) -> None:
        pass
