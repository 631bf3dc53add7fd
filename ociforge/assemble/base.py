"""A base image (``--from``): layers whose digests are known and whose bytes come from elsewhere.

An image built on a base has the base's layers first, then ours. The base's layers are not
recipes: their bytes are fetched (from a registry or a layout) by the sink or the push, checked
against their digest while they stream; here is only what they are and how the config merges.
Nothing here does I/O: :class:`BaseImage` carries a ``blobs`` function that opens a blob's
bytes, supplied by whoever resolved the base (``publish.base``).

How the configs merge (ours is the image's own runtime config):

- ``Env``: the base's variables, ours over them; ``PATH`` is joined, ours first (so the Nix
  closure's programs win), then the base's entries not already in it.
- ``Entrypoint``/``Cmd``: as a Dockerfile's ``FROM``: our entrypoint replaces the base's and
  drops its ``Cmd``; our ``Cmd`` alone keeps the base's entrypoint.
- ``User``, ``WorkingDir``, ``StopSignal``: the base's unless we set them.
- ``Labels``: the base's, ours over them; ``ExposedPorts`` and ``Volumes``: both.
- history: the base's entries first (``empty_layer`` ones kept), then ours;
  ``rootfs.diff_ids``: the base's, then ours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ociforge.digest import Digest, HashingCounter
from ociforge.errors import DigestMismatchError, ImageError
from ociforge.image.config import RuntimeConfig
from ociforge.image.documents import Descriptor, ImageConfig

BASE_NAME_ANNOTATION = "org.opencontainers.image.base.name"
BASE_DIGEST_ANNOTATION = "org.opencontainers.image.base.digest"

# Opens one blob of the base: its bytes in chunks (checked by :func:`verified`).
BlobOpener = Callable[[Descriptor], Iterator[bytes]]


@dataclass(frozen=True)
class BaseImage:
    """An image to build on, pinned: its manifest digest, layers and config."""

    name: str  # as the user gave it (a tag, or a digest)
    digest: Digest  # the manifest's digest: what a tag resolved to
    layers: tuple[Descriptor, ...]  # as the base's manifest lists them
    config: ImageConfig
    blobs: BlobOpener = dataclasses.field(repr=False, compare=False)
    registry: str | None = None  # where the blobs are, for a cross-repository mount
    repository: str | None = None

    def __post_init__(self) -> None:
        # A config that lists other layers than the manifest would make a broken image.
        if len(self.config.diff_ids) != len(self.layers):
            raise ImageError(
                f"base image {self.name}: its config lists {len(self.config.diff_ids)} "
                f"layers (rootfs.diff_ids), its manifest {len(self.layers)}"
            )

    @property
    def annotations(self) -> dict[str, str]:
        """The OCI base-image annotations of a manifest built on this base."""
        return {BASE_NAME_ANNOTATION: self.name, BASE_DIGEST_ANNOTATION: str(self.digest)}

    def open_verified(self, descriptor: Descriptor) -> Iterator[bytes]:
        """The blob's bytes, checked against its digest and size while they stream."""
        return verified(self.blobs(descriptor), descriptor, f"base image {self.name}")


def verified(chunks: Iterable[bytes], descriptor: Descriptor, source: str) -> Iterator[bytes]:
    """``chunks``, failing as soon as they run past the descriptor's size, and at their end
    unless they hash to its digest: a consumer must not commit what it wrote before the end."""
    counter = HashingCounter()
    for chunk in counter.tap(chunks):
        if counter.size > descriptor.size:
            raise ImageError(
                f"{source}: blob {descriptor.digest} is longer than the {descriptor.size} "
                "bytes its manifest says: refused"
            )
        yield chunk
    if counter.digest != descriptor.digest or counter.size != descriptor.size:
        raise DigestMismatchError(
            f"{source}: blob {descriptor.digest} ({counter.size} bytes) does not match its "
            "digest: the registry sent other bytes",
            str(descriptor.digest),
            str(counter.digest),
        )


def merged_runtime(
    base: ImageConfig, ours: RuntimeConfig, default_path: str | None
) -> RuntimeConfig:
    """Our runtime config over the base's (see the module docstring)."""
    env: dict[str, str] = dict(base.env)
    env.update(ours.env)
    path = _joined_path(ours.env.get("PATH", default_path), dict(base.env).get("PATH"))
    if path is not None:
        env["PATH"] = path
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    if ours.entrypoint is not None:
        entrypoint, cmd = ours.entrypoint, ours.cmd
    else:
        entrypoint, cmd = base.entrypoint, ours.cmd if ours.cmd is not None else base.cmd
    return RuntimeConfig(
        entrypoint=entrypoint,
        cmd=cmd,
        env=env,
        workdir=ours.workdir or base.workdir,
        user=ours.user or base.user,
        labels={**base.labels, **ours.labels},
        exposed_ports=tuple(dict.fromkeys([*base.exposed_ports, *ours.exposed_ports])),
        volumes=tuple(dict.fromkeys([*base.volumes, *ours.volumes])),
        stop_signal=ours.stop_signal or base.stop_signal,
    )


def _joined_path(ours: str | None, base: str | None) -> str | None:
    if not base:
        return ours
    if not ours:
        return base
    entries = ours.split(":")
    return ":".join([*entries, *(e for e in base.split(":") if e not in entries)])


def config_on_base(config: Mapping[str, Any], base: ImageConfig) -> dict[str, Any]:
    """Our config document with the base's diff_ids and history before ours."""
    rootfs = dict(config["rootfs"])
    rootfs["diff_ids"] = [*(str(d) for d in base.diff_ids), *rootfs["diff_ids"]]
    history = [dict(entry) for entry in base.history]
    return {**config, "rootfs": rootfs, "history": [*history, *config.get("history", [])]}
