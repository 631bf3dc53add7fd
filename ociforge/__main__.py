"""The ``ociforge`` command's entry point (also ``python -m ociforge``)."""

from __future__ import annotations

import sys


def run() -> None:
    """Start the CLI without loading async backends it never uses.

    httpcore imports trio and anyio whenever they are installed, only to support async clients;
    ociforge is synchronous. Keeping them out saves ~150 ms of start-up, a third of a warm push.
    Done here, in the process's entry point, never in the library: an application that imports
    ociforge keeps its own modules.
    """
    for backend in ("trio", "anyio"):
        sys.modules.setdefault(backend, None)  # type: ignore[arg-type]
    from ociforge.cli import main  # noqa: PLC0415 - after the guard above, on purpose

    main()


if __name__ == "__main__":
    run()
