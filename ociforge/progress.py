"""tqdm bars on stderr for progress events (the CLI's side of the progress callback)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ociforge.events import BlobFinished, BlobProgress, BlobRetry, BlobStarted, Event, Message

if TYPE_CHECKING:
    from tqdm import tqdm


class ProgressDisplay:
    """One bar per blob in flight plus an overall byte counter; silent when disabled."""

    def __init__(self, *, enabled: bool, quiet: bool) -> None:
        self.enabled = enabled and not quiet
        self.quiet = quiet
        self._bars: dict[str, tqdm[Any]] = {}
        self._total: tqdm[Any] | None = None

    @classmethod
    def for_cli(cls, progress: bool | None, quiet: bool) -> ProgressDisplay:
        enabled = sys.stderr.isatty() if progress is None else progress
        return cls(enabled=enabled, quiet=quiet)

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self._total = _tqdm()(
                desc="total", unit="B", unit_scale=True, file=sys.stderr, position=0, leave=True
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for bar in self._bars.values():
            bar.close()
        if self._total is not None:
            self._total.close()

    def handle(self, event: Event) -> None:
        if isinstance(event, Message):
            if not self.quiet:
                self._write(event.text)
            return
        if not self.enabled:
            return
        if isinstance(event, BlobStarted):
            self._bars[event.key] = _tqdm()(
                desc=event.key,
                total=event.total,
                unit="B",
                unit_scale=True,
                file=sys.stderr,
                leave=False,
            )
        elif isinstance(event, BlobProgress):
            bar = self._bars.get(event.key)
            if bar is not None:
                bar.update(event.delta)
            if self._total is not None:
                self._total.update(event.delta)
        elif isinstance(event, BlobFinished):
            bar = self._bars.pop(event.key, None)
            if bar is not None:
                bar.close()
            self._write(f"{event.key}: {event.outcome} {event.digest[:19]} ({event.size} B)")
        elif isinstance(event, BlobRetry):
            self._write(f"{event.key}: retry {event.attempt}: {event.reason}")

    def _write(self, text: str) -> None:
        if self.enabled:
            _tqdm().write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)


def _tqdm() -> type[tqdm[Any]]:
    """tqdm, imported on first use: most runs (CI logs, --quiet) draw no bar at all."""
    from tqdm import tqdm  # noqa: PLC0415 - deferred on purpose, see above

    return tqdm
