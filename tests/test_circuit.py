"""The circuit breaker of a tier (services/llm/circuit.py): it opens after N transient failures
in a row, lets calls through again after ``open_for_s``, reopens on the first failure then,
closes on a success, ignores overload, and keeps its count exact under many threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.llm.base import ModelError, ModelOverloaded, TransientModelError
from services.llm.circuit import CircuitBreaker, CircuitOpen


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Server:
    """What the breaker calls: answers, fails or is full, and counts the calls it got."""

    calls: int = 0
    outcomes: list[str] = field(default_factory=list)

    def answer(self, outcome: str) -> Callable[[], str]:
        def call() -> str:
            self.calls += 1
            if outcome == "fail":
                raise TransientModelError("connection refused")
            if outcome == "overload":
                raise ModelOverloaded("429")
            if outcome == "refuse":
                raise ModelError("400")
            return "answer"

        return call


def breaker(clock: Clock, *, failures_to_open: int = 3, open_for_s: float = 30.0) -> CircuitBreaker:
    return CircuitBreaker(
        name="small", failures_to_open=failures_to_open, open_for_s=open_for_s, clock=clock
    )


def attempt(circuit: CircuitBreaker, server: Server, outcome: str) -> str:
    """What the caller sees: the answer, or the name of the error class."""
    try:
        return circuit.call(server.answer(outcome))
    except (CircuitOpen, ModelOverloaded, TransientModelError, ModelError) as exc:
        return type(exc).__name__


def test_it_opens_after_n_failures_in_a_row_and_then_calls_nothing() -> None:
    clock, server = Clock(), Server()
    circuit = breaker(clock)
    for _ in range(2):
        assert attempt(circuit, server, "fail") == "TransientModelError"
        assert not circuit.is_open
    assert attempt(circuit, server, "fail") == "TransientModelError"
    assert circuit.is_open
    with pytest.raises(CircuitOpen, match="small model server failed 3 times in a row"):
        circuit.call(server.answer("ok"))
    assert server.calls == 3  # the open circuit did not call the server


def test_circuit_open_is_transient_so_callers_retry_it() -> None:
    assert issubclass(CircuitOpen, TransientModelError)
    assert not issubclass(CircuitOpen, ModelOverloaded)


def test_a_success_resets_the_count_of_failures_in_a_row() -> None:
    clock, server = Clock(), Server()
    circuit = breaker(clock)
    for outcome in ["fail", "fail", "ok", "fail", "fail"]:
        attempt(circuit, server, outcome)
    assert not circuit.is_open


def test_after_open_for_s_calls_go_through_and_the_first_failure_reopens() -> None:
    clock, server = Clock(), Server()
    circuit = breaker(clock, open_for_s=30.0)
    for _ in range(3):
        attempt(circuit, server, "fail")
    clock.now += 29.9
    assert attempt(circuit, server, "ok") == "CircuitOpen"
    clock.now += 0.1
    assert not circuit.is_open
    assert attempt(circuit, server, "fail") == "TransientModelError"  # half-open: one try
    assert circuit.is_open
    assert server.calls == 4


def test_after_open_for_s_a_success_closes_it() -> None:
    clock, server = Clock(), Server()
    circuit = breaker(clock, open_for_s=5.0)
    for _ in range(3):
        attempt(circuit, server, "fail")
    clock.now += 5.0
    assert attempt(circuit, server, "ok") == "answer"
    attempt(circuit, server, "fail")
    attempt(circuit, server, "fail")
    assert not circuit.is_open  # the count started again from zero


def test_overload_counts_neither_as_failure_nor_as_success() -> None:
    clock, server = Clock(), Server()
    circuit = breaker(clock)
    for outcome in ["fail", "fail", "overload", "overload", "fail"]:
        attempt(circuit, server, outcome)
    assert circuit.is_open  # overload did not reset the count
    clock.now += 30.0
    assert attempt(circuit, server, "overload") == "ModelOverloaded"
    assert attempt(circuit, server, "fail") == "TransientModelError"
    assert circuit.is_open  # overload did not close it either


def test_a_permanent_model_error_passes_through_and_counts_neither_way() -> None:
    clock, server = Clock(), Server()
    circuit = breaker(clock)
    for outcome in ["fail", "fail", "refuse", "fail"]:
        attempt(circuit, server, outcome)
    assert circuit.is_open


OUTCOMES = st.lists(
    st.one_of(
        st.sampled_from(["ok", "fail", "overload", "refuse"]),
        st.floats(min_value=0.0, max_value=20.0).map(lambda seconds: ("wait", seconds)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    outcomes=OUTCOMES,
    failures_to_open=st.integers(min_value=1, max_value=5),
    open_for_s=st.floats(min_value=0.5, max_value=15.0),
)
def test_any_sequence_of_outcomes_follows_the_rules(
    outcomes: list[str | tuple[str, float]], failures_to_open: int, open_for_s: float
) -> None:
    """Against a model of the rules: failures in a row (reset by a success alone), and an
    instant until which nothing is called."""
    clock, server = Clock(), Server()
    circuit = breaker(clock, failures_to_open=failures_to_open, open_for_s=open_for_s)
    in_a_row, open_until, expected_calls = 0, 0.0, 0
    for outcome in outcomes:
        if isinstance(outcome, tuple):
            clock.now += outcome[1]
            continue
        seen = attempt(circuit, server, outcome)
        if clock.now < open_until:
            assert seen == "CircuitOpen"
            continue
        expected_calls += 1
        if outcome == "ok":
            in_a_row, open_until = 0, 0.0
            assert seen == "answer"
        elif outcome == "fail":
            in_a_row += 1
            if in_a_row >= failures_to_open:
                open_until = clock.now + open_for_s
            assert seen == "TransientModelError"
        assert circuit.is_open == (clock.now < open_until)
    assert server.calls == expected_calls


THREADS = 8


def run_together(work: Callable[[], None], threads: int = THREADS) -> None:
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(timeout=10)
            work()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread below
            errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=30)
    assert not errors, errors


def test_no_failure_is_lost_among_many_threads() -> None:
    """Eight threads fail 50 times each: one failure short of the threshold keeps the circuit
    closed, and the next one opens it, so every failure was counted exactly once."""
    per_thread = 50
    circuit = breaker(Clock(), failures_to_open=THREADS * per_thread + 1)
    server = Server()

    def fail_many() -> None:
        for _ in range(per_thread):
            attempt(circuit, server, "fail")

    run_together(fail_many)
    assert not circuit.is_open
    assert attempt(circuit, server, "fail") == "TransientModelError"
    assert circuit.is_open


def test_model_calls_run_in_parallel_rather_than_under_the_breakers_lock() -> None:
    circuit = breaker(Clock())
    inside = threading.Barrier(THREADS)  # passes only if every thread is inside its call at once

    def call() -> None:
        circuit.call(lambda: inside.wait(timeout=10))

    run_together(call)
