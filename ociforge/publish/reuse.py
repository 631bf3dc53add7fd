"""What is already known about a plan's layers: from the local cache and from manifests that
ociforge pushed before (their layer descriptors carry the layer key as an annotation).

Nothing here reads a store file: knowledge is keyed by ``assemble.layer.layer_key``, computed from
narHashes. A manifest's knowledge needs its config (for the diff_ids), one small GET.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

from ociforge.assemble import ImagePlan
from ociforge.assemble.layer import KEY_ANNOTATION, LayerDigests
from ociforge.digest import Digest
from ociforge.errors import ImageError
from ociforge.image.documents import config_diff_ids, parse_manifest
from ociforge.publish.cache import LayerCache
from ociforge.registry import RegistryClient, blob_exists, get_small_blob
from ociforge.spec import IMAGE_MANIFEST_TYPES
from ociforge.trust import SIGNER_ANNOTATION, TrustKeys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Knowledge:
    """What is known of a plan's layers before any is streamed (see ``ociforge.trust``).

    ``known`` may be acted on: streamed by this session, an authenticated cache entry, or a
    manifest whose layer-key table is signed by a trusted key. ``hints`` are what unsigned
    manifests claim: they only decide which layers are hashed before uploading.
    """

    known: dict[str, LayerDigests]
    hints: dict[str, LayerDigests]


def known_layers(
    plan: ImagePlan,
    cache: LayerCache | None,
    client: RegistryClient,
    manifests: Iterable[tuple[str, bytes, str]],
    scopes: Sequence[str],
    *,
    trust: TrustKeys,
    learned: Mapping[str, LayerDigests] | None = None,
) -> Knowledge:
    """key -> LayerDigests for the planned layers, from (in this order) what this session
    ``learned``, the local cache and ``manifests``: (repository, bytes, media type) of images
    pushed before, consumed lazily (neither they nor their configs are fetched once every
    planned key is known)."""
    wanted = {layer.key for layer in plan.layers}
    known = {key: (learned or {})[key] for key in wanted & (learned or {}).keys()}
    hints: dict[str, LayerDigests] = {}
    if cache is not None:
        for key in wanted - known.keys():
            hit = cache.get(key)
            if hit is not None:
                known[key] = hit
    for repo, data, media_type in manifests:
        if wanted <= known.keys():
            break
        if media_type not in IMAGE_MANIFEST_TYPES:
            continue
        claims, signer = _from_manifest(client, repo, data, trust, scopes)
        found = {k: v for k, v in claims.items() if k in wanted and k not in known}
        if signer is not None:
            known.update(found)
            # Only our own key's claims go in the cache (under our MAC): another project's
            # stay trusted only while its key is.
            if cache is not None and signer == trust.signer_id:
                for key, layer in found.items():
                    cache.put(key, layer)
        else:
            hints.update({k: v for k, v in found.items() if k not in hints})
    log.debug("%d of %d layers known before streaming", len(known), len(wanted))
    return Knowledge(known, {k: v for k, v in hints.items() if k not in known})


def _from_manifest(
    client: RegistryClient, repo: str, data: bytes, trust: TrustKeys, scopes: Sequence[str]
) -> tuple[dict[str, LayerDigests], str | None]:
    """The layers a manifest pushed by ociforge claims (key -> digests), and which trusted
    key signed that claim (None: none did)."""
    try:
        manifest = parse_manifest(data)
    except ImageError as exc:
        log.debug("ignoring an unreadable manifest in %s: %s", repo, exc)
        return {}, None
    annotated = [(d.annotations.get(KEY_ANNOTATION), d) for d in manifest.layers]
    if not any(key for key, _ in annotated):
        return {}, None
    config_bytes = get_small_blob(client, repo, manifest.config.digest, scopes=scopes)
    try:
        diff_ids = config_diff_ids(config_bytes) if config_bytes is not None else ()
    except ImageError as exc:
        log.debug("ignoring a manifest of %s whose config is unreadable: %s", repo, exc)
        return {}, None
    if len(diff_ids) != len(manifest.layers):
        log.debug("ignoring a manifest of %s whose config lists other layers", repo)
        return {}, None
    claims = {
        key: LayerDigests(diff_id, d.digest, d.size)
        for (key, d), diff_id in zip(annotated, diff_ids, strict=True)
        if key
    }
    table = [(k, v.digest, v.diff_id, v.size) for k, v in claims.items()]
    signed = trust.verify(table, manifest.annotations)
    return claims, manifest.annotations.get(SIGNER_ANNOTATION) if signed else None


@dataclass(frozen=True)
class LayerPreview:
    """What a push would do with one layer (``--dry-run``)."""

    index: int
    action: str  # "reused" (already in the repository), "mount", "check", "upload"
    size: int | None  # blob size when known; else None (see ``estimate``)
    estimate: int  # bytes of store content the layer holds (narSize), an upper bound
    digest: str | None
    comment: str


def preview_layers(
    client: RegistryClient,
    plan: ImagePlan,
    repo: str,
    knowledge: Knowledge,
    *,
    present: Set[Digest],
    mount_source: str | None,
) -> list[LayerPreview]:
    """Ask the registry (HEAD only) what each layer of ``plan`` would need; known layers in
    ``present`` (referenced by the repository's tags) are there without asking. A layer only
    an unsigned manifest names is "check": hashed first, reused if the registry has it."""
    rows = []
    for index, layer in enumerate(plan.layers):
        hit = knowledge.known.get(layer.key)
        estimate = _estimate(plan, layer.recipe)
        if hit is None:
            action = "check" if layer.key in knowledge.hints else "upload"
            rows.append(LayerPreview(index, action, None, estimate, None, layer.comment))
            continue
        if hit.digest in present or blob_exists(client, repo, hit.digest) is not None:
            action = "reused"
        elif mount_source and blob_exists(client, mount_source, hit.digest) is not None:
            action = "mount"
        else:
            action = "upload"
        rows.append(LayerPreview(index, action, hit.size, estimate, str(hit.digest), layer.comment))
    return rows


def _estimate(plan: ImagePlan, recipe: object) -> int:
    paths = getattr(recipe, "paths", ())
    return sum(plan.closure.paths[p].nar_size for p in paths if p in plan.closure.paths)
