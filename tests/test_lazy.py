"""services.lazy: a value is built once per distinct arguments, by one thread while the others
wait, and built again only after ``cache_clear`` (which a forked child calls)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.lazy import built_once


class Counting:
    """A build function that counts its calls and can be held in the middle of a build."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.lock = threading.Lock()
        self.entered = threading.Event()
        self.go_on = threading.Event()
        self.go_on.set()

    def build(self, *args: object, **kwargs: object) -> dict[str, object]:
        with self.lock:
            self.calls.append((args, tuple(sorted(kwargs.items()))))
        self.entered.set()
        assert self.go_on.wait(timeout=30)
        return {"args": args, "kwargs": kwargs, "pid": os.getpid(), "n": len(self.calls)}


def test_a_value_is_built_once_and_the_same_object_is_returned() -> None:
    counting = Counting()
    cached = built_once(counting.build)
    first = cached("a", size=1)
    assert cached("a", size=1) is first
    assert len(counting.calls) == 1


def test_distinct_arguments_build_distinct_values() -> None:
    counting = Counting()
    cached = built_once(counting.build)
    one, two = cached("a"), cached("b")
    assert one is not two
    assert (one["args"], two["args"]) == (("a",), ("b",))
    assert cached("a") is one
    assert len(counting.calls) == 2


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(), max_size=6))
def test_keyword_order_does_not_matter(kwargs: dict[str, int]) -> None:
    counting = Counting()
    cached = built_once(counting.build)
    forwards = cached(**kwargs)
    backwards = cached(**dict(reversed(list(kwargs.items()))))
    assert backwards is forwards
    assert len(counting.calls) == 1


def test_many_threads_at_once_share_one_build() -> None:
    counting = Counting()
    counting.go_on.clear()  # the first build waits until every thread has asked
    cached = built_once(counting.build)
    threads = 16
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(cached, "engine") for _ in range(threads)]
        assert counting.entered.wait(timeout=30)
        counting.go_on.set()
        values = [future.result(timeout=30) for future in futures]
    assert len(counting.calls) == 1
    assert all(value is values[0] for value in values)


def test_a_failed_build_is_not_kept() -> None:
    outcomes = iter([RuntimeError("first build fails"), "built"])

    def build() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    cached = built_once(build)
    try:
        cached()
    except RuntimeError:
        pass
    else:
        raise AssertionError("the failing build did not raise")
    assert cached() == "built"


def test_cache_clear_builds_again() -> None:
    counting = Counting()
    cached = built_once(counting.build)
    before = cached("settings")
    cached.cache_clear()
    after = cached("settings")
    assert after is not before
    assert after["n"] == 2
    assert cached("settings") is after


def test_the_wrapper_keeps_the_build_functions_name_and_doc() -> None:
    def get_engine_for_test() -> int:
        """The doc of the build function."""
        return 1

    cached = built_once(get_engine_for_test)
    assert cached.__name__ == "get_engine_for_test"  # type: ignore[attr-defined]
    assert cached.__doc__ == "The doc of the build function."


def _in_forked_child(work: Callable[[], object]) -> Any:
    """Run ``work`` in a forked child and return what it returned (as JSON)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanup
        try:
            os.write(write_end, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(text)


def test_a_forked_child_keeps_the_parents_value_until_it_clears_the_cache() -> None:
    counting = Counting()
    cached = built_once(counting.build)
    parent_value = cached("backend")

    def child() -> list[int]:
        inherited = cached("backend")["pid"]
        cached.cache_clear()
        rebuilt = cached("backend")["pid"]
        return [int(str(inherited)), int(str(rebuilt)), os.getpid()]

    inherited, rebuilt, child_pid = _in_forked_child(child)
    assert inherited == os.getpid() == parent_value["pid"]
    assert rebuilt == child_pid != os.getpid()
    assert cached("backend") is parent_value  # the child's clear did not touch the parent
