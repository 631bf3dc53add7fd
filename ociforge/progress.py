"""Progress on stderr for the CLI: a bar on a terminal, plain lines in a CI log, or nothing.

Progress is measured on input bytes (see :mod:`ociforge.events`): the store paths' narSize is
known once the layers are planned, so a percentage and an ETA are honest from the first byte.
Only what is worth a line gets one: large layers (:func:`is_large`), retries and messages; the
rest is in the total and in the final summary line.

tqdm is imported only when a bar is drawn: most runs (CI logs, ``--quiet``) draw none.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TextIO, TypeGuard

from ociforge.errors import UsageError
from ociforge.events import (
    BlobFinished,
    BlobProgress,
    BlobRetry,
    BlobStarted,
    Event,
    InputProgress,
    Message,
    PlanReady,
)

if TYPE_CHECKING:
    from tqdm import tqdm

Mode = Literal["bar", "plain", "none"]
MODES = ("auto", "bar", "plain", "none")

# A layer gets a line of its own when it is this share of the input, or this big.
LARGE_SHARE = 0.05
LARGE_BYTES = 100_000_000
PLAIN_INTERVAL = 10.0  # seconds between plain lines: often enough that a CI log looks alive
BAR_INTERVAL = 0.25  # seconds between bar redraws, also while no byte moves (ETA, stalls)
INTERVAL_ENV = "OCIFORGE_PROGRESS_INTERVAL"  # plain mode's interval, in seconds

_WORDS = {
    "uploaded": "uploaded",
    "written": "written",
    "skipped": "reused",
    "reused": "reused",
    "mounted": "mounted",
}


def human_size(count: float) -> str:
    """``204.6 MB``: decimal units, as registries and `du --si` count."""
    if count < 1000:
        return f"{int(count)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        count /= 1000
        if count < 999.95 or unit == "TB":
            break
    return f"{count:.1f} {unit}"


def human_duration(seconds: float) -> str:
    """``4.2s``, ``1m05s``, ``2h03m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


@dataclass
class _Layer:
    planned: int  # input bytes the plan announced
    done: int = 0  # input bytes read, at most ``planned``
    started: float | None = None
    outcome: str | None = None
    size: int = 0  # the blob's final size


