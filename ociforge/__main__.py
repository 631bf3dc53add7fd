"""The ``ociforge`` command's entry point (also ``python -m ociforge``)."""

from __future__ import annotations

import gc
import sys


def run() -> None:
    """Start the CLI without loading what it never uses.

    - httpcore imports trio and anyio whenever they are installed, only to support async
      clients; ociforge is synchronous (~150 ms of start-up, a third of a warm push).
    - httpx imports its own command line (click, rich, pygments) whenever rich is installed;
      blocked, httpx falls back to a stub ``httpx.main``.
    - The imports allocate some 100k objects that live as long as the process; the cyclic
      garbage collector ran five full passes over them during start-up (~15 ms of a warm
      push). It is off while importing, and what the imports made is frozen out of its way.

    Done here, in the process's entry point, never in the library: an application that imports
    ociforge keeps its own modules and plugins.
    """
    for unused in ("trio", "anyio", "httpx._main"):
        sys.modules.setdefault(unused, None)  # type: ignore[arg-type]
    gc.disable()
    from ociforge.cli import main  # noqa: PLC0415 - after the guard above, on purpose

    gc.freeze()
    gc.enable()
    main()


if __name__ == "__main__":
    run()
