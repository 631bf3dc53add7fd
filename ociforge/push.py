"""Push an image to registries: layers (streamed, in parallel), then config, then manifests.

Upload order is forced by the digests and by the registry: a manifest may only reference blobs
the repository already has. So nothing is tagged until every blob is in place, and a failed push
leaves every tag where it was.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ociforge.assemble import ImagePlan
from ociforge.digest import Digest
from ociforge.errors import UsageError
from ociforge.events import ProgressCallback, ignore_event
from ociforge.image import Descriptor, OciLayout, parse_manifest
from ociforge.layer import LayerDigests, LayerStream
from ociforge.reference import Reference
from ociforge.registry import (
    BlobJob,
    BlobResult,
    Credentials,
    HashingStream,
    RegistryClient,
    put_manifest,
    resolve_credentials,
    upload_all,
    upload_bytes,
)

_READ_SIZE = 1 << 20


@dataclass(frozen=True)
class RegistryOptions:
    """How to talk to registries; nothing here changes the image's bytes."""

    credentials: Credentials | None = None
    insecure: bool | None = None  # None: plain http only for loopback hosts
    ca_file: str | None = None
    jobs: int = 4
    chunk_size: int | None = None
    mount_from: str | None = None
    retries: int = 5
    env: Mapping[str, str] | None = None  # default: os.environ (credential chain)
    home: Path | None = None


@dataclass(frozen=True)
class PushedBlob:
    digest: str
    size: int
    outcome: str  # uploaded / skipped / mounted
    media_type: str = ""


@dataclass(frozen=True)
class PushResult:
    references: tuple[str, ...]
    manifest_digest: str
    blobs: tuple[PushedBlob, ...]
    seconds: float


def check_same_registry(refs: Sequence[Reference]) -> None:
    if not refs:
        raise UsageError("give at least one destination REGISTRY/REPOSITORY[:TAG]")
    if len({r.registry for r in refs}) > 1:
        raise UsageError("all destinations of one push must be on the same registry")
    for ref in refs:
        if ref.digest is not None:
            raise UsageError(f"destination {ref} names a digest: push to a tag (REPO:TAG)")


def open_client(registry: str, opts: RegistryOptions, on_event: ProgressCallback) -> RegistryClient:
    """A client whose credentials come from the one precedence chain (logged, never shown)."""
    creds = resolve_credentials(
        registry,
        env=os.environ if opts.env is None else opts.env,
        home=opts.home or Path.home(),
        explicit=opts.credentials,
    )
    return RegistryClient(
        registry,
        credentials=creds,
        insecure=opts.insecure,
        ca_file=opts.ca_file,
        retries=opts.retries,
        on_event=on_event,
    )


def push_plan(
    plan: ImagePlan,
    refs: Sequence[Reference],
    opts: RegistryOptions,
    on_event: ProgressCallback = ignore_event,
) -> PushResult:
    """Stream the plan's layers to the first destination, then tag every destination."""
    check_same_registry(refs)
    started = time.monotonic()
    with open_client(refs[0].registry, opts, on_event) as client:
        client.ping()
        streams: dict[str, LayerStream] = {}
        lock = threading.Lock()
        jobs = [
            BlobJob(
                key=f"layer {i + 1}/{len(plan.layers)}",
                open_stream=_remembering(layer.recipe.open, streams, f"{i}", lock),
                description=layer.comment,
            )
            for i, layer in enumerate(plan.layers)
        ]
        results = upload_all(
            client, refs[0].repository, jobs, max_workers=opts.jobs, chunk_size=opts.chunk_size
        )
        digests: list[LayerDigests] = [streams[str(i)].result for i in range(len(jobs))]
        built = plan.finish(digests)
        blobs = [
            _pushed(r, layer.media_type) for r, layer in zip(results, built.layers, strict=True)
        ]
        blobs += _copy_to_other_repos(client, refs, built.layers, opts)
        manifest_digest = _tag_all(
            client, refs, built.config, built.manifest, built.manifest_media_type
        )
    return PushResult(_tagged(refs), manifest_digest, tuple(blobs), time.monotonic() - started)


