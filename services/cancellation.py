"""Tell a model call running in this process that its query was cancelled.

A tier's call for a query watches the query's id here (services/cascade.py) from before its
claim until the call returns; the query lifecycle (services/lifecycle.py) signals the id once a
cancel has committed. A backend that can stop a call (the local model, which ends the
generation at its next step) looks at the signal; the call then returns what it produced so
far, which is charged as usual. In the embedded default the API and the tiers share the
process, so a cancel through the API stops the running generation; in a distributed
deployment the worker's process hears nothing and the call runs to its end, as before.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class CancelSignals:
    """The cancel events of this process's running calls, by query id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: defaultdict[uuid.UUID, list[threading.Event]] = defaultdict(list)

    @contextmanager
    def watching(self, query_id: uuid.UUID) -> Iterator[threading.Event]:
        """An event set if the query is cancelled while the block runs."""
        cancelled = threading.Event()
        with self._lock:
            self._watched[query_id].append(cancelled)
        try:
            yield cancelled
        finally:
            with self._lock:
                events = self._watched[query_id]
                events.remove(cancelled)
                if not events:
                    del self._watched[query_id]

    def cancel(self, query_id: uuid.UUID) -> None:
        """Set the events of the calls watching ``query_id`` (none: nothing happens)."""
        with self._lock:
            for cancelled in self._watched.get(query_id, []):
                cancelled.set()


signals = CancelSignals()
