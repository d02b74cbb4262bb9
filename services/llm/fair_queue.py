"""The waiting room of the local model's decoder: round-robin across fairness keys.

Each key (a tenant) has its own first-in-first-out line; a free place in the running batch goes
to the next key in turn, so a tenant with a hundred queries waiting takes one place per round
and another tenant's single query waits for at most one request of each other key.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Round-robin over keys, FIFO within a key. Not thread-safe: its owner holds a lock."""

    def __init__(self) -> None:
        self._lines: dict[str, deque[T]] = {}
        self._turns: deque[str] = deque()  # the keys with someone waiting, next turn first

    def put(self, key: str, item: T) -> None:
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = deque()
            self._turns.append(key)
        line.append(item)

    def pop(self) -> T | None:
        """The first item of the key whose turn it is (that key then goes last), or None."""
        if not self._turns:
            return None
        key = self._turns.popleft()
        line = self._lines[key]
        item = line.popleft()
        if line:
            self._turns.append(key)
        else:
            del self._lines[key]
        return item

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def __iter__(self) -> Iterator[T]:
        for line in self._lines.values():
            yield from line
