"""``python -m ociforge`` is the ``ociforge`` command."""

from ociforge.cli import main

main()
