"""Push an image to registries: layers (streamed, in parallel), then config, then manifests.

Upload order is forced by the digests and by the registry: a manifest may only reference blobs
the repository already has. So nothing is tagged until every blob is in place, and a failed push
leaves every tag where it was.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ociforge.assemble import ImagePlan
from ociforge.assemble.layer import LayerDigests, LayerStream
from ociforge.digest import Digest
from ociforge.errors import DigestMismatchError, ImageError, RegistryError, UsageError
from ociforge.events import Message, ProgressCallback, ignore_event
from ociforge.image.documents import Descriptor, parse_manifest
from ociforge.publish.cache import LayerCache, default_cache_dir
from ociforge.publish.reuse import LayerPreview, known_layers, preview_layers
from ociforge.reference import Reference
from ociforge.registry import (
    BlobJob,
    BlobResult,
    Credentials,
    HashingStream,
    RegistryClient,
    Transport,
    get_manifest,
    put_manifest,
    repository_scope,
    resolve_credentials,
    upload_all,
    upload_bytes,
)
from ociforge.threads import Background, cpu_count

if TYPE_CHECKING:
    from ociforge.image import OciLayout

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
    # Local layer cache (default: $OCIFORGE_CACHE_DIR or the XDG cache dir); None disables it
    # and leaves only what the registry's previous manifests tell.
    cache_dir: str | None = field(default_factory=lambda: str(default_cache_dir()))
    cache_from: tuple[Reference, ...] = ()  # more images (same registry) to reuse layers from
    # The test seam: an httpx transport (httpx.MockTransport, a fault injector) instead of the
    # network, and the first retry wait in seconds (doubles each time; Retry-After wins).
    transport: Transport | None = None
    backoff: float = 0.5

    def __post_init__(self) -> None:
        # Checked here, for API callers too, before nix builds anything.
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise UsageError(f"--jobs must be at least 1, got {self.jobs!r}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise UsageError(f"--chunk-size must be positive, got {self.chunk_size!r}")
        if self.retries < 0:
            raise UsageError(f"retries must not be negative, got {self.retries!r}")


@dataclass(frozen=True)
class PushedBlob:
    """What a push did with one blob."""

    digest: str
    size: int
    outcome: str  # uploaded / skipped / mounted
    media_type: str = ""


@dataclass(frozen=True)
class PushResult:
    """What a push did: the tags, the manifest digest they hold, every blob's outcome."""

    references: tuple[str, ...]
    manifest_digest: str
    blobs: tuple[PushedBlob, ...]
    seconds: float  # the whole push, reading the closure with nix included (they overlap)
    up_to_date: bool = False  # every tag already held this manifest: nothing was sent


def check_destinations(refs: Sequence[Reference], cache_from: Sequence[Reference] = ()) -> None:
    """One registry for the whole push; destinations are tags, --cache-from may be digests."""
    if not refs:
        raise UsageError("give at least one destination REGISTRY/REPOSITORY[:TAG]")
    if len({r.registry for r in refs}) > 1:
        raise UsageError("all destinations of one push must be on the same registry")
    for ref in refs:
        if ref.digest is not None:
            raise UsageError(f"destination {ref} names a digest: push to a tag (REPO:TAG)")
    for ref in cache_from:
        if ref.registry != refs[0].registry:
            raise UsageError(
                f"--cache-from {ref} is on another registry than the destinations: "
                f"layers are only reused within {refs[0].registry}"
            )


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
        backoff=opts.backoff,
        transport=opts.transport,
        on_event=on_event,
    )


PlanSource = ImagePlan | Callable[[], ImagePlan]
Tags = dict[tuple[str, str], tuple[bytes, str, Digest] | None]  # (repo, tag) -> its manifest


def push_plan(
    plan: PlanSource,
    refs: Sequence[Reference],
    opts: RegistryOptions,
    on_event: ProgressCallback = ignore_event,
) -> PushResult:
    """Stream the plan's unknown layers to the first destination, then tag every destination.

    Layers whose key the cache or a previous manifest knows are only checked (HEAD) or
    mounted, and not even checked when the tag's manifest references them; if every layer is
    known and every tag already holds the resulting manifest, nothing is uploaded at all ("up
    to date"). ``plan`` may be a function that makes it (reads the closure with nix): it runs
    while the registry is asked what the tags hold.
    """
    check_destinations(refs, opts.cache_from)
    started = time.monotonic()
    cache = LayerCache(opts.cache_dir) if opts.cache_dir else None
    with _surveyed(plan, refs, opts, cache, on_event) as (client, made, current, known):
        digest = _held_by_every_tag(made, known, refs, current)
        if digest is not None:
            blobs = [_known_blob(known[layer.key], layer.media_type) for layer in made.layers]
            seconds = time.monotonic() - started
            return PushResult(_tagged(refs), str(digest), tuple(blobs), seconds, up_to_date=True)
        repo = refs[0].repository
        # Only when every destination is that repository: a blob mounted into another one must
        # be there for real, and a failed mount could not be told from a missing layer.
        one_repo = all(r.repository == repo for r in refs)
        blobs, manifest_digest = _upload_and_tag(
            client,
            made,
            refs,
            known=known,
            current=current,
            cache=cache,
            opts=opts,
            present=_referenced(current, repo) if one_repo else frozenset(),
            on_event=on_event,
        )
    return PushResult(_tagged(refs), manifest_digest, tuple(blobs), time.monotonic() - started)


