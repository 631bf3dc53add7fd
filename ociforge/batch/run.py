"""Push every image of a run (``push-all``): one :class:`PushSession` per registry.

A session owns one client (one token for every repository of the run: it is asked for all
their scopes at once, as GitLab grants them), one connection pool and one thread budget
(``RegistryOptions.jobs``). Images go one after another; their layers go up in parallel. A
layer that an earlier image of the run uploaded is mounted from that image's repository (the
session remembers where it put each blob), so with the ``auto`` layering strategy, where the
dependencies images share form the same layers in each, shared store paths go up once.

A failed image does not stop the others unless ``fail_fast``; its result carries the error.
A multi-platform image pushes each child under ``TAG-ARCH`` (``latest-amd64``), then the index
under the image's tags: children stay tagged, so GitLab's online GC never deletes one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ociforge.assemble import ImagePlan, plan_source
from ociforge.batch.plan import PlatformSource, ResolvedImage, parse_platform
from ociforge.errors import OciforgeError, RegistryError, UsageError
from ociforge.events import ProgressCallback, ignore_event
from ociforge.image.documents import Platform
from ociforge.publish import PushResult, PushSession, RegistryOptions
from ociforge.publish.index import child_descriptor, make_index, put_index
from ociforge.reference import Reference, parse_reference
from ociforge.registry import get_manifest
from ociforge.source import parse_source

log = logging.getLogger(__name__)

Status = Literal["pushed", "up to date", "failed", "not run"]


@dataclass(frozen=True)
class ImageResult:
    """What happened to one image of the run."""

    name: str
    status: Status
    references: tuple[str, ...] = ()
    digest: str | None = None  # the manifest (or index) the tags hold
    uploaded_bytes: int = 0  # blob bytes this image sent (mounted and skipped ones excluded)
    seconds: float = 0.0
    error: str | None = None
    exit_code: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "references": list(self.references),
            "digest": self.digest,
            "uploaded_bytes": self.uploaded_bytes,
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


@dataclass(frozen=True)
class BatchResult:
    """Every image's result, and what the run uploaded against what it had to."""

    images: tuple[ImageResult, ...]
    uploaded_bytes: int
    layer_bytes: int  # the distinct layer blobs of every image, each counted once
    store_bytes: int  # narSize of the distinct store paths of every image
    seconds: float

    @property
    def failed(self) -> tuple[ImageResult, ...]:
        return tuple(r for r in self.images if r.status in ("failed", "not run"))


@dataclass
class _Run:
    sessions: dict[str, PushSession]
    nix: str
    on_event: ProgressCallback
    plans: dict[tuple[str, int], ImagePlan] = field(default_factory=dict)
    layers: dict[str, int] = field(default_factory=dict)
    # One job of a scaled-out pipeline: only this platform's child (under TAG-ARCH, no index),
    # or only the index over the children other jobs pushed.
    platform: Platform | None = None
    index_only: bool = False


def push_many(
    images: Sequence[ResolvedImage],
    registry: RegistryOptions | None = None,
    *,
    fail_fast: bool = False,
    nix: str = "nix",
    on_event: ProgressCallback = ignore_event,
    on_image: Callable[[ImageResult], None] = lambda result: None,
    platform: str | None = None,
    index_only: bool = False,
) -> BatchResult:
    """Push ``images`` (from :meth:`ImageRepo.resolve`); ``on_image`` hears each result.
    ``platform`` (a nix system or os/arch): only that child of each multi-platform image, as
    ``TAG-ARCH`` without the index; ``index_only``: only the indexes, over the ``TAG-ARCH``
    images other jobs pushed (``ociforge ci gitlab`` gives each its own job)."""
    if platform is not None and index_only:
        raise UsageError("--platform pushes a child, --index-only joins them: choose one")
    started = time.monotonic()
    reg = registry or RegistryOptions()
    refs = {d: parse_reference(d) for image in images for d in _all_destinations(image)}
    wanted = parse_platform(platform) if platform is not None else None
    run = _Run({}, nix, on_event, platform=wanted, index_only=index_only)
    results: list[ImageResult] = []
    try:
        for host in dict.fromkeys(r.registry for r in refs.values()):
            session = PushSession(host, reg, on_event)
            run.sessions[host] = session
            _one_token(session, [r for r in refs.values() if r.registry == host])
        for image in images:
            stop = fail_fast and any(r.status == "failed" for r in results)
            skip = stop or (_one_job(run) and not image.multi_platform)
            result = ImageResult(image.name, "not run") if skip else _push_image(run, image)
            results.append(result)
            on_image(result)
    finally:
        for session in run.sessions.values():
            session.close()
    paths = {p: i.nar_size for plan in run.plans.values() for p, i in plan.closure.paths.items()}
    return BatchResult(
        tuple(results),
        uploaded_bytes=sum(r.uploaded_bytes for r in results),
        layer_bytes=sum(run.layers.values()),
        store_bytes=sum(paths.values()),
        seconds=time.monotonic() - started,
    )


