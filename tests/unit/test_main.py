"""The command's entry point keeps start-up lean: a warm push is mostly start-up."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
sys.argv = ["ociforge", "--version"]
from ociforge.__main__ import run
try:
    run()
except SystemExit:
    pass
import ociforge.cli, ociforge.api
unused = ("trio", "anyio", "rich", "pygments", "sqlite3", "pydantic", "cyclonedx", "spdx_tools")
loaded = [m for m in unused if sys.modules.get(m)]
print("loaded:", ",".join(loaded))
"""


def test_the_cli_does_not_import_what_it_never_uses() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "loaded: "
