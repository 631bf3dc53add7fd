"""Fixtures shared by the unit tests of the streaming pipeline (pipeline.py, layer.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest


@pytest.fixture
def new_readers() -> Callable[[], list[threading.Thread]]:
    """The prefetch threads started during this test (and still alive)."""
    before = set(threading.enumerate())

    def alive() -> list[threading.Thread]:
        return [
            t for t in threading.enumerate() if t.name == "ociforge-prefetch" and t not in before
        ]

    return alive