def push_layout(
    layout_dir: str,
    tag: str | None,
    refs: Sequence[Reference],
    opts: RegistryOptions,
    on_event: ProgressCallback = ignore_event,
) -> PushResult:
    """Push an image already built into an OCI layout, byte for byte."""
    check_same_registry(refs)
    started = time.monotonic()
    layout = OciLayout(layout_dir, create=False)
    manifest_bytes, media_type = layout.resolve(tag)
    manifest = parse_manifest(manifest_bytes)
    descriptors = [*manifest.layers, manifest.config]
    jobs = [
        BlobJob(
            key=f"layer {i + 1}/{len(manifest.layers)}" if i < len(manifest.layers) else "config",
            open_stream=_file_opener(layout, d.sha256),
            expected=d.sha256,
            mount_from=opts.mount_from,
            size=d.size,
        )
        for i, d in enumerate(descriptors)
    ]
    with open_client(refs[0].registry, opts, on_event) as client:
        client.ping()
        results = upload_all(
            client, refs[0].repository, jobs, max_workers=opts.jobs, chunk_size=opts.chunk_size
        )
        blobs = [_pushed(r, d.media_type) for r, d in zip(results, descriptors, strict=True)]
        blobs += _copy_to_other_repos(client, refs, descriptors, opts)
        manifest_digest = _tag_all(client, refs, None, manifest_bytes, media_type)
    return PushResult(_tagged(refs), manifest_digest, tuple(blobs), time.monotonic() - started)


def _remembering(
    open_layer: Callable[[], LayerStream],
    streams: dict[str, LayerStream],
    key: str,
    lock: threading.Lock,
) -> Callable[[], LayerStream]:
    """Keep the latest stream of each layer: after a retry, the last one holds the digests."""

    def opener() -> LayerStream:
        stream = open_layer()
        with lock:
            streams[key] = stream
        return stream

    return opener


def _file_opener(layout: OciLayout, digest: Digest) -> Callable[[], HashingStream]:
    def opener() -> HashingStream:
        return HashingStream(_read_file(layout, digest))

    return opener


def _read_file(layout: OciLayout, digest: Digest) -> Iterator[bytes]:
    with layout.open_blob(digest) as f:
        while chunk := f.read(_READ_SIZE):
            yield chunk


def _copy_to_other_repos(
    client: RegistryClient,
    refs: Sequence[Reference],
    descriptors: Sequence[Descriptor],
    opts: RegistryOptions,
) -> list[PushedBlob]:
    """Other repositories of the same registry get the blobs by cross-repository mount."""
    source = refs[0].repository
    others = sorted({r.repository for r in refs[1:]} - {source})
    pushed: list[PushedBlob] = []
    for repo in others:
        jobs = [
            BlobJob(
                key=f"{repo} {d.sha256.hex[:12]}",
                open_stream=_unavailable(d.sha256),
                expected=d.sha256,
                mount_from=source,
                size=d.size,
            )
            for d in descriptors
        ]
        results = upload_all(client, repo, jobs, max_workers=opts.jobs)
        pushed += [_pushed(r, d.media_type) for r, d in zip(results, descriptors, strict=True)]
    return pushed


def _unavailable(digest: Digest) -> Callable[[], HashingStream]:
    def opener() -> HashingStream:
        raise UsageError(
            f"blob {digest} could not be mounted into the other destination repository: "
            "push to each repository separately"
        )

    return opener


def _tag_all(
    client: RegistryClient,
    refs: Sequence[Reference],
    config: bytes | None,
    manifest: bytes,
    media_type: str,
) -> str:
    """Config blob (when built here), then the manifest under every tag or digest asked for."""
    digest = Digest.of(manifest)
    for repo in dict.fromkeys(r.repository for r in refs):
        if config is not None:
            upload_bytes(client, repo, config)
    for ref in refs:
        put_manifest(client, ref.repository, ref.manifest_ref, manifest, media_type)
    return str(digest)


def _tagged(refs: Sequence[Reference]) -> tuple[str, ...]:
    return tuple(f"{r.name}:{r.manifest_ref}" for r in refs)


def _pushed(result: BlobResult, media_type: str) -> PushedBlob:
    return PushedBlob(str(result.digest), result.size, result.outcome, media_type)
