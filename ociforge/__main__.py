"""The ``ociforge`` command's entry point (also ``python -m ociforge``)."""

from __future__ import annotations

import os
import sys


def run() -> None:
    """Start the CLI without loading async backends it never uses.

    httpcore imports trio and anyio whenever they are installed, only to support async clients;
    ociforge is synchronous. Keeping them out saves ~150 ms of start-up, a third of a warm push.
    Pydantic scans every installed distribution's entry points for plugins the first time a
    model is built (tens of milliseconds in a big environment); the command has none to load.
    Done here, in the process's entry point, never in the library: an application that imports
    ociforge keeps its own modules and plugins.
    """
    for backend in ("trio", "anyio"):
        sys.modules.setdefault(backend, None)  # type: ignore[arg-type]
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    from ociforge.cli import main  # noqa: PLC0415 - after the guard above, on purpose

    main()


if __name__ == "__main__":
    run()
