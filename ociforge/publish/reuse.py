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

log = logging.getLogger(__name__)


def known_layers(
    plan: ImagePlan,
    cache: LayerCache | None,
    client: RegistryClient,
    manifests: Iterable[tuple[str, bytes, str]],
    scopes: Sequence[str],
    *,
    learned: Mapping[str, LayerDigests] | None = None,
) -> dict[str, LayerDigests]:
    """key -> LayerDigests for every planned layer that this session ``learned`` (streamed
    itself), the cache or a manifest knows.

    ``manifests`` are (repository, bytes, media type) of images pushed before, consumed lazily:
    neither they nor their configs are fetched once every planned key is known.
    """
    wanted = {layer.key for layer in plan.layers}
    known = {key: (learned or {})[key] for key in wanted & (learned or {}).keys()}
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
        learned = _from_manifest(client, repo, data, wanted - known.keys(), scopes)
        known.update(learned)
        if cache is not None:
            for key, layer in learned.items():
                cache.put(key, layer)
    log.debug("%d of %d layers known before streaming", len(known), len(wanted))
    return known


def _from_manifest(
    client: RegistryClient,
    repo: str,
    data: bytes,
    missing: set[str],
    scopes: Sequence[str],
) -> dict[str, LayerDigests]:
    try:
        manifest = parse_manifest(data)
    except ImageError as exc:
        log.debug("ignoring an unreadable manifest in %s: %s", repo, exc)
        return {}
    annotated = [(i, d.annotations.get(KEY_ANNOTATION)) for i, d in enumerate(manifest.layers)]
    if not any(key in missing for _, key in annotated):
        return {}
    config_bytes = get_small_blob(client, repo, manifest.config.digest, scopes=scopes)
    if config_bytes is None:
        return {}
    try:
        diff_ids = config_diff_ids(config_bytes)
    except ImageError as exc:
        log.debug("ignoring a manifest of %s whose config is unreadable: %s", repo, exc)
        return {}
    if len(diff_ids) != len(manifest.layers):
        log.debug("ignoring a manifest of %s whose config lists other layers", repo)
        return {}
    learned: dict[str, LayerDigests] = {}
    for i, key in annotated:
        if key in missing:
            d = manifest.layers[i]
            learned[key] = LayerDigests(diff_ids[i], d.digest, d.size)
    return learned


@dataclass(frozen=True)
class LayerPreview:
    """What a push would do with one layer (``--dry-run``)."""

    index: int
    action: str  # "reused" (already in the repository), "mount", "upload"
    size: int | None  # blob size when known; else None (see ``estimate``)
    estimate: int  # bytes of store content the layer holds (narSize), an upper bound
    digest: str | None
    comment: str


def preview_layers(
    client: RegistryClient,
    plan: ImagePlan,
    repo: str,
    known: Mapping[str, LayerDigests],
    *,
    present: Set[Digest],
    mount_source: str | None,
) -> list[LayerPreview]:
    """Ask the registry (HEAD only) what each layer of ``plan`` would need; known layers in
    ``present`` (referenced by the repository's tags) are there without asking."""
    rows = []
    for index, layer in enumerate(plan.layers):
        hit = known.get(layer.key)
        estimate = _estimate(plan, layer.recipe)
        if hit is None:
            rows.append(LayerPreview(index, "upload", None, estimate, None, layer.comment))
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
