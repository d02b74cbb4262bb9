"""What one process builds once from its settings and hands to the domain.

An entry point (a worker process, `twotier serve`, `twotier eval-live`) makes one ``Runtime``
and passes it down; the cascade asks it for the settings, a tier's backend and circuit breaker,
and the keeper of its calls' leases, rather than reaching for process globals. A worker's
threads all ask for the same tier at once: a lock makes sure the first of them builds the
backend the others share (one HTTP connection pool, one failure count).
"""

from __future__ import annotations

import threading

from services.leases import LeaseKeeper
from services.llm.base import Backend
from services.llm.circuit import CircuitBreaker
from services.llm.http_backend import HttpBackend
from services.llm.registry import build_backend
from services.settings import Settings, TierSettings


class Runtime:
    def __init__(self, settings: Settings, *, raw_prompts: bool = False) -> None:
        """``raw_prompts``: every tier's backend sends prompts as the model's whole input, with
        no chat template (``twotier eval-live``'s completion prompts; see ``build_backend``)."""
        self.settings = settings
        self.raw_prompts = raw_prompts
        self.leases = LeaseKeeper(lease_s=settings.task_lease_s)
        self._backends: dict[str, Backend] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def tier_settings(self, tier: str) -> TierSettings:
        return self.settings.tier(tier)

    def backend(self, tier: str) -> Backend:
        """The tier's backend, built on first use."""
        backend = self._backends.get(tier)
        if backend is not None:
            return backend
        with self._lock:
            if tier not in self._backends:
                self._backends[tier] = build_backend(
                    tier, self.settings, raw_prompts=self.raw_prompts
                )
            return self._backends[tier]

    def breaker(self, tier: str) -> CircuitBreaker:
        """The tier's circuit breaker."""
        breaker = self._breakers.get(tier)
        if breaker is not None:
            return breaker
        with self._lock:
            if tier not in self._breakers:
                self._breakers[tier] = CircuitBreaker(
                    name=str(tier),
                    failures_to_open=self.settings.circuit_breaker_failures,
                    open_for_s=self.settings.circuit_breaker_open_s,
                )
            return self._breakers[tier]

    def close(self) -> None:
        """Close the backends' HTTP clients (the next use builds new ones)."""
        with self._lock:
            for backend in self._backends.values():
                if isinstance(backend, HttpBackend):
                    backend.close()
            self._backends.clear()
            self._breakers.clear()
