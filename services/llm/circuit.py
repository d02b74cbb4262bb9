"""A circuit breaker per tier and process, so that a dead model server does not hold every
worker for its timeouts.

After ``failures_to_open`` transient failures in a row, calls fail at once for ``open_for_s``;
then calls go through again, and the first failure opens the circuit anew while a success
closes it. Overload (the server full, answering 429) is back-pressure from a live server and
counts neither way. The state is kept per process: each worker finds out on its own, within a
few calls. Unlike pybreaker, no lock is held while the model call runs, so the threads of a
process call the model in parallel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from services.llm.base import ModelOverloaded, TransientModelError

T = TypeVar("T")


class CircuitOpen(TransientModelError):
    """The tier's model server failed too often just now; it was not called."""


class CircuitBreaker:
    def __init__(
        self,
        *,
        name: str,
        failures_to_open: int,
        open_for_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failures_to_open = failures_to_open
        self.open_for_s = open_for_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._clock() < self._open_until

    def call(self, call: Callable[[], T]) -> T:
        """``call()``, unless the circuit is open (then CircuitOpen, and nothing is called)."""
        with self._lock:
            wait_s = self._open_until - self._clock()
        if wait_s > 0:
            raise CircuitOpen(
                f"the {self.name} model server failed {self._failures} times in a row; "
                f"it is not called for another {wait_s:.0f} s"
            )
        try:
            result = call()
        except ModelOverloaded:
            raise  # a full server is alive: neither a failure nor a success
        except TransientModelError:
            with self._lock:
                self._failures += 1
                if self._failures >= self.failures_to_open:
                    self._open_until = self._clock() + self.open_for_s
            raise
        with self._lock:
            self._failures = 0
            self._open_until = 0.0
        return result
