"""Objects built once per process on first use, safely from many threads at once.

A worker process runs its tasks in a pool of threads, so the first tasks of a fresh process
ask for the settings, the engine or a model backend at the same moment. ``functools.lru_cache``
would let each of them build its own (two engines, two HTTP pools, a model loaded twice); a
value built here is built by one thread while the others wait for it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable
from typing import Generic, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class BuiltOnce(Generic[P, T]):
    """``build(*args)``, built once per distinct arguments and kept until ``cache_clear``."""

    def __init__(self, build: Callable[P, T]) -> None:
        self._build = build
        self._lock = threading.RLock()
        self._built: dict[Hashable, T] = {}
        functools.update_wrapper(self, build)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        key = (args, tuple(sorted(kwargs.items())))
        try:
            return self._built[key]  # the common case: built already, no lock taken
        except KeyError:
            pass
        with self._lock:
            if key not in self._built:
                self._built[key] = self._build(*args, **kwargs)
            return self._built[key]

    def cache_clear(self) -> None:
        """Forget what was built (a forked child, a test that changes the settings)."""
        with self._lock:
            self._built.clear()


def built_once(build: Callable[P, T]) -> BuiltOnce[P, T]:
    return BuiltOnce(build)