def _upload_and_tag(
    client: RegistryClient,
    plan: ImagePlan,
    refs: Sequence[Reference],
    *,
    known: Mapping[str, LayerDigests],
    current: Tags,
    cache: LayerCache | None,
    opts: RegistryOptions,
    present: frozenset[Digest],
    on_event: ProgressCallback,
) -> tuple[list[PushedBlob], str]:
    """Layers, then config and manifest under every tag: what each blob took, and the
    manifest's digest. Layers in ``present`` are taken as there without a HEAD; if the
    registry then refuses the manifest for a missing blob (one deleted behind its back),
    every layer is checked, what is missing uploaded, and the manifest put again."""
    results, facts = _push_layers(
        client, plan, refs[0].repository, known, present=present, cache=cache, opts=opts
    )
    built = plan.finish(facts)
    blobs = [_pushed(r, d.media_type) for r, d in zip(results, built.layers, strict=True)]
    blobs += _copy_to_other_repos(client, refs, built.layers, opts)
    try:
        manifest_digest = _tag_all(
            client, refs, built.config, built.manifest, built.manifest_media_type, current=current
        )
    except RegistryError as error:
        # distribution and GitLab name the blob MANIFEST_BLOB_UNKNOWN; a registry that says
        # otherwise fails the push here, with its own message.
        unchecked = any(r.digest in present for r in results)
        if not unchecked or "MANIFEST_BLOB_UNKNOWN" not in error.codes:
            raise
        on_event(Message("a layer the tag's manifest names is gone: checking every layer"))
        learned = {
            layer.key: f for layer, f in zip(plan.layers, facts, strict=True)
        }  # what was just uploaded is only checked again, not streamed again
        again, manifest_digest = _upload_and_tag(
            client,
            plan,
            refs,
            known=learned,
            current=current,
            cache=cache,
            opts=opts,
            present=frozenset(),
            on_event=on_event,
        )
        # A layer the first pass uploaded was uploaded, though the second pass found it there.
        blobs = [b if b.outcome == "uploaded" else a for b, a in zip(blobs, again, strict=True)]
    return blobs, manifest_digest


def _referenced(current: Tags, repo: str) -> frozenset[Digest]:
    """The layers ``repo``'s tags reference now. A registry keeps every blob a manifest
    references, so they need no HEAD each: on a new commit of an unchanged closure, that is
    one request per layer fewer (a second or more against a remote GitLab)."""
    digests: set[Digest] = set()
    for (tag_repo, _), found in current.items():
        if tag_repo == repo and found is not None:
            with contextlib.suppress(ImageError):  # not ours to read: HEAD its layers
                digests.update(layer.digest for layer in parse_manifest(found[0]).layers)
    return frozenset(digests)


@dataclass(frozen=True)
class PushPreview:
    """What ``push`` would do (``--dry-run``): per layer, and whether the tags are current."""

    references: tuple[str, ...]
    layers: tuple[LayerPreview, ...]
    up_to_date: bool


def preview_push(
    plan: PlanSource,
    refs: Sequence[Reference],
    opts: RegistryOptions,
    on_event: ProgressCallback = ignore_event,
) -> PushPreview:
    """Everything ``push_plan`` would decide, with HEAD requests only: nothing is uploaded."""
    check_destinations(refs, opts.cache_from)
    cache = LayerCache(opts.cache_dir) if opts.cache_dir else None
    with _surveyed(plan, refs, opts, cache, on_event) as (client, made, current, known):
        up_to_date = _held_by_every_tag(made, known, refs, current) is not None
        repo = refs[0].repository
        present = _referenced(current, repo)
        rows = preview_layers(
            client, made, repo, known, present=present, mount_source=_mount_source(opts, repo)
        )
    return PushPreview(_tagged(refs), tuple(rows), up_to_date)


