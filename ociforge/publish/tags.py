"""The destination tags of a push: what they hold now, whether they are current, moving them.

Tags are read while the image is planned (nix evaluating, building, listing the closure) and
written last, after every blob is in place: a failed push leaves every tag where it was.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from ociforge.assemble import ImagePlan
from ociforge.assemble.layer import LayerDigests
from ociforge.digest import Digest
from ociforge.errors import AuthError, ImageError, RegistryError
from ociforge.image.documents import parse_manifest
from ociforge.reference import Reference
from ociforge.registry import RegistryClient, get_manifest, put_manifest
from ociforge.threads import Background

Tags = dict[tuple[str, str], tuple[bytes, str, Digest] | None]  # (repo, tag) -> its manifest


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


def tags_while_planning(
    planning: Background[ImagePlan],
    client: RegistryClient,
    refs: Sequence[Reference],
    scopes: Sequence[str],
) -> tuple[ImagePlan, Tags]:
    """The plan, and what the tags hold, read while it is being made."""
    with plan_errors_first(planning):
        current = read_tags(client, refs, scopes, planning.failed)
        return planning.result(), current


def read_tags(
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


def held_by_every_tag(
    plan: ImagePlan, known: Mapping[str, LayerDigests], refs: Sequence[Reference], current: Tags
) -> Digest | None:
    """The manifest digest every tag already holds, if every layer is ``known`` and that
    manifest is, byte for byte, the one the plan gives (serialising it takes ~2 ms); else None.
    """
    held = {current.get((r.repository, r.manifest_ref)) for r in refs}
    if len(held) != 1 or not all(layer.key in known for layer in plan.layers):
        return None  # a tag is missing, or they hold different manifests: each gets this one
    [found] = held
    if found is None:
        return None
    ours = Digest.of(plan.finish([known[layer.key] for layer in plan.layers]).manifest)
    return ours if ours == found[2] else None


def referenced(current: Tags, repo: str) -> frozenset[Digest]:
    """The layers ``repo``'s tags reference now. A registry keeps every blob a manifest
    references, so they need no HEAD each: on a new commit of an unchanged closure, that is
    one request per layer fewer (a second or more against a remote GitLab)."""
    digests: set[Digest] = set()
    for (tag_repo, _), found in current.items():
        if tag_repo == repo and found is not None:
            with contextlib.suppress(ImageError):  # not ours to read: HEAD its layers
                digests.update(layer.digest for layer in parse_manifest(found[0]).layers)
    return frozenset(digests)


def put_tags(
    client: RegistryClient,
    refs: Sequence[Reference],
    manifest: bytes,
    media_type: str,
    current: Tags | None = None,
) -> str:
    """The manifest under every tag that does not hold it already; its digest. If a tag is
    refused after others moved, the error says exactly which moved and which did not."""
    digest = Digest.of(manifest)
    moved: list[str] = []
    for i, ref in enumerate(refs):
        found = (current or {}).get((ref.repository, ref.manifest_ref))
        if found is not None and found[2] == digest:
            continue
        try:
            put_manifest(client, ref.repository, ref.manifest_ref, manifest, media_type)
        except RegistryError as error:
            if not moved:
                raise
            left = ", ".join(tag_names(refs[i:]))
            message = f"{error}; tags updated: {', '.join(moved)}; not updated: {left}"
            cls = AuthError if isinstance(error, AuthError) else RegistryError
            raise cls(
                message,
                method=error.method,
                url=error.url,
                status=error.status,
                codes=error.codes,
            ) from error
        moved.append(f"{ref.name}:{ref.manifest_ref}")
    return str(digest)


def check_tag_rules(
    client: RegistryClient,
    refs: Sequence[Reference],
    scopes: Sequence[str],
    current: Tags,
    digest: Digest | None = None,
) -> None:
    """Refuse a tag the registry will refuse: GitLab writes its protected (push denied) and
    immutable tag patterns into the token's access claims. Protected tags are checked before
    any blob is sent; immutable ones once the manifest ``digest`` is known (a tag that already
    holds this very image is fine), before any tag moves."""
    claims = client.auth.token_claims(scopes)
    access = claims.get("access") if claims else None
    if not isinstance(access, list):
        return
    for ref in refs:
        meta = next(
            (
                a.get("meta")
                for a in access
                if isinstance(a, dict) and a.get("name") == ref.repository
            ),
            None,
        )
        found = current.get((ref.repository, ref.manifest_ref))
        other = found is not None and digest is not None and found[2] != digest
        if isinstance(meta, dict):
            _check_tag(ref, meta, overwrites=other)


def _check_tag(ref: Reference, meta: dict[str, object], *, overwrites: bool) -> None:
    tag = ref.manifest_ref
    deny = meta.get("tag_deny_access_patterns")
    for pattern in _patterns(deny.get("push") if isinstance(deny, dict) else None):
        if _matches(pattern, tag):
            raise AuthError(
                f"tag {ref.name}:{tag} is protected (rule {pattern!r}) and this token may not "
                "push it: push from a pipeline the rule allows (GitLab: Settings > Packages and "
                "registries > Protected container tags), or use another tag"
            )
    for pattern in _patterns(meta.get("tag_immutable_patterns")):
        if overwrites and _matches(pattern, tag):
            raise RegistryError(
                f"tag {ref.name}:{tag} is immutable (rule {pattern!r}) and holds another image: "
                "push a new tag instead"
            )


def _patterns(value: object) -> list[str]:
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else []


def _matches(pattern: str, tag: str) -> bool:
    """GitLab matches tag rules as unanchored RE2 patterns; one Python cannot read is skipped."""
    try:
        return re.search(pattern, tag) is not None
    except re.error:
        return False


def tag_names(refs: Sequence[Reference]) -> tuple[str, ...]:
    return tuple(f"{r.name}:{r.manifest_ref}" for r in refs)
