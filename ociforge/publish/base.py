"""Resolving ``--from``: a base image found, pinned by digest, and its blobs made readable.

A registry base's manifest is fetched once by what the user named (a tag, or a digest, which is
checked); an index is searched for the image's own platform and that manifest fetched by its
digest; the config (digest-checked, size-bounded, strictly parsed) must be for the same platform
and list as many diff_ids as the manifest has layers. From then on every blob of the base is
read by digest and checked while it streams (:meth:`BaseImage.open_verified`): nothing a
registry or a layout says about the base is trusted unchecked.

A :class:`BaseResolver` owns the clients that base blobs stream from; it stays open while the
image is written or pushed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from types import TracebackType

from ociforge.assemble import ImagePlan
from ociforge.assemble.base import BaseImage
from ociforge.assemble.plan import image_platform
from ociforge.digest import Digest
from ociforge.errors import DigestMismatchError, ImageError, UsageError
from ociforge.events import Message, ProgressCallback, ignore_event
from ociforge.image.documents import (
    Descriptor,
    Index,
    parse_image_config,
    parse_index,
    parse_manifest,
)
from ociforge.publish.options import RegistryOptions
from ociforge.reference import parse_reference
from ociforge.registry import (
    BlobJob,
    HashingStream,
    RegistryClient,
    get_manifest,
    get_small_blob,
)
from ociforge.registry.download import BlobDownload
from ociforge.sinks.oci_layout import OciLayout
from ociforge.source import parse_layout_ref
from ociforge.spec import INDEX_TYPES, ImageFormat, layer_media_type_in

Platform3 = tuple[str, str, str | None]
_READ_SIZE = 1 << 20


class BaseResolver:
    """Resolves the base images of plans; close it (or use ``with``) once they are written."""

    def __init__(
        self,
        options: RegistryOptions | None = None,
        on_event: ProgressCallback = ignore_event,
        *,
        destination: str | None = None,
    ) -> None:
        self.options = options or RegistryOptions()
        self.on_event = on_event
        # The options' explicit credentials belong to the destination registry (a push's), or
        # to the base's when there is none (a build): never sent to another one.
        self.destination = destination
        self._clients: dict[str, RegistryClient] = {}

    def attach(self, plan: ImagePlan) -> ImagePlan:
        """``plan`` with its ``--from`` base resolved (the plan itself if it has none)."""
        name = plan.options.base
        if name is None:
            return plan
        platform, fmt = image_platform(plan), plan.options.format
        if name.startswith("oci:"):
            base = self._from_layout(name, platform)
        else:
            base = self._from_registry(name, platform)
        _check_base(base, platform, fmt)
        return dataclasses.replace(plan, base=base)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def __enter__(self) -> BaseResolver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _from_registry(self, name: str, platform: Platform3) -> BaseImage:
        ref = parse_reference(name)
        client, repo = self._client(ref.registry), ref.repository
        found = get_manifest(client, repo, ref.manifest_ref)
        if found is None:
            raise UsageError(f"base image {name} not found in {ref.registry}")
        data, media_type, digest = found
        if ref.digest is None:
            self.on_event(Message(f"base image {name} resolved to {digest}"))
        if _is_index(data, media_type):
            child = _pick(parse_index(data), platform, name)
            pinned = get_manifest(client, repo, str(child.digest))
            if pinned is None:
                raise ImageError(f"base image {name}: its {_show(platform)} manifest is missing")
            data = pinned[0]
        manifest = parse_manifest(data)
        config = get_small_blob(client, repo, manifest.config.digest)
        if config is None:
            raise ImageError(f"base image {name}: its config {manifest.config.digest} is missing")

        def blobs(descriptor: Descriptor) -> Iterator[bytes]:
            # Checked again by BaseImage.open (as a layout's blobs are): the registry's
            # answer is hashed here too, so its error names the registry.
            return iter(BlobDownload(client, repo, descriptor.digest, descriptor.size))

        return BaseImage(
            name=name,
            digest=digest,
            layers=manifest.layers,
            config=parse_image_config(config),
            blobs=blobs,
            registry=ref.registry,
            repository=repo,
        )

    def _from_layout(self, name: str, platform: Platform3) -> BaseImage:
        ref = parse_layout_ref(name)
        layout = OciLayout(ref.directory, create=False)
        data, _ = layout.resolve(ref.tag)
        manifest = parse_manifest(data)
        config = layout.read_blob(manifest.config.digest)

        def blobs(descriptor: Descriptor) -> Iterator[bytes]:
            with layout.open_blob(descriptor.digest) as f:
                while chunk := f.read(_READ_SIZE):
                    yield chunk

        digest = Digest.of(data)
        self.on_event(Message(f"base image {name} resolved to {digest}"))
        return BaseImage(name, digest, manifest.layers, parse_image_config(config), blobs)

    def _client(self, registry: str) -> RegistryClient:
        """One client per base registry; the destination's explicit credentials only for it."""
        if registry not in self._clients:
            mine = self.destination in (None, registry)
            self._clients[registry] = self.options.client(
                registry, self.on_event, explicit_credentials=mine
            )
        return self._clients[registry]


