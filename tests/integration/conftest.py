"""Fixtures shared by the push tests (e2e, faults, TLS).

``closure`` is the push tests' closure (see ``make_push_closure``); a module that needs another
one (the build and nix-database tests) defines its own ``closure``, which pytest prefers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_push_e2e import make_push_closure
from tests.support.nixstore import BuiltClosure


@pytest.fixture(scope="module")
def closure(tmp_path_factory: pytest.TempPathFactory) -> BuiltClosure:
    return make_push_closure(tmp_path_factory.mktemp("push-closure"))


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty HOME for one ociforge run (no credentials, no cache, no config)."""
    return tmp_path_factory.mktemp("home")
