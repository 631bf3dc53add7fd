"""Thread plumbing for the layer pipeline: a bounded read-ahead and an ordered parallel map.

Both keep a fixed number of items in flight (flat memory, whatever the layer size) and keep
the order, so they produce exactly what a plain loop would: threads change *when* work is done,
never the bytes. Hashing (hashlib), zlib and zstd release the GIL on large buffers, which is
what lets these threads use several cores.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar, cast

from ociforge.errors import UsageError

__all__ = ["Background", "Prefetch", "check_threads", "cpu_count", "ordered_map"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
T_co = TypeVar("T_co", covariant=True)

_ITEM, _END, _ERROR = 0, 1, 2


# Where a container's CPU limit is visible: cgroup v2, then v1 (quota and period files).
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_QUOTA = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cpu_count() -> int:
    """The cores this process may use: its affinity mask, capped by a cgroup CPU quota.

    A CI job in a container limited to 2 CPUs on a 64-core host gets 2, not 64 threads (each
    costing memory for buffers) fighting over 2 CPUs' worth of time.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_limit()
    return max(1, min(cores, quota) if quota is not None else cores)


def _cgroup_cpu_limit() -> int | None:
    """ceil(quota / period) of this cgroup, or None when unlimited or unknown."""
    try:
        with open(CGROUP_CPU_MAX) as handle:
            quota, period = handle.read().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = (_read_first_line(path) for path in CGROUP_V1_QUOTA)
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return max(1, -(-int(quota) // int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def _read_first_line(path: str) -> str:
    with open(path) as handle:
        return handle.readline().strip()


def check_threads(threads: int | None) -> int:
    """``threads`` validated, ``None`` meaning every core."""
    if threads is None:
        return cpu_count()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UsageError(f"thread count must be an integer >= 1, got {threads!r}")
    return threads


class _Channel:
    """What the producer thread shares with the consumer; it never refers to the Prefetch, so
    an abandoned Prefetch can be collected (and its finalizer stop the thread)."""

    def __init__(self, depth: int) -> None:
        self.queue: queue.Queue[tuple[int, object]] = queue.Queue(depth)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def drain(self) -> None:
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                return

    def shutdown(self) -> None:
        """Stop the producer and wait until it has closed its source (and so its files)."""
        self.stop.set()
        thread = self.thread
        if thread is None:
            return
        while thread.is_alive():
            self.drain()  # unblocks a producer waiting on a full queue
            if thread is threading.current_thread():
                return  # a finalizer run by the producer itself: it stops after its next put
            thread.join(0.05)
        self.drain()


def _produce(source: Iterator[object], channel: _Channel) -> None:
    message: tuple[int, object] | None = (_END, None)
    try:
        for item in source:
            channel.queue.put((_ITEM, item))
            if channel.stop.is_set():
                message = None  # nobody is listening any more
                break
    except BaseException as exc:  # handed to the consumer, which raises it
        message = (_ERROR, exc)
    try:
        # Closed here, in the thread that runs it (a generator cannot be closed from another
        # thread while it runs), and before the consumer hears of the end: its file is closed.
        close = getattr(source, "close", None)
        if close is not None:
            close()
    except BaseException as exc:
        if message is None or message[0] == _ERROR:
            log.debug("closing an abandoned source failed", exc_info=True)
        else:
            message = (_ERROR, exc)
    if message is not None:
        channel.queue.put(message)


class Background(Generic[T_co]):
    """``fn()`` in a daemon thread, started now; :meth:`result` waits for it.

    ``failed`` is set as soon as ``fn`` raises, so work done meanwhile in the caller's thread
    can stop early (see ``RegistryClient.request``'s ``cancel``). The exception reaches the
    caller of :meth:`result` unchanged (same object).
    """

    def __init__(self, fn: Callable[[], T_co], *, name: str) -> None:
        self.failed = threading.Event()
        self._outcome: tuple[bool, object] = (False, None)
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], T_co]) -> None:
        try:
            self._outcome = (True, fn())
        except BaseException as exc:  # handed to the caller of result()
            self._outcome = (False, exc)
            self.failed.set()

    def join(self) -> None:
        """Wait until ``fn`` has returned or raised."""
        self._thread.join()

    def result(self) -> T_co:
        self._thread.join()
        ok, value = self._outcome
        if not ok:
            raise cast(BaseException, value)
        return cast(T_co, value)


class Prefetch(Generic[T]):
    """Iterates ``source`` in a background thread, at most ``depth`` items ahead of the caller.

    The thread starts on the first ``next``. Exceptions raised by ``source`` reach the caller
    unchanged (same object). :meth:`close` (or garbage collection) stops the thread and closes
    ``source`` before returning.
    """

    def __init__(self, source: Iterator[T], depth: int = 2) -> None:
        if depth < 1:
            raise UsageError(f"prefetch depth must be >= 1, got {depth}")
        self._source: Iterator[T] | None = source
        self._channel = _Channel(depth)
        self._done = False
        self._finalizer = weakref.finalize(self, self._channel.shutdown)

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        if self._source is not None:
            self._start(self._source)
        kind, value = self._channel.queue.get()
        if kind == _ITEM:
            return cast(T, value)
        self._done = True
        self._finalizer()  # the producer has ended: join it
        if kind == _ERROR:
            raise cast(BaseException, value)
        raise StopIteration

    def _start(self, source: Iterator[T]) -> None:
        self._source = None  # the thread owns it now
        thread = threading.Thread(
            target=_produce, args=(source, self._channel), name="ociforge-prefetch", daemon=True
        )
        self._channel.thread = thread
        thread.start()

    def close(self) -> None:
        """Stop reading ahead; the source is closed when this returns."""
        self._done = True
        self._finalizer()
        source, self._source = self._source, None
        close = getattr(source, "close", None)
        if close is not None:  # never started: close it here
            close()


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int, ahead: int
) -> Generator[R, None, None]:
    """``map(fn, items)`` on ``workers`` threads, with at most ``ahead`` results pending.

    Results come in input order. ``workers == 1`` runs ``fn`` in the caller's thread.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="ociforge-worker")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= max(ahead, 1):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        # Wait for the running calls: nothing may still touch the buffers once we return.
        pool.shutdown(wait=True, cancel_futures=True)
