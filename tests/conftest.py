"""Suite-wide settings: nix never reaches for the network, and CI never skips."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.support.registry_fixtures", "tests.support.podman"]

# No substituters: every store path the tests need is built locally, and without this every nix
# call first spends seconds failing to reach cache.nixos.org on these offline machines.
os.environ["NIX_CONFIG"] = "substituters =\n" + os.environ.get("NIX_CONFIG", "")

# Run inside a GitLab job, the CLI would annotate every manifest from these; tests that want
# annotations set them themselves.
for _variable in ("CI_PROJECT_URL", "CI_COMMIT_SHA", "CI_COMMIT_TIMESTAMP"):
    os.environ.pop(_variable, None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Integration tests must run in CI: a skip there is a failure (see also the exit status)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if os.environ.get("CI") and skipped:
        terminalreporter.write_line(f"CI: {len(skipped)} test(s) skipped; skips fail CI", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if os.environ.get("CI") and skipped and exitstatus == 0:
        session.exitstatus = 1
