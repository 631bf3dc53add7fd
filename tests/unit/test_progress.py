"""Progress a person can read: percentages on input bytes, human sizes, a line only for what
is worth one, and a final summary; fed by the events real pushes and builds emit."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

import ociforge
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
from ociforge.progress import ProgressDisplay, Tally, human_duration, human_size
from tests.support.fakeregistry import FakeRegistry
from tests.support.faulttransport import Fault, ResetMidBody, around
from tests.unit.test_push_hermetic import FILE_SIZE, make_closure, push

MB = 1_000_000
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plain(clock: Clock, **kw: object) -> tuple[ProgressDisplay, io.StringIO]:
    out = io.StringIO()
    return ProgressDisplay("plain", stream=out, clock=clock, **kw), out  # type: ignore[arg-type]


# One 300 MB layer (a line of its own), 40 small ones (summarised), a tiny customisation layer.
KEYS = tuple(f"layer {i}/42" for i in range(1, 43))
SIZES = (300 * MB, *(MB,) * 40, 2000)


def stream_layer(display: ProgressDisplay, clock: Clock, key: str, size: int) -> None:
    display.handle(BlobStarted(key, None))
    for _ in range(4):
        display.handle(InputProgress(key, size // 4))
        display.handle(BlobProgress(key, size // 8))
        clock.now += 1
    display.handle(BlobFinished(key, "uploaded", size // 2, "sha256:" + "a" * 64))


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (204_638_398, "204.6 MB"), (9.1e11, "910.0 GB")],
)
def test_sizes_are_human(count: float, text: str) -> None:
    assert human_size(count) == text


def test_durations_are_human() -> None:
    assert [human_duration(s) for s in (4.24, 65, 7380)] == ["4.2s", "1m05s", "2h03m"]


def test_plain_lines_show_percent_sizes_rate_and_eta_and_no_control_characters() -> None:
    clock = Clock()
    display, out = plain(clock)
    display.handle(PlanReady(KEYS, SIZES))
    display.handle(BlobStarted(KEYS[0], None))
    display.handle(InputProgress(KEYS[0], 100 * MB))
    clock.now += 10
    display.tick()
    line = out.getvalue().splitlines()[-1]
    # 100 MB of 340 MB read in 10 s: 10 MB/s, 240 MB to go.
    assert line == "ociforge: 29% 100.0 MB of 340.0 MB, 0/42 layers, 10.0 MB/s, ETA 24.0s"
    assert not CONTROL.search(out.getvalue())


def test_only_large_layers_get_a_line_and_the_summary_counts_every_one() -> None:
    clock = Clock()
    display, out = plain(clock)
    display.handle(PlanReady(KEYS, SIZES))
    for key, size in zip(KEYS, SIZES, strict=True):
        stream_layer(display, clock, key, size)
    lines = out.getvalue().splitlines()
    assert lines == ["ociforge: layer 1/42: uploaded 150.0 MB in 4.0s"]
    summary = display.summary("pushed", seconds=20.0)
    assert summary == "pushed 42 layers (42 uploaded): 170.0 MB sent in 20.0s (8.5 MB/s)"


def test_a_retried_layer_is_not_counted_twice_and_percent_stays_below_100_until_done() -> None:
    tally = Tally()
    tally.apply(PlanReady(("a", "b"), (1000, 1000)), 0)
    tally.apply(BlobStarted("a", None), 0)
    tally.apply(InputProgress("a", 900), 1)
    tally.apply(BlobRetry("a", 1, "reset"), 1)
    tally.apply(InputProgress("a", 900), 2)
    assert tally.percent() == 45
    tally.apply(InputProgress("a", 400), 2)  # a tar is a little longer than its narSize
    tally.apply(BlobFinished("b", "skipped", 10, "sha256:b"), 2)
    assert tally.percent() == 99  # rounded down: not 100% before the last layer is done
    tally.apply(BlobFinished("a", "uploaded", 10, "sha256:a"), 3)
    assert tally.percent() == 100


def test_messages_and_retries_are_lines_unless_quiet_and_lose_control_characters() -> None:
    clock = Clock()
    display, out = plain(clock)
    display.handle(Message("warning: no /bin/sh\x1b[31m"))
    display.handle(BlobRetry("layer 1/2", 1, "503 from\r proxy"))
    assert out.getvalue().splitlines() == [
        "warning: no /bin/sh [31m",
        "layer 1/2: retry 1: 503 from  proxy",
    ]
    quiet, silent = plain(clock, quiet=True)
    quiet.handle(PlanReady(KEYS, SIZES))
    quiet.handle(Message("warning"))
    quiet.tick()
    assert silent.getvalue() == ""


def test_before_the_plan_a_plain_line_says_the_image_is_being_planned() -> None:
    clock = Clock()
    display, out = plain(clock)
    with display:
        clock.now += 30
        display.tick()
    assert out.getvalue() == "ociforge: planning the image (30.0s)\n"


def test_the_bar_shows_percent_and_eta_and_a_large_layer_has_a_bar_of_its_own() -> None:
    clock = Clock()
    out = io.StringIO()
    display = ProgressDisplay("bar", stream=out, clock=clock, interval=3600)
    with display:
        display.handle(PlanReady(KEYS, SIZES))
        display.handle(BlobStarted(KEYS[0], None))
        display.handle(InputProgress(KEYS[0], 170 * MB))
        clock.now += 10
        display.tick()
        drawn = out.getvalue()
        stream_layer(display, clock, KEYS[0], SIZES[0])
    frames = re.split(r"[\r\n]", drawn)
    assert any(re.match(r" 49% \|[^|]+\| 170.0 MB of 340.0 MB, .*ETA 10.0s", f) for f in frames)
    assert any(re.match(r"layer 1/42 \|[^|]+\| of 300.0 MB", f) for f in frames), frames
    assert "ociforge: layer 1/42: uploaded 150.0 MB in 4.0s\n" in out.getvalue()


# -- the events real pushes and builds emit -------------------------------------------------------


def tally_of(events: list[Event]) -> Tally:
    tally = Tally()
    for event in events:
        tally.apply(event, 0)
    return tally


@pytest.fixture(scope="module")
def closures(tmp_path_factory: pytest.TempPathFactory) -> tuple[ociforge.Closure, ...]:
    store = tmp_path_factory.mktemp("progress") / "store"
    libs = ("libc", "libssl", "libz")
    return make_closure(store, "2.0", libs), make_closure(store, "1.0", libs)


def test_a_cold_push_plans_the_closures_nar_size_and_reaches_100_percent(
    closures: tuple[ociforge.Closure, ...], tmp_path: Path
) -> None:
    events: list[Event] = []
    push(closures[0], FakeRegistry(auth="bearer").transport(), home=tmp_path, events=events)
    plan = [e for e in events if isinstance(e, PlanReady)]
    assert len(plan) == 1 and plan[0].input_bytes[:4] == (FILE_SIZE,) * 4
    assert plan[0].total_input < 4 * FILE_SIZE + 20_000  # + the small customisation layer
    read = sum(e.delta for e in events if isinstance(e, InputProgress))
    assert read >= plan[0].total_input  # tar headers and padding come on top of narSize
    tally = tally_of(events)
    assert tally.percent() == 100
    assert (tally.summary("pushed", 1.0) or "").startswith("pushed 5 layers (5 uploaded): ")


def test_a_warm_push_counts_the_layers_the_tag_already_holds_as_reused(
    closures: tuple[ociforge.Closure, ...], tmp_path: Path
) -> None:
    fake = FakeRegistry(auth="bearer")
    push(closures[1], fake.transport(), home=tmp_path)
    events: list[Event] = []
    push(closures[0], fake.transport(), home=tmp_path, events=events)
    tally = tally_of(events)
    assert tally.percent() == 100
    # The libs are shared with the older image; the app and the root links are new.
    assert (tally.summary("pushed", 1.0) or "").startswith("pushed 5 layers (2 uploaded, 3 reused)")


def test_a_layer_restarted_mid_body_is_counted_once(
    closures: tuple[ociforge.Closure, ...], tmp_path: Path
) -> None:
    fake = FakeRegistry(auth="bearer")
    transport = around(fake, Fault("PATCH", r"/blobs/uploads/", ResetMidBody(1000)))
    events: list[Event] = []
    push(closures[0], transport, home=tmp_path, events=events)
    assert any(isinstance(e, BlobRetry) for e in events)
    tally = tally_of(events)
    assert tally.read > tally.total  # the restarted layer was read twice...
    assert tally.done == tally.total and tally.percent() == 100  # ...and counted once


@pytest.mark.parametrize("target", ["oci:{tmp}/layout:t", "docker-archive:{tmp}/image.tar"])
def test_a_build_reports_its_plan_and_input_like_a_push(
    closures: tuple[ociforge.Closure, ...], tmp_path: Path, target: str
) -> None:
    events: list[Event] = []
    ociforge.build(closures[0], target.format(tmp=tmp_path), on_event=events.append)
    assert [type(e) for e in events].count(PlanReady) == 1
    tally = tally_of(events)
    assert tally.percent() == 100
    assert (tally.summary("wrote", 1.0) or "").startswith("wrote 5 layers (5 written): ")