class Tally:
    """What the events told so far, and the lines that say it; no I/O, the clock is passed in.

    Percentages count each layer's input at most once (a retried layer starts again from 0)
    and a layer found in the registry as done; the rate counts only bytes really read, so
    reused layers do not make the ETA lie.
    """

    def __init__(self) -> None:
        self.layers: dict[str, _Layer] = {}
        self.total = 0
        self.done = 0
        self.read = 0  # input bytes read, retries included
        self.sent = 0  # blob bytes sent or written, retries and config included
        self.first_read: float | None = None

    def apply(self, event: Event, now: float) -> None:
        if isinstance(event, PlanReady):
            self.layers = {k: _Layer(n) for k, n in zip(event.keys, event.input_bytes, strict=True)}
            self.total, self.done = event.total_input, 0
        elif isinstance(event, InputProgress):
            self.read += event.delta
            if self.first_read is None:
                self.first_read = now
            if (layer := self.layers.get(event.key)) is not None:
                self._set_done(layer, layer.done + event.delta)
        elif isinstance(event, BlobProgress):
            self.sent += event.delta
        elif (layer := self.layers.get(getattr(event, "key", ""))) is not None:
            self._blob_event(layer, event, now)

    def _blob_event(self, layer: _Layer, event: Event, now: float) -> None:
        if isinstance(event, BlobStarted):
            layer.started, layer.outcome = now, None
            self._set_done(layer, 0)
        elif isinstance(event, BlobRetry):
            self._set_done(layer, 0)  # the blob is sent again from byte 0
        elif isinstance(event, BlobFinished):
            layer.outcome, layer.size = event.outcome, event.size
            self._set_done(layer, layer.planned)

    def _set_done(self, layer: _Layer, value: int) -> None:
        value = min(max(value, 0), layer.planned)
        self.done += value - layer.done
        layer.done = value

    @property
    def planned(self) -> bool:
        return bool(self.layers)

    def is_large(self, key: str) -> bool:
        layer = self.layers.get(key)
        if layer is None:
            return False
        return layer.planned >= LARGE_BYTES or layer.planned >= LARGE_SHARE * self.total > 0

    def percent(self) -> int:
        """Rounded down, and 100% only once every layer is done."""
        finished = bool(self.layers) and all(layer.outcome for layer in self.layers.values())
        if finished:
            return 100
        if self.total == 0:
            return 0
        return min(99, math.floor(100 * self.done / self.total))

    def rate(self, now: float) -> float | None:
        """Input bytes per second since the first byte was read."""
        if self.first_read is None or now <= self.first_read or self.read == 0:
            return None
        return self.read / (now - self.first_read)

    def status(self, now: float) -> str:
        """``380.0 MB of 912.0 MB, 12/100 layers, 21.3 MB/s, ETA 25.0s`` (the percentage apart)."""
        finished = sum(1 for layer in self.layers.values() if layer.outcome)
        parts = [
            f"{human_size(self.done)} of {human_size(self.total)}",
            f"{finished}/{len(self.layers)} layers",
        ]
        rate = self.rate(now)
        if rate is not None:
            parts.append(f"{human_size(rate)}/s")
            if self.done < self.total:
                parts.append(f"ETA {human_duration((self.total - self.done) / rate)}")
        return ", ".join(parts)

    def layer_line(self, key: str, now: float) -> str:
        """``layer 3/100: uploaded 61.2 MB in 12.3s`` for a finished layer."""
        layer = self.layers[key]
        word = _WORDS.get(layer.outcome or "", layer.outcome or "done")
        if layer.outcome in ("uploaded", "written") and layer.started is not None:
            return (
                f"{key}: {word} {human_size(layer.size)} in {human_duration(now - layer.started)}"
            )
        return f"{key}: {word} ({human_size(layer.size)})"

    def summary(self, verb: str, seconds: float) -> str | None:
        """``pushed 100 layers (12 uploaded, 85 reused, 3 mounted): 312.0 MB sent in 41.2s
        (7.6 MB/s)``; None when no layer was planned (nothing to tell)."""
        if not self.layers:
            return None
        counts: dict[str, int] = {}
        for layer in self.layers.values():
            word = _WORDS.get(layer.outcome or "", "not done")
            counts[word] = counts.get(word, 0) + 1
        order = ("uploaded", "written", "mounted", "reused", "not done")
        detail = ", ".join(f"{counts[w]} {w}" for w in order if w in counts)
        moved = "sent" if verb == "pushed" else "written"
        speed = f" ({human_size(self.sent / seconds)}/s)" if seconds > 0 else ""
        return (
            f"{verb} {len(self.layers)} layers ({detail}): "
            f"{human_size(self.sent)} {moved} in {human_duration(seconds)}{speed}"
        )


