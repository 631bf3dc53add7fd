"""Push images to one registry: layers (streamed, in parallel), then config, then manifests.

Upload order is forced by the digests and by the registry: a manifest may only reference blobs
the repository already has. So nothing is tagged until every blob is in place, and a failed push
leaves every tag where it was.

A :class:`PushSession` owns what pushes to one registry share: one client (credentials, token
cache, connection pool), one options object, one thread budget (``jobs``) and the one retry
policy (``RegistryClient.retry_delay``: requests repeated in place, blobs restarted in a fresh
session). Two fallbacks are not retries but stale knowledge corrected: a known layer that
streams to another digest is forgotten and pushed as computed, and a layer the tag's manifest
named but the registry lost is checked and uploaded again.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from ociforge.assemble import ImagePlan, PlannedLayer
from ociforge.assemble.layer import LayerDigests, LayerStream
from ociforge.digest import Digest
from ociforge.errors import DigestMismatchError, RegistryError, UsageError
from ociforge.events import (
    BlobFinished,
    BlobStarted,
    Message,
    PlanReady,
    ProgressCallback,
    ignore_event,
    reading,
)
from ociforge.image.documents import Descriptor, parse_manifest
from ociforge.publish.base import base_blob_jobs, of_base
from ociforge.publish.cache import LayerCache
from ociforge.publish.options import (
    PushedBlob,
    PushPreview,
    PushResult,
    RegistryOptions,
    check_destinations,
)
from ociforge.publish.reuse import Knowledge, known_layers, preview_layers
from ociforge.publish.tags import (
    Tags,
    check_tag_rules,
    held_by_every_tag,
    plan_errors_first,
    put_tags,
    read_tags,
    referenced,
    tag_names,
    tags_while_planning,
)
from ociforge.reference import Reference
from ociforge.registry import (
    BlobJob,
    BlobResult,
    HashingStream,
    RegistryClient,
    blob_exists,
    get_manifest,
    upload_all,
    upload_bytes,
)
from ociforge.sinks import layer_key_name, open_counted, plan_ready
from ociforge.sinks.oci_layout import OciLayout
from ociforge.source import LayoutRef
from ociforge.threads import Background, cpu_count
from ociforge.trust import trust_from_environment

_READ_SIZE = 1 << 20
MakePlan = Callable[[], ImagePlan]


class PushSession:
    """Pushes to one registry (``host[:port]``); use as a context manager."""

    def __init__(
        self,
        registry: str,
        options: RegistryOptions | None = None,
        on_event: ProgressCallback = ignore_event,
    ) -> None:
        self.registry = registry
        self.options = options or RegistryOptions()
        self.on_event = on_event
        self.cache: LayerCache | None = None  # made for each plan: its trust keys sign it
        # Layers this session streamed itself: the next image of a batch knows them.
        self._learned: dict[str, LayerDigests] = {}
        # Where this session put each blob: another repository mounts it from there instead
        # of streaming it again (push-all: layers shared by several images go up once).
        self._placed: dict[Digest, str] = {}
        self._client: RegistryClient | None = None

    @property
    def client(self) -> RegistryClient:
        """The session's client, made on first use: credentials come from the one precedence
        chain (logged, never shown), and nix can be planning meanwhile."""
        if self._client is None:
            self._client = self.options.client(self.registry, self.on_event)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> PushSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- an image built while it streams up -------------------------------------------------

    def push(self, plan: ImagePlan | MakePlan, refs: Sequence[Reference]) -> PushResult:
        """Stream the plan's unknown layers to the first destination, then tag every one.

        Layers whose key the cache or a previous manifest knows are only checked (HEAD) or
        mounted, and not even checked when the tag's manifest references them; if every layer
        is known and every tag already holds the resulting manifest, nothing is uploaded at all
        ("up to date"). ``plan`` may be a function that makes it (reads the closure with nix):
        it runs while the registry is asked what the tags hold.
        """
        started = time.monotonic()
        made, current, knowledge = self._survey(plan, refs)
        hashed = self._hash_hinted(made, knowledge.hints, refs[0].repository, current)
        known = {**knowledge.known, **hashed}
        digest = held_by_every_tag(made, known, refs, current)
        if digest is not None:
            blobs = [
                PushedBlob(_descriptor(known[layer.key], layer.media_type), "skipped")
                for layer in made.layers
            ]
            seconds = time.monotonic() - started
            return PushResult(
                tag_names(refs),
                str(digest),
                tuple(blobs),
                seconds,
                up_to_date=True,
                base_digest=_base_digest(made),
            )
        # Only now: an image that is up to date shows no progress at all.
        self.on_event(plan_ready(made))
        check_tag_rules(self.client, refs, self.options.scopes(refs), current)
        repo = refs[0].repository
        # Only when every destination is that repository: a blob mounted into another one must
        # be there for real, and a failed mount could not be told from a missing layer.
        one_repo = all(r.repository == repo for r in refs)
        present = referenced(current, repo) if one_repo else frozenset()
        blobs, manifest_digest = self._upload_and_tag(made, refs, known, current, present)
        return PushResult(
            tag_names(refs),
            manifest_digest,
            tuple(blobs),
            time.monotonic() - started,
            base_digest=_base_digest(made),
        )

    def preview(self, plan: ImagePlan | MakePlan, refs: Sequence[Reference]) -> PushPreview:
        """Everything ``push`` would decide, with HEAD requests only: nothing is uploaded."""
        made, current, knowledge = self._survey(plan, refs)
        up_to_date = held_by_every_tag(made, knowledge.known, refs, current) is not None
        repo = refs[0].repository
        rows = preview_layers(
            self.client,
            made,
            repo,
            knowledge,
            present=referenced(current, repo),
            mount_source=self.options.mount_source(repo),
        )
        return PushPreview(tag_names(refs), tuple(rows), up_to_date)

    def _survey(
        self, plan: ImagePlan | MakePlan, refs: Sequence[Reference]
    ) -> tuple[ImagePlan, Tags, Knowledge]:
        """The plan, what the tags hold now, and which layers are known.

        A plan to make (nix evaluating, building, listing the closure) is made in a thread
        while the client starts (credentials, HTTP stack) and asks the registry what the tags
        hold: nix and those round trips overlap. If the plan fails, the registry requests stop
        at the next one and the plan's error is raised; if they fail, their error is raised
        once the plan is made. Either way a nix error comes first.
        """
        check_destinations(refs, self.options.cache_from)
        planning = Background(plan if callable(plan) else lambda: plan, name="ociforge-plan")
        scopes = self.options.scopes(refs)
        with plan_errors_first(planning):
            client = self.client
        made, current = tags_while_planning(planning, client, refs, scopes)
        sources = self._sources(current, scopes)
        trust = made.options.trust or trust_from_environment(self._environ())
        cache_dir = self.options.cache_dir
        self.cache = LayerCache(cache_dir, trust.cache_key()) if cache_dir else None
        knowledge = known_layers(
            made, self.cache, client, sources, scopes, trust=trust, learned=self._learned
        )
        return made, current, knowledge

    def _environ(self) -> Mapping[str, str]:
        return os.environ if self.options.env is None else self.options.env

    def _hash_hinted(
        self, plan: ImagePlan, hints: Mapping[str, LayerDigests], repo: str, current: Tags
    ) -> dict[str, LayerDigests]:
        """Digests of the layers that unsigned manifests claim, computed from the store: the
        claims only say the upload may be skippable, never which blob a layer is."""
        # Only a claimed blob the repository really has can save an upload: the others would
        # be compressed twice (here, then to upload them).
        present = referenced(current, repo)  # what the tags name is there: no HEAD needed

        def there(digest: Digest) -> bool:
            return digest in present or blob_exists(self.client, repo, digest) is not None

        todo = [x for x in plan.layers if x.key in hints and there(hints[x.key].digest)]
        if not todo:
            return {}
        self.on_event(
            Message(
                f"{len(todo)} layers are named by an unsigned manifest: hashing them to check "
                "(set OCIFORGE_SIGNING_KEY to skip this, see ociforge keygen)"
            )
        )
        threads = max(1, cpu_count() // min(self.options.jobs, len(todo)))

        def digests(layer: PlannedLayer) -> LayerDigests:
            with layer.recipe.open(threads=threads) as stream:
                for _ in stream:
                    pass
            return stream.result

        pool = ThreadPoolExecutor(self.options.jobs, thread_name_prefix="ociforge-hash")
        try:
            computed = dict(zip((t.key for t in todo), pool.map(digests, todo), strict=True))
        except BaseException:
            # An interrupt or a failed layer: queued layers are not hashed for nothing.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        for key, layer in computed.items():
            self._learned[key] = layer
            if self.cache is not None:
                self.cache.put(key, layer)
        return computed

    def _sources(self, current: Tags, scopes: Sequence[str]) -> Iterator[tuple[str, bytes, str]]:
        """Manifests to learn layers from: the destinations' current ones, then --cache-from."""
        for (repo, _), found in current.items():
            if found is not None:
                yield repo, found[0], found[1]
        for ref in self.options.cache_from:
            found = get_manifest(self.client, ref.repository, ref.manifest_ref, scopes=scopes)
            if found is not None:
                yield ref.repository, found[0], found[1]

    def _upload_and_tag(
        self,
        plan: ImagePlan,
        refs: Sequence[Reference],
        known: Mapping[str, LayerDigests],
        current: Tags,
        present: frozenset[Digest],
    ) -> tuple[list[PushedBlob], str]:
        """Layers, then config and manifest under every tag: what each blob took, and the
        manifest's digest. Layers in ``present`` are taken as there without a HEAD; if the
        registry then refuses the manifest for a missing blob (one deleted behind its back),
        every layer is checked, what is missing uploaded, and the manifest put again."""
        results, facts = self._push_layers(plan, refs[0].repository, known, present)
        built = plan.finish(facts)
        blobs = [_pushed(r, d.media_type) for r, d in zip(results, built.layers, strict=True)]
        blobs += self._copy_to_other_repos(refs, built.layers)
        try:
            digest = self._tag_all(
                refs, built.config, built.manifest, built.manifest_media_type, current
            )
        except RegistryError as error:
            # distribution and GitLab name the blob MANIFEST_BLOB_UNKNOWN; a registry that says
            # otherwise fails the push here, with its own message.
            unchecked = any(r.digest in present for r in results)
            if not unchecked or "MANIFEST_BLOB_UNKNOWN" not in error.codes:
                raise
            self.on_event(Message("a layer the tag's manifest names is gone: checking every layer"))
            # What was just uploaded is only checked again, not streamed again.
            learned = {layer.key: f for layer, f in zip(plan.layers, facts, strict=True)}
            again, digest = self._upload_and_tag(plan, refs, learned, current, frozenset())
            # A layer the first pass uploaded was uploaded, though the second pass found it.
            blobs = [b if b.outcome == "uploaded" else a for b, a in zip(blobs, again, strict=True)]
        return blobs, digest

    def _push_layers(
        self,
        plan: ImagePlan,
        repo: str,
        known: Mapping[str, LayerDigests],
        present: frozenset[Digest],
    ) -> tuple[list[BlobResult], list[LayerDigests]]:
        """Upload what the registry lacks; return each layer's outcome and digests, in order.
        Known layers whose blob is ``present`` in ``repo`` are not even checked."""
        streams: dict[str, LayerStream] = {}
        there, jobs = self._layer_jobs(plan, repo, known, present, streams)
        base_jobs = base_blob_jobs(plan.base, repo, self.registry)
        try:
            # The base's blobs go in the same pool as ours: mounted or streamed alongside.
            uploaded = iter(self._upload(repo, [*base_jobs, *jobs]))
            results = [next(uploaded) for _ in base_jobs]
            results += [there[i] if i in there else next(uploaded) for i in range(len(plan.layers))]
            self._placed.update((r.digest, repo) for r in results)
        except DigestMismatchError as error:
            # A known digest that the layer does not reproduce: the knowledge was stale. Forget
            # it and push again trusting only what the streams compute. A mismatch without
            # stale knowledge, or one the registry reported, would only repeat: final; so is
            # a base blob that is not what its manifest says.
            stale = streams.keys() & known.keys()
            if not stale or isinstance(error, RegistryError) or of_base(plan.base, error):
                raise
            for key in stale:
                if self.cache is not None:
                    self.cache.forget(key)
            fresh = {k: v for k, v in known.items() if k not in stale}
            return self._push_layers(plan, repo, fresh, present)
        facts = [
            streams[layer.key].result if layer.key in streams else known[layer.key]
            for layer in plan.layers
        ]
        for key, stream in streams.items():
            self._learned[key] = stream.result
            if self.cache is not None:
                self.cache.put(key, stream.result)
        return results, facts

    def _layer_jobs(
        self,
        plan: ImagePlan,
        repo: str,
        known: Mapping[str, LayerDigests],
        present: frozenset[Digest],
        streams: dict[str, LayerStream],
    ) -> tuple[dict[int, BlobResult], list[BlobJob]]:
        """Layers there already (known, and referenced by the tags), and a job for each other
        one; a job's streams are kept in ``streams`` (the last one of a layer has its digests)."""
        lock = threading.Lock()
        # Streams compressing at once share the cores (the bytes do not depend on the count):
        # more threads than cores only adds buffers, i.e. memory, and GIL hand-offs.
        streamed = sum(1 for layer in plan.layers if layer.key not in known)
        threads = max(1, cpu_count() // max(1, min(self.options.jobs, streamed)))
        there: dict[int, BlobResult] = {}
        jobs: list[BlobJob] = []
        for i, layer in enumerate(plan.layers):
            key, hit = layer_key_name(i, len(plan.layers)), known.get(layer.key)
            if hit is not None and hit.digest in present:
                there[i] = BlobResult(key, hit.digest, hit.size, "skipped")
                # Told like a layer found by HEAD: progress counts its input as done.
                self.on_event(BlobStarted(key, hit.size, layer.comment))
                self.on_event(BlobFinished(key, "skipped", hit.size, str(hit.digest)))
                continue
            opener = functools.partial(open_counted, layer, key, self.on_event, threads=threads)
            jobs.append(
                BlobJob(
                    key=key,
                    open_stream=_remembering(opener, streams, layer.key, lock),
                    expected=hit.digest if hit else None,
                    mount_from=(
                        self._placed.get(hit.digest) or self.options.mount_source(repo)
                        if hit
                        else None
                    ),
                    size=hit.size if hit else None,
                    description=layer.comment,
                )
            )
        return there, jobs

    # -- an image built before ---------------------------------------------------------------

    def push_layout(self, source: LayoutRef, refs: Sequence[Reference]) -> PushResult:
        """Push an image already built into an OCI layout, byte for byte."""
        check_destinations(refs)
        started = time.monotonic()
        layout = OciLayout(source.directory, create=False)
        manifest_bytes, media_type = layout.resolve(source.tag)
        manifest = parse_manifest(manifest_bytes)
        descriptors = [*manifest.layers, manifest.config]
        count = len(manifest.layers)
        keys = [layer_key_name(i, count) for i in range(count)] + ["config"]
        # A built layer's input is its file: progress is measured on the blobs' sizes.
        self.on_event(PlanReady(tuple(keys[:count]), tuple(d.size for d in manifest.layers)))
        jobs = [
            BlobJob(
                key=key,
                open_stream=_file_opener(layout, d.digest, key, self.on_event),
                expected=d.digest,
                mount_from=self.options.mount_from,
                size=d.size,
            )
            for key, d in zip(keys, descriptors, strict=True)
        ]
        # What the tags hold, and the tag rules in the token, before the first blob is sent.
        scopes = self.options.scopes(refs)
        current = read_tags(self.client, refs, scopes, threading.Event())
        check_tag_rules(self.client, refs, scopes, current, Digest.of(manifest_bytes))
        results = self._upload(refs[0].repository, jobs)
        blobs = [_pushed(r, d.media_type) for r, d in zip(results, descriptors, strict=True)]
        blobs += self._copy_to_other_repos(refs, descriptors)
        digest = self._tag_all(refs, None, manifest_bytes, media_type, current)
        return PushResult(tag_names(refs), digest, tuple(blobs), time.monotonic() - started)

    # -- shared steps ------------------------------------------------------------------------

    def _upload(self, repo: str, jobs: Sequence[BlobJob]) -> list[BlobResult]:
        opts = self.options
        return upload_all(
            self.client, repo, jobs, max_workers=opts.jobs, chunk_size=opts.chunk_size
        )

    def _copy_to_other_repos(
        self, refs: Sequence[Reference], descriptors: Sequence[Descriptor]
    ) -> list[PushedBlob]:
        """Other repositories of the same registry get the blobs by cross-repository mount."""
        source = refs[0].repository
        pushed: list[PushedBlob] = []
        for repo in sorted({r.repository for r in refs[1:]} - {source}):
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
            results = self._upload(repo, jobs)
            pushed += [_pushed(r, d.media_type) for r, d in zip(results, descriptors, strict=True)]
        return pushed

    def _tag_all(
        self,
        refs: Sequence[Reference],
        config: bytes | None,
        manifest: bytes,
        media_type: str,
        current: Tags | None = None,
    ) -> str:
        """Config blob (when built here) into every repository, then the manifest under every
        tag that does not hold it yet."""
        if config is not None:
            for repo in dict.fromkeys(r.repository for r in refs):
                upload_bytes(self.client, repo, config)
        scopes = self.options.scopes(refs)
        check_tag_rules(self.client, refs, scopes, current or {}, Digest.of(manifest))
        return put_tags(self.client, refs, manifest, media_type, current)


def push_plan(
    plan: ImagePlan | MakePlan,
    refs: Sequence[Reference],
    opts: RegistryOptions,
    on_event: ProgressCallback = ignore_event,
) -> PushResult:
    """:meth:`PushSession.push` in a session of its own."""
    check_destinations(refs, opts.cache_from)
    with PushSession(refs[0].registry, opts, on_event) as session:
        return session.push(plan, refs)


def _descriptor(layer: LayerDigests, media_type: str) -> Descriptor:
    return Descriptor(media_type, layer.digest, layer.size)


def _pushed(result: BlobResult, media_type: str) -> PushedBlob:
    return PushedBlob(Descriptor(media_type, result.digest, result.size), result.outcome)


def _base_digest(plan: ImagePlan) -> str | None:
    return None if plan.base is None else str(plan.base.digest)


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


def _file_opener(
    layout: OciLayout, digest: Digest, key: str, on_event: ProgressCallback
) -> Callable[[], HashingStream]:
    def opener() -> HashingStream:
        return HashingStream(reading(_read_file(layout, digest), key, on_event))

    return opener


def _read_file(layout: OciLayout, digest: Digest) -> Iterator[bytes]:
    with layout.open_blob(digest) as f:
        while chunk := f.read(_READ_SIZE):
            yield chunk


def _unavailable(digest: Digest) -> Callable[[], HashingStream]:
    def opener() -> HashingStream:
        raise UsageError(
            f"blob {digest} could not be mounted into the other destination repository: "
            "push to each repository separately"
        )

    return opener