def _all_destinations(image: ResolvedImage) -> list[str]:
    found = list(image.destinations())
    for child in image.children if image.multi_platform else ():
        found += [
            f"{repo}:{tag}-{child.suffix()}" for repo in image.repositories for tag in image.tags
        ]
    return found


def _one_token(session: PushSession, refs: Sequence[Reference]) -> None:
    """Ask for one token covering every repository of the run on this registry."""
    client = session.client
    expect = {200, 401} if client.auth.credentials is None else range(200, 300)
    try:
        client.request("GET", "/v2/", scopes=session.options.scopes(refs), expect=expect)
    except OciforgeError as error:
        # Not fatal here: each image's push meets the same error and reports it as its own.
        log.debug("one token for the run on %s: %s", session.registry, error)


def _push_image(run: _Run, image: ResolvedImage) -> ImageResult:
    started = time.monotonic()
    pushed: list[PushResult] = []
    try:
        digest, fresh = "", False
        for repo in image.repositories:
            refs = [parse_reference(f"{repo}:{tag}") for tag in image.tags]
            session = run.sessions[refs[0].registry]
            if image.multi_platform:
                digest, changed = _push_index(run, session, image, refs, pushed)
            else:
                result = session.push(_planner(run, image, 0), refs)
                pushed.append(result)
                digest, changed = result.manifest_digest, not result.up_to_date
            fresh = fresh or changed
    except OciforgeError as error:
        return ImageResult(
            image.name,
            "failed",
            image.destinations(),
            error=str(error),
            seconds=time.monotonic() - started,
            exit_code=error.exit_code,
        )
    for result in pushed:
        for blob in result.blobs:
            run.layers[str(blob.descriptor.digest)] = blob.descriptor.size
    uploaded = sum(b.descriptor.size for r in pushed for b in r.blobs if b.outcome == "uploaded")
    status: Status = "pushed" if fresh else "up to date"
    return ImageResult(
        image.name, status, image.destinations(), digest, uploaded, time.monotonic() - started
    )


def _push_index(
    run: _Run,
    session: PushSession,
    image: ResolvedImage,
    refs: Sequence[Reference],
    pushed: list[PushResult],
) -> tuple[str, bool]:
    """Each platform's image under ``TAG-ARCH``, then the index under the tags."""
    children, changed = [], False
    scopes = session.options.scopes(refs)
    for i, child in enumerate(image.children):
        if run.index_only:
            digest = _pushed_child(session, refs[0], child, scopes)
        elif run.platform is None or child.platform == run.platform:
            result = session.push(_planner(run, image, i), [_suffixed(r, child) for r in refs])
            pushed.append(result)
            changed, digest = changed or not result.up_to_date, result.manifest_digest
        else:
            continue
        ref = refs[0]
        children.append(
            child_descriptor(session.client, ref.repository, digest, child.platform, scopes)
        )
    if run.platform is not None:  # the index is the index job's
        return (pushed[-1].manifest_digest if pushed else ""), changed
    index = put_index(session, refs, make_index(children))
    return index.digest, changed or not index.up_to_date


def _one_job(run: _Run) -> bool:
    return run.platform is not None or run.index_only


def _pushed_child(
    session: PushSession, ref: Reference, child: PlatformSource, scopes: Sequence[str]
) -> str:
    """The manifest digest another job pushed under ``TAG-ARCH``."""
    child_ref = _suffixed(ref, child)
    found = get_manifest(
        session.client, child_ref.repository, child_ref.manifest_ref, scopes=scopes
    )
    if found is None:
        raise RegistryError(
            f"{child_ref} is missing: the job of its platform has not pushed it (yet)"
        )
    return str(found[2])


def _suffixed(ref: Reference, child: PlatformSource) -> Reference:
    return parse_reference(f"{ref.name}:{ref.manifest_ref}-{child.suffix()}")


def _planner(run: _Run, image: ResolvedImage, index: int) -> Callable[[], ImagePlan]:
    """The plan of one child, made once per run (a second registry reuses it)."""

    def make() -> ImagePlan:
        key = (image.name, index)
        if key not in run.plans:
            child = image.children[index]
            spec = parse_source(child.source, nix=run.nix)
            run.plans[key] = plan_source(spec, child.options(image.options), on_event=run.on_event)
        return run.plans[key]

    return make
