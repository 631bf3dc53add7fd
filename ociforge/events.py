"""Progress events: small immutable objects the library hands to a callback.

The library never prints; the CLI turns these into tqdm bars. A callback must be cheap and must
not raise. ``key`` names the thing in progress (a layer's short id, "config", "manifest").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class BlobStarted:
    """A blob (layer, config) begins: uploaded, written or checked."""

    key: str
    total: int | None  # bytes expected, when known (a streamed layer's size is not)
    description: str = ""


@dataclass(frozen=True)
class BlobProgress:
    """More bytes of a blob are done."""

    key: str
    delta: int  # bytes since the previous event for this key


@dataclass(frozen=True)
class BlobFinished:
    """A blob is done, and how: its digest and size are final."""

    key: str
    outcome: Literal["uploaded", "skipped", "mounted", "written", "reused"]
    size: int
    digest: str


@dataclass(frozen=True)
class BlobRetry:
    """A request for a blob failed and is tried again."""

    key: str
    attempt: int
    reason: str  # already redacted


@dataclass(frozen=True)
class Message:
    """One line for the user (a warning, a retry note), already redacted."""

    text: str


Event = BlobStarted | BlobProgress | BlobFinished | BlobRetry | Message
ProgressCallback = Callable[[Event], None]


def ignore_event(event: Event) -> None:
    """The default callback: progress goes nowhere."""


def reporting(chunks: Iterable[bytes], key: str, on_event: ProgressCallback) -> Iterator[bytes]:
    """``chunks`` unchanged, with a :class:`BlobProgress` for each once the consumer asks for
    the next one, i.e. once this one was written (the progress bars' feed)."""
    for chunk in chunks:
        yield chunk
        on_event(BlobProgress(key, len(chunk)))
