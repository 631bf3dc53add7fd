"""Progress events: small immutable objects the library hands to a callback.

The library never prints; the CLI turns these into bars or plain lines. A callback must be cheap,
must not raise and may be called from several threads at once. ``key`` names the thing in
progress (a layer's short id, "config", "manifest").

Progress is measured on input bytes (:class:`PlanReady` says how many each layer will read,
:class:`InputProgress` counts them as they are read): a layer's compressed size is unknown until
it is written, but its store paths' narSize is known before the first byte is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class PlanReady:
    """The layers are planned and about to be streamed: their keys, in order, and the input
    bytes each will read (store layers: their paths' narSize, close to the tar's length)."""

    keys: tuple[str, ...]
    input_bytes: tuple[int, ...]

    @property
    def total_input(self) -> int:
        return sum(self.input_bytes)


@dataclass(frozen=True)
class InputProgress:
    """More input bytes of a layer were read (and will be compressed and sent)."""

    key: str
    delta: int


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


Event = PlanReady | InputProgress | BlobStarted | BlobProgress | BlobFinished | BlobRetry | Message
ProgressCallback = Callable[[Event], None]


def ignore_event(event: Event) -> None:
    """The default callback: progress goes nowhere."""


def reporting(chunks: Iterable[bytes], key: str, on_event: ProgressCallback) -> Iterator[bytes]:
    """``chunks`` unchanged, with a :class:`BlobProgress` for each once the consumer asks for
    the next one, i.e. once this one was written (the progress bars' feed)."""
    for chunk in chunks:
        yield chunk
        on_event(BlobProgress(key, len(chunk)))


def reading(chunks: Iterable[bytes], key: str, on_event: ProgressCallback) -> Iterator[bytes]:
    """``chunks`` unchanged, with an :class:`InputProgress` for each as it is read (the input
    side of a layer: its tar, read a few chunks ahead of what is sent)."""
    for chunk in chunks:
        on_event(InputProgress(key, len(chunk)))
        yield chunk
