"""The bounded read-ahead and the ordered parallel map under the layer threads."""

from __future__ import annotations

import gc
import os
import pathlib
import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import ociforge.threads as thread_tools
from ociforge.errors import ImageError, UsageError
from ociforge.threads import Prefetch, check_threads, cpu_count, ordered_map


class Source:
    """A generator-backed source that records how far it was read and whether it was closed."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.produced = 0
        self.closed = threading.Event()
        self.threads: set[str] = set()
        self.error = ImageError("cannot read /nix/store/x-vanished: No such file or directory")
        self.iterator = self._run(count, fail_at)

    def _run(self, count: int, fail_at: int | None) -> Iterator[int]:
        try:
            for i in range(count):
                self.threads.add(threading.current_thread().name)
                if i == fail_at:
                    raise self.error
                self.produced += 1
                yield i
        finally:
            self.closed.set()


def wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def test_prefetch_yields_everything_in_order_from_another_thread(
    new_readers: Callable[[], list[threading.Thread]],
) -> None:
    source = Source(1000)
    assert list(Prefetch(source.iterator, depth=3)) == list(range(1000))
    assert source.closed.is_set()
    assert source.threads == {"ociforge-prefetch"}
    assert new_readers() == []  # joined at the end


def test_prefetch_is_lazy_and_reads_at_most_depth_ahead() -> None:
    source = Source(1000)
    stream = Prefetch(source.iterator, depth=3)
    time.sleep(0.05)
    assert source.produced == 0  # nothing happens before the first next()
    assert next(stream) == 0
    wait_for(lambda: source.produced >= 5)
    time.sleep(0.05)
    # one taken + 3 queued + 1 in the producer's hand, waiting for room
    assert source.produced == 5
    stream.close()


def test_prefetch_hands_the_producers_exception_over_unchanged() -> None:
    source = Source(100, fail_at=10)
    stream = Prefetch(source.iterator, depth=2)
    got = []
    with pytest.raises(ImageError) as info:
        for item in stream:
            got.append(item)
    assert info.value is source.error
    assert got == list(range(10))
    assert source.closed.is_set()  # closed before the error reached us
    with pytest.raises(StopIteration):
        next(stream)


def test_close_stops_the_producer_and_closes_the_source_before_returning(
    new_readers: Callable[[], list[threading.Thread]],
) -> None:
    source = Source(10**9)
    stream = Prefetch(source.iterator, depth=2)
    next(stream)
    stream.close()
    assert source.closed.is_set()
    assert new_readers() == []
    produced = source.produced
    time.sleep(0.05)
    assert source.produced == produced
    with pytest.raises(StopIteration):
        next(stream)


def test_close_before_the_first_item_closes_the_source_here(
    new_readers: Callable[[], list[threading.Thread]],
) -> None:
    source = Source(10)
    stream = Prefetch(source.iterator)
    next(source.iterator)  # a started generator: closing it runs its finally
    stream.close()
    assert source.closed.is_set()
    assert new_readers() == []


def test_an_abandoned_prefetch_stops_its_thread(
    new_readers: Callable[[], list[threading.Thread]],
) -> None:
    source = Source(10**9)
    stream = Prefetch(source.iterator, depth=1)
    next(stream)
    del stream
    gc.collect()
    wait_for(source.closed.is_set)
    wait_for(lambda: new_readers() == [])


def test_prefetch_rejects_a_zero_depth() -> None:
    with pytest.raises(UsageError, match="depth"):
        Prefetch(iter([1]), depth=0)


def slow_square(x: int) -> int:
    time.sleep(random.Random(x).random() / 500)  # finish out of order
    return x * x


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_ordered_map_keeps_the_input_order(workers: int) -> None:
    assert list(ordered_map(slow_square, range(200), workers=workers, ahead=7)) == [
        x * x for x in range(200)
    ]


def test_ordered_map_keeps_at_most_ahead_items_in_flight() -> None:
    taken = 0

    def items() -> Iterator[int]:
        nonlocal taken
        for i in range(100):
            taken += 1
            yield i

    results = ordered_map(slow_square, items(), workers=3, ahead=6)
    for done, _ in enumerate(results, start=1):
        assert taken - done <= 5
    assert taken == 100


def test_ordered_map_runs_in_the_callers_thread_with_one_worker() -> None:
    names = list(
        ordered_map(lambda _: threading.current_thread().name, range(3), workers=1, ahead=2)
    )
    assert names == [threading.current_thread().name] * 3


def test_ordered_map_raises_the_workers_exception() -> None:
    error = ImageError("bad block")

    def fail_at_5(x: int) -> int:
        if x == 5:
            raise error
        return x

    got = []
    with pytest.raises(ImageError) as info:
        for item in ordered_map(fail_at_5, range(100), workers=2, ahead=4):
            got.append(item)
    assert info.value is error
    assert got == [0, 1, 2, 3, 4]


def test_closing_ordered_map_early_waits_for_running_calls() -> None:
    running = 0
    lock = threading.Lock()

    def work(x: int) -> int:
        nonlocal running
        with lock:
            running += 1
        time.sleep(0.01)
        with lock:
            running -= 1
        return x

    results = ordered_map(work, range(1000), workers=4, ahead=8)
    next(results)
    results.close()
    assert running == 0  # no call still touches its input after close returns


def test_cpu_count_is_the_affinity_mask_without_a_quota(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    monkeypatch.setattr(thread_tools, "CGROUP_CPU_MAX", str(tmp_path / "cpu.max"))
    assert cpu_count() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("50000 100000\n", None, 1),  # half a CPU still gets one thread
        ("150000 100000\n", None, 2),  # rounded up
        (None, ("100000", "100000"), 1),
        (None, ("-1", "100000"), None),  # v1 "unlimited"
        (None, None, None),  # no cgroup files at all
        ("garbage\n", None, None),
    ],
)
def test_cpu_count_honours_a_container_cpu_quota(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    v2: str | None,
    v1: tuple[str, str] | None,
    expected: int | None,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)))
    monkeypatch.setattr(thread_tools, "CGROUP_CPU_MAX", str(tmp_path / "cpu.max"))
    monkeypatch.setattr(
        thread_tools, "CGROUP_V1_QUOTA", (str(tmp_path / "quota"), str(tmp_path / "period"))
    )
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "quota").write_text(v1[0] + "\n")
        (tmp_path / "period").write_text(v1[1] + "\n")
    assert cpu_count() == (expected if expected is not None else 64)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_check_threads_rejects_what_is_not_a_positive_int(bad: object) -> None:
    with pytest.raises(UsageError, match="thread count"):
        check_threads(bad)  # type: ignore[arg-type]


def test_check_threads_defaults_to_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(thread_tools, "cpu_count", lambda: 7)
    assert check_threads(None) == 7
    assert check_threads(3) == 3


def test_an_error_while_closing_the_source_reaches_the_consumer() -> None:
    error = ImageError("cannot close /nix/store/x-y/file")

    class FailsToClose:
        def __init__(self) -> None:
            self.items = iter([1])

        def __iter__(self) -> FailsToClose:
            return self

        def __next__(self) -> int:
            return next(self.items)

        def close(self) -> None:
            raise error

    stream = Prefetch(FailsToClose())
    assert next(stream) == 1
    with pytest.raises(ImageError) as info:
        next(stream)
    assert info.value is error