def base_blob_jobs(base: BaseImage | None, repo: str, registry: str) -> list[BlobJob]:
    """A push job per base layer: skipped if ``repo`` has it, mounted from the base's
    repository when it is on this ``registry``, else streamed from the base's registry and
    checked as it streams."""
    if base is None:
        return []
    same = base.registry == registry and base.repository != repo
    count = len(base.layers)
    return [
        BlobJob(
            key=f"base layer {i + 1}/{count}",
            open_stream=functools.partial(_verified_stream, base, d),
            expected=d.digest,
            mount_from=base.repository if same else None,
            size=d.size,
            description=f"base image {base.name}",
        )
        for i, d in enumerate(base.layers)
    ]


def of_base(base: BaseImage | None, error: DigestMismatchError) -> bool:
    """Whether ``error`` is about one of the base's blobs."""
    return base is not None and any(str(d.digest) == error.expected for d in base.layers)


def _verified_stream(base: BaseImage, descriptor: Descriptor) -> HashingStream:
    return HashingStream(base.open_verified(descriptor))


def _is_index(data: bytes, media_type: str) -> bool:
    if media_type in INDEX_TYPES:
        return True
    try:
        parse_manifest(data)
    except ImageError:
        return True  # parse_index says what it is, if it is anything
    return False


def _pick(index: Index, platform: Platform3, name: str) -> Descriptor:
    """The index's manifest for ``platform``; the variant decides only when both name one."""
    arch, os_name, variant = platform
    found = [
        d
        for d in index.manifests
        if d.platform is not None
        and (d.platform.architecture, d.platform.os) == (arch, os_name)
        and (variant is None or d.platform.variant in (None, variant))
    ]
    if not found:
        offered = ", ".join(
            _show((d.platform.architecture, d.platform.os, d.platform.variant))
            for d in index.manifests
            if d.platform is not None
        )
        raise UsageError(
            f"base image {name} has no {_show(platform)} image (it has: {offered or 'none'}); "
            "pick another base or --arch"
        )
    return found[0]


def _check_base(base: BaseImage, platform: Platform3, fmt: ImageFormat) -> None:
    config = base.config
    if (config.architecture, config.os) != platform[:2]:
        raise UsageError(
            f"base image {base.name} is {config.os}/{config.architecture}, the image is "
            f"{_show(platform)}: pick a base for that platform, or --arch"
        )
    for layer in base.layers:
        layer_media_type_in(fmt, layer.media_type)  # refuses a type the format cannot carry


def _show(platform: Platform3) -> str:
    arch, os_name, variant = platform
    return f"{os_name}/{arch}" + (f"/{variant}" if variant else "")