@contextmanager
def _surveyed(
    plan: PlanSource,
    refs: Sequence[Reference],
    opts: RegistryOptions,
    cache: LayerCache | None,
    on_event: ProgressCallback,
) -> Iterator[tuple[RegistryClient, ImagePlan, Tags, dict[str, LayerDigests]]]:
    """An open client, the plan, what the tags hold now, and which layers are known.

    A plan to make (nix evaluating, building, listing the closure) is made in a thread while
    the client starts (credentials, HTTP stack) and asks the registry what the tags hold: nix
    and those round trips overlap. If the plan fails, the registry requests stop at the next
    one and the plan's error is raised; if they fail, their error is raised once the plan is
    made. Either way a nix error comes first, as it did when nix ran before any request.
    """
    planning = Background(plan if callable(plan) else lambda: plan, name="ociforge-plan")
    scopes = _push_scopes(refs, opts)
    with ExitStack() as stack:
        with plan_errors_first(planning):
            client = stack.enter_context(open_client(refs[0].registry, opts, on_event))
        made, current = tags_while_planning(planning, client, refs, scopes)
        sources = _sources(client, current, opts, scopes)
        yield client, made, current, known_layers(made, cache, client, sources, scopes)


def _push_layers(
    client: RegistryClient,
    plan: ImagePlan,
    repo: str,
    known: Mapping[str, LayerDigests],
    *,
    present: frozenset[Digest],
    cache: LayerCache | None,
    opts: RegistryOptions,
) -> tuple[list[BlobResult], list[LayerDigests]]:
    """Upload what the registry lacks; return each layer's outcome and digests, in order.
    Known layers whose blob is ``present`` in ``repo`` are not even checked."""
    streams: dict[str, LayerStream] = {}
    lock = threading.Lock()
    # Streams compressing at once share the cores (the bytes do not depend on the count):
    # more threads than cores only adds buffers, i.e. memory, and GIL hand-offs.
    streamed = sum(1 for layer in plan.layers if layer.key not in known)
    threads = max(1, cpu_count() // max(1, min(opts.jobs, streamed)))
    there: dict[int, BlobResult] = {}
    jobs: list[BlobJob] = []
    for i, layer in enumerate(plan.layers):
        key, hit = f"layer {i + 1}/{len(plan.layers)}", known.get(layer.key)
        if hit is not None and hit.digest in present:
            there[i] = BlobResult(key, hit.digest, hit.size, "skipped")
            continue
        opener = functools.partial(layer.recipe.open, threads=threads)
        jobs.append(
            BlobJob(
                key=key,
                open_stream=_remembering(opener, streams, layer.key, lock),
                expected=hit.digest if hit else None,
                mount_from=_mount_source(opts, repo) if hit else None,
                size=hit.size if hit else None,
                description=layer.comment,
            )
        )
    try:
        uploaded = iter(
            upload_all(client, repo, jobs, max_workers=opts.jobs, chunk_size=opts.chunk_size)
        )
        results = [there[i] if i in there else next(uploaded) for i in range(len(plan.layers))]
    except DigestMismatchError:
        # A known digest that the layer does not reproduce: the knowledge was stale. Forget it
        # and push again trusting only what the streams compute. A mismatch without stale
        # knowledge (the registry names the blob otherwise) would only repeat: it is final.
        stale = streams.keys() & known.keys()
        if not stale:
            raise
        for key in stale:
            if cache is not None:
                cache.forget(key)
        fresh = {k: v for k, v in known.items() if k not in stale}
        return _push_layers(client, plan, repo, fresh, present=present, cache=cache, opts=opts)
    facts: list[LayerDigests] = []
    for layer in plan.layers:
        stream = streams.get(layer.key)
        if stream is not None:
            result = stream.result
            facts.append(result)
            if cache is not None:
                cache.put(
                    layer.key,
                    result,
                )
        else:
            facts.append(known[layer.key])
    return results, facts


def _push_scopes(refs: Sequence[Reference], opts: RegistryOptions) -> list[str]:
    """One scope set for the whole push: push on every destination, pull on every source."""
    push = [repository_scope(r.repository) for r in refs]
    pull = [repository_scope(r.repository, "pull") for r in opts.cache_from]
    if opts.mount_from:
        pull.append(repository_scope(opts.mount_from, "pull"))
    return list(dict.fromkeys([*push, *pull]))


def tags_while_planning(
    planning: Background[ImagePlan],
    client: RegistryClient,
    refs: Sequence[Reference],
    scopes: Sequence[str],
) -> tuple[ImagePlan, Tags]:
    """The plan, and what the tags hold, read while it is being made (see ``_surveyed``)."""
    with plan_errors_first(planning):
        current = _tags(client, refs, scopes, planning.failed)
        return planning.result(), current


@contextmanager
def plan_errors_first(planning: Background[object]) -> Iterator[None]:
    """An error raised inside is raised once the plan is made, and replaced by the plan's own
    error if the plan failed (the inside stops early then: ``planning.failed`` is its cancel).
    An interrupt waits for the plan too, as it did when nix ran in the caller's thread: nix
    (which got the terminal's Ctrl-C as well) is not left running; a second one stops waiting.
    """
    try:
        yield
    except Exception:
        planning.result()
        raise
    except BaseException:
        planning.join()
        raise


def _tags(
    client: RegistryClient,
    refs: Sequence[Reference],
    scopes: Sequence[str],
    cancel: threading.Event,
) -> Tags:
    """What each destination tag points to now (None: no such tag)."""
    client.ping(cancel=cancel)
    current: Tags = {}
    for ref in refs:
        tag = (ref.repository, ref.manifest_ref)
        if tag not in current:
            current[tag] = get_manifest(
                client, ref.repository, ref.manifest_ref, scopes=scopes, cancel=cancel
            )
    return current


def _sources(
    client: RegistryClient, current: Tags, opts: RegistryOptions, scopes: Sequence[str]
) -> Iterator[tuple[str, bytes, str]]:
    """Manifests to learn layers from: the destinations' current ones, then --cache-from."""
    for (repo, _), found in current.items():
        if found is not None:
            yield repo, found[0], found[1]
    for ref in opts.cache_from:
        found = get_manifest(client, ref.repository, ref.manifest_ref, scopes=scopes)
        if found is not None:
            yield ref.repository, found[0], found[1]


def _mount_source(opts: RegistryOptions, repo: str) -> str | None:
    for candidate in [opts.mount_from, *(r.repository for r in opts.cache_from)]:
        if candidate and candidate != repo:
            return candidate
    return None


def _held_by_every_tag(
    plan: ImagePlan, known: Mapping[str, LayerDigests], refs: Sequence[Reference], current: Tags
) -> Digest | None:
    """The manifest digest every tag already holds, if every layer is ``known`` and that
    manifest is, byte for byte, the one the plan gives (serialising it takes ~2 ms: plain
    JSON, see ``image/documents.py``); else None."""
    held = {current.get((r.repository, r.manifest_ref)) for r in refs}
    if len(held) != 1 or not all(layer.key in known for layer in plan.layers):
        return None  # a tag is missing, or they hold different manifests: each gets this one
    [found] = held
    if found is None:
        return None
    ours = Digest.of(plan.finish([known[layer.key] for layer in plan.layers]).manifest)
    return ours if ours == found[2] else None


def _known_blob(layer: LayerDigests, media_type: str) -> PushedBlob:
    return PushedBlob(str(layer.digest), layer.size, "skipped", media_type)


def push_layout(
    layout_dir: str,
    tag: str | None,
    refs: Sequence[Reference],
    opts: RegistryOptions,
    on_event: ProgressCallback = ignore_event,
) -> PushResult:
    """Push an image already built into an OCI layout, byte for byte."""
    from ociforge.sinks.oci_layout import OciLayout  # noqa: PLC0415  (only for oci: sources)

    check_destinations(refs)
    started = time.monotonic()
    layout = OciLayout(layout_dir, create=False)
    manifest_bytes, media_type = layout.resolve(tag)
    manifest = parse_manifest(manifest_bytes)
    descriptors = [*manifest.layers, manifest.config]
    jobs = [
        BlobJob(
            key=f"layer {i + 1}/{len(manifest.layers)}" if i < len(manifest.layers) else "config",
            open_stream=_file_opener(layout, d.digest),
            expected=d.digest,
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
                key=f"{repo} {d.digest.hex[:12]}",
                open_stream=_unavailable(d.digest),
                expected=d.digest,
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
    *,
    current: Tags | None = None,
) -> str:
    """Config blob (when built here), then the manifest under every tag or digest asked for."""
    digest = Digest.of(manifest)
    for repo in dict.fromkeys(r.repository for r in refs):
        if config is not None:
            upload_bytes(client, repo, config)
    for ref in refs:
        found = (current or {}).get((ref.repository, ref.manifest_ref))
        if found is None or found[2] != digest:
            put_manifest(client, ref.repository, ref.manifest_ref, manifest, media_type)
    return str(digest)


def _tagged(refs: Sequence[Reference]) -> tuple[str, ...]:
    return tuple(f"{r.name}:{r.manifest_ref}" for r in refs)


def _pushed(result: BlobResult, media_type: str) -> PushedBlob:
    return PushedBlob(str(result.digest), result.size, result.outcome, media_type)