class ProgressDisplay:
    """Draws progress events on stderr in one of three modes, and tallies them in every mode.

    ``bar``: one total bar (percentage, sizes, rate, ETA) plus a bar per large layer in flight;
    ``plain``: a line every ``interval`` seconds and one per large layer, no control characters;
    ``none``: no progress. Messages (warnings, retries) are shown unless ``quiet``.
    """

    def __init__(
        self,
        mode: Mode = "none",
        *,
        quiet: bool = False,
        interval: float | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mode: Mode = "none" if quiet else mode
        self.quiet = quiet
        default = BAR_INTERVAL if self.mode == "bar" else PLAIN_INTERVAL
        self.interval = interval if interval is not None else default
        self.tally = Tally()
        self._stream = stream
        self._clock = clock
        self._lock = threading.RLock()
        self._started = clock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._total: tqdm[Any] | None = None
        self._bars: dict[str, tqdm[Any]] = {}
        self._drawn = 0.0

    @classmethod
    def for_cli(cls, progress: str, quiet: bool) -> ProgressDisplay:
        """``progress`` is one of :data:`MODES`; ``auto`` is a bar on a terminal, else plain."""
        mode = progress
        if mode == "auto":
            terminal = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
            mode = "bar" if terminal else "plain"
        interval = os.environ.get(INTERVAL_ENV)
        chosen = _interval(interval) if interval and mode == "plain" else None
        return cls(_mode(mode), quiet=quiet, interval=chosen)

    @property
    def out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def elapsed(self) -> float:
        return self._clock() - self._started

    def __enter__(self) -> ProgressDisplay:
        self._started = self._clock()
        if self.mode != "none":
            self._ticker = threading.Thread(target=self._tick, name="ociforge-progress")
            self._ticker.daemon = True  # never keeps a failing process alive
            self._ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
            if self._total is not None:
                self._total.close()
                self._total = None

    def handle(self, event: Event) -> None:
        """The library's ``on_event``: called from several threads, so under one lock."""
        with self._lock:
            now = self._clock()
            self.tally.apply(event, now)
            if isinstance(event, Message):
                if not self.quiet:
                    self._write(event.text)
            elif isinstance(event, BlobRetry):
                if not self.quiet:
                    self._write(f"{event.key}: retry {event.attempt}: {event.reason}")
            elif self.mode == "bar":
                self._bar_event(event, now)
            elif self.mode == "plain" and self._worth_a_line(event):
                self._write(f"ociforge: {self.tally.layer_line(event.key, now)}")

    def _worth_a_line(self, event: Event) -> TypeGuard[BlobFinished]:
        return isinstance(event, BlobFinished) and self.tally.is_large(event.key)

    def summary(self, verb: str, seconds: float | None = None) -> str | None:
        """The final line (see :meth:`Tally.summary`); ``seconds`` defaults to the time since
        the display was entered."""
        with self._lock:
            return self.tally.summary(verb, self.elapsed() if seconds is None else seconds)

    # -- plain -------------------------------------------------------------------------------

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        """What the display shows every ``interval`` (the ticker thread's step): a plain line,
        or the bar redrawn (its rate and ETA move while no byte does)."""
        with self._lock:
            now = self._clock()
            if self.mode == "bar":
                self._draw(now)
            elif self.mode == "plain":
                self._write(self._plain_status(now))

    def _plain_status(self, now: float) -> str:
        if not self.tally.planned:
            return f"ociforge: planning the image ({human_duration(now - self._started)})"
        return f"ociforge: {self.tally.percent()}% {self.tally.status(now)}"

    def _write(self, text: str) -> None:
        line = _printable(text)
        if self._total is not None or self._bars:
            _tqdm().write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    # -- bar ---------------------------------------------------------------------------------

    def _bar_event(self, event: Event, now: float) -> None:
        if isinstance(event, PlanReady):
            self._total = _tqdm()(
                total=max(1, self.tally.total),
                file=self.out,
                leave=False,  # the summary line says how it ended
                dynamic_ncols=True,
                bar_format="  0% |{bar}|",
            )
            self._draw(now)
        elif isinstance(event, InputProgress):
            self._layer_bar(event.key)
            if now - self._drawn >= self.interval:
                self._draw(now)
        elif self._worth_a_line(event):
            bar = self._bars.pop(event.key, None)
            if bar is not None:
                bar.close()
            self._write(f"ociforge: {self.tally.layer_line(event.key, now)}")
            self._draw(now)

    def _layer_bar(self, key: str) -> None:
        """A bar of its own for a large layer while it is read."""
        if key not in self._bars and self.tally.is_large(key) and self._total is not None:
            planned = self.tally.layers[key].planned
            self._bars[key] = _tqdm()(
                total=planned,
                file=self.out,
                leave=False,
                dynamic_ncols=True,
                bar_format=f"{key} |{{bar}}| of {human_size(planned)}",
            )

    def _draw(self, now: float) -> None:
        self._drawn = now
        for key, bar in self._bars.items():
            bar.n = self.tally.layers[key].done
            bar.refresh()
        if self._total is not None:
            # The text is ours (rate and ETA on bytes really read); tqdm draws the bar.
            status = self.tally.status(now).replace("{", "{{").replace("}", "}}")
            self._total.bar_format = f"{self.tally.percent():3d}% |{{bar}}| {status}"
            self._total.n = self.tally.done
            self._total.refresh()


def _mode(text: str) -> Mode:
    if text == "bar":
        return "bar"
    if text == "plain":
        return "plain"
    return "none"


def _printable(text: str) -> str:
    """One line without control characters: a registry's message must not move the cursor or
    colour a CI log."""
    return "".join(c if c.isprintable() else " " for c in text)


def _tqdm() -> type[tqdm[Any]]:
    """tqdm, imported on first use: most runs (CI logs, --quiet) draw no bar at all."""
    from tqdm import tqdm  # noqa: PLC0415 - deferred on purpose, see above

    return tqdm


def _interval(text: str) -> float:
    """``OCIFORGE_PROGRESS_INTERVAL``: positive seconds (0 would flood the log)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 86400:
        raise UsageError(f"{INTERVAL_ENV}={text!r}: give the seconds between progress lines")
    return seconds
