"""``ociforge verify``: is the image in the registry signed, described and made of its closure?

Each check gives one line a deployer can act on. Registry content is read under the usual size
bounds and checked against its digests; the signature is checked with the public key given,
never a key the registry names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ociforge.assemble import ImagePlan
from ociforge.digest import Digest
from ociforge.errors import ImageError
from ociforge.image.documents import Manifest, parse_index, parse_manifest
from ociforge.reference import Reference
from ociforge.registry import RegistryClient, get_manifest, get_small_blob
from ociforge.spec import (
    COSIGN_SIGNATURE_ANNOTATION,
    COSIGN_SIMPLESIGNING,
    MAX_SBOM_BYTES,
    SBOM_MEDIA_TYPES,
    referrers_tag,
)
from ociforge.supply.cosign import signed_digest, verify

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey


@dataclass(frozen=True)
class Check:
    """One thing ``verify`` checked: ``signature``, ``sbom`` or ``source``."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found about ``reference`` (resolved to ``manifest_digest``)."""

    reference: str
    manifest_digest: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)


def resolve(client: RegistryClient, ref: Reference) -> tuple[Manifest, str]:
    """The image manifest ``ref`` names, and its digest."""
    found = get_manifest(client, ref.repository, ref.manifest_ref)
    if found is None:
        raise ImageError(f"{ref} does not exist in the registry")
    data, _, digest = found
    return parse_manifest(data), str(digest)


def check_signature(
    client: RegistryClient, ref: Reference, digest: str, key: EllipticCurvePublicKey
) -> Check:
    """A cosign signature by ``key`` of ``digest`` under ``sha256-<hex>.sig``."""
    tag = referrers_tag(digest) + ".sig"
    found = get_manifest(client, ref.repository, tag)
    if found is None:
        return Check("signature", False, f"not signed: {ref.name} has no {tag} tag")
    other_digest = False
    for layer in parse_manifest(found[0]).layers:
        signature = layer.annotations.get(COSIGN_SIGNATURE_ANNOTATION)
        if layer.media_type != COSIGN_SIMPLESIGNING or signature is None:
            continue
        payload = get_small_blob(client, ref.repository, layer.digest)
        named = None if payload is None else signed_digest(payload)
        if payload is None or named is None:
            continue
        if named[1] != digest:
            other_digest = True  # a payload copied from another image's signature
        elif verify(key, payload, signature):
            return Check("signature", True, f"signed by the key given ({tag})")
    problem = "names another manifest digest" if other_digest else "was not made by the key given"
    return Check("signature", False, f"signature mismatch: the signature in {tag} {problem}")


def check_sbom(client: RegistryClient, ref: Reference, digest: str) -> Check:
    """An SBOM artifact listed in the referrers tag index, whose subject is ``digest``."""
    tag = referrers_tag(digest)
    found = get_manifest(client, ref.repository, tag)
    sboms = [] if found is None else _sbom_entries(found[0])
    if not sboms:
        return Check("sbom", False, f"no SBOM attached: {ref.name}:{tag} lists none")
    for entry_digest, media_type in sboms:
        artifact = get_manifest(client, ref.repository, entry_digest)
        if artifact is None:
            continue
        manifest = parse_manifest(artifact[0])
        if manifest.subject is None or str(manifest.subject.digest) != digest:
            continue
        layer = manifest.layers[0] if manifest.layers else None
        body = None if layer is None else _blob(client, ref, layer.digest)
        if body is not None and _is_json(body):
            fmt = next(k for k, v in SBOM_MEDIA_TYPES.items() if v == media_type)
            return Check("sbom", True, f"{fmt} SBOM {entry_digest} is about this manifest")
    return Check("sbom", False, f"SBOM mismatch: no SBOM in {tag} has subject {digest}")


def check_source(manifest: Manifest, plan: ImagePlan) -> Check:
    """Whether the image's layers are exactly what ``plan`` streams to (no upload)."""
    theirs = [str(d.digest) for d in manifest.layers]
    ours = [str(_stream_digest(plan, i)) for i in range(len(plan.layers))]
    if len(theirs) != len(ours):
        return Check(
            "source",
            False,
            f"layer mismatch: the image has {len(theirs)} layers, the source builds {len(ours)}",
        )
    for i, (have, want) in enumerate(zip(theirs, ours, strict=True)):
        if have != want:
            return Check(
                "source",
                False,
                f"layer mismatch: layer {i + 1} ({plan.layers[i].comment}) is {have}, "
                f"the source builds {want}",
            )
    return Check("source", True, f"all {len(ours)} layers are what the source builds")


def _stream_digest(plan: ImagePlan, index: int) -> Digest:
    with plan.layers[index].recipe.open() as stream:
        for _ in stream:
            pass
        return stream.result.digest


def _sbom_entries(index: bytes) -> Sequence[tuple[str, str]]:
    types = set(SBOM_MEDIA_TYPES.values())
    return [
        (str(m.digest), m.artifact_type)
        for m in parse_index(index).manifests
        if m.artifact_type in types
    ]


def _blob(client: RegistryClient, ref: Reference, digest: Digest) -> bytes | None:
    return get_small_blob(client, ref.repository, digest, max_size=MAX_SBOM_BYTES)


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True
