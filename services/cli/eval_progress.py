"""How ``twotier eval`` shows its progress: live bars in a terminal (one per task, and one for
the whole run with the current pair and stage), one line per stage anywhere else (a log, a pipe).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from services.evaluation.data import PairData


class _Tally:
    """Where the run stands: pairs in all and per task, and how many of them are done."""

    def __init__(self) -> None:
        self.pairs_per_task: Counter[str] = Counter()
        self.done_per_task: Counter[str] = Counter()

    @property
    def pairs(self) -> int:
        return self.pairs_per_task.total()

    @property
    def done(self) -> int:
        return self.done_per_task.total()

    def count(self, pairs: Sequence[PairData]) -> None:
        self.pairs_per_task.update(pair.task for pair in pairs)

    def where(self, pair: PairData) -> str:
        """``[12/64] mmlu 3/16``: the pair in progress, in the run and in its task."""
        return (
            f"[{self.done + 1}/{self.pairs}] {pair.task} "
            f"{self.done_per_task[pair.task] + 1}/{self.pairs_per_task[pair.task]}"
        )


def _doing(pair: PairData, stage: str, done: int, total: int) -> str:
    count = f" {done}/{total}" if total else ""
    return f"{pair.small} -> {pair.large}: {stage}{count}"


class ProgressLines:
    """One line when a pair enters a stage; the counts within a stage are left out."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.tally = _Tally()
        self._last: tuple[str, str] | None = None

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *_exception: object) -> None:
        pass

    def started(self, pairs: Sequence[PairData]) -> None:
        self.tally.count(pairs)
        tasks = ", ".join(f"{task} ({n})" for task, n in self.tally.pairs_per_task.items())
        self.console.print(escape(f"Evaluating {self.tally.pairs} pairs: {tasks}"), soft_wrap=True)

    def stage(self, pair: PairData, stage: str, done: int, total: int) -> None:
        if self._last == (pair.name, stage):
            return
        self._last = (pair.name, stage)
        items = f" ({total} texts)" if total else ""
        line = f"{self.tally.where(pair)}: {_doing(pair, stage, 0, 0)}{items}"
        self.console.print(escape(line), soft_wrap=True)  # a log's line stays whole

    def finished(self, pair: PairData) -> None:
        self.tally.done_per_task[pair.task] += 1


class _BarsAndStage(Progress):
    """The bars, then a line with the pair and stage in progress (cut, never wrapped, where
    the terminal is narrow: the bars keep their width)."""

    doing = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.doing:
            yield Text(self.doing, no_wrap=True, overflow="ellipsis")


class ProgressBars:
    """A bar per task and one for the run, redrawn in place; use it as a context manager."""

    def __init__(self, console: Console) -> None:
        self.tally = _Tally()
        self.bars = _BarsAndStage(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._run: TaskID | None = None
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> ProgressBars:
        self.bars.start()
        return self

    def __exit__(self, *_exception: object) -> None:
        self.bars.stop()

    def started(self, pairs: Sequence[PairData]) -> None:
        self.tally.count(pairs)
        self._run = self.bars.add_task("all pairs", total=self.tally.pairs)
        for task, n in self.tally.pairs_per_task.items():
            self._tasks[task] = self.bars.add_task(escape(task), total=n, start=False)

    def stage(self, pair: PairData, stage: str, done: int, total: int) -> None:
        self.bars.start_task(self._tasks[pair.task])  # its clock starts at its first stage
        self.bars.doing = f"{self.tally.where(pair)}: {_doing(pair, stage, done, total)}"
        self.bars.refresh()

    def finished(self, pair: PairData) -> None:
        self.tally.done_per_task[pair.task] += 1
        bar = self._tasks[pair.task]
        self.bars.advance(bar)
        if self.tally.done_per_task[pair.task] == self.tally.pairs_per_task[pair.task]:
            self.bars.stop_task(bar)  # its clock stops at the task's own time
        assert self._run is not None, "started() comes first"
        self.bars.advance(self._run)
        if self.tally.done == self.tally.pairs:
            self.bars.doing = ""


def progress_for(console: Console) -> ProgressLines | ProgressBars:
    """Bars where the console is a terminal that redraws; lines where it is a log or a pipe."""
    return ProgressBars(console) if console.is_terminal else ProgressLines(console)
