"""A real registry on loopback for the push figures: Debian's ``docker-registry``
(distribution 2.8.2), plain HTTP on 127.0.0.1, anonymous, its storage inside the run's workdir.

The server itself is the integration tests' :class:`tests.support.registry.RegistryServer`;
this module only adds what the benchmarks need around it: the storage is deleted when the run
ends (every cold push writes the whole image again), and :func:`storage_wiper` empties it
between runs so that each cold push finds a registry holding none of its blobs.

Wiping the storage under a running registry is sound because distribution keeps no blob
metadata in memory unless ``storage.cache`` is configured (RegistryServer configures none):
every HEAD and every upload goes to the filesystem driver, which creates directories as it
writes. A fresh repository name per run would not do: distribution keeps blobs globally, and
skopeo's blob-info cache (``/var/lib/containers/cache`` for root, no flag turns it off) would
mount them from the previous run's repository instead of uploading them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.measure import MeasureError
from tests.support.registry import RegistryServer, RegistryStartError


@contextmanager
def loopback_registry(workdir: Path) -> Iterator[RegistryServer]:
    """A registry on a free loopback port for the ``with`` block; ``workdir`` is removed after."""
    server = RegistryServer(workdir)
    try:
        server.start()
    except (RegistryStartError, FileNotFoundError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise MeasureError(
            f"cannot start docker-registry (apt-get install docker-registry): {exc}"
        ) from exc
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def storage_wiper(server: RegistryServer) -> Callable[[], None]:
    """A ``prepare`` hook that leaves ``server`` with no repository and no blob."""

    def wipe() -> None:
        for child in server.storage_dir.iterdir():
            shutil.rmtree(child)

    return wipe
