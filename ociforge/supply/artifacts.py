"""The manifests that attach an SBOM and a signature to an image, and the referrers index.

Registries without the referrers API (distribution 2.8.2, GitLab) find an image's referrers
through the referrers tag schema: the tag ``sha256-<hex>`` of the subject holds an OCI index
listing them. It is read, extended and written back, so other tools' referrers stay listed.
Signatures go where cosign puts them: a manifest under ``sha256-<hex>.sig`` whose layers are
payloads with the signature as annotation; signatures already there are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from ociforge.digest import Digest
from ociforge.image.documents import (
    Descriptor,
    Index,
    Manifest,
    canonical_bytes,
    parse_index,
    parse_manifest,
)
from ociforge.spec import (
    COSIGN_SIGNATURE_ANNOTATION,
    COSIGN_SIMPLESIGNING,
    EMPTY_JSON,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
)

EMPTY_CONFIG = Descriptor(OCI_EMPTY, Digest.of(EMPTY_JSON), len(EMPTY_JSON))


@dataclass(frozen=True)
class Artifact:
    """A manifest to PUT, and the blobs (bytes) it needs in the repository first."""

    manifest: bytes
    blobs: tuple[bytes, ...]
    media_type: str = OCI_MANIFEST

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor.of(self.manifest, self.media_type)


def sbom_artifact(sbom: bytes, media_type: str, subject: Descriptor) -> Artifact:
    """The OCI 1.1 artifact manifest of an SBOM about ``subject`` (the image manifest)."""
    manifest = Manifest(
        media_type=OCI_MANIFEST,
        config=EMPTY_CONFIG,
        layers=(Descriptor.of(sbom, media_type),),
        artifact_type=media_type,
        subject=_bare(subject),
    )
    return Artifact(manifest.to_bytes(), (EMPTY_JSON, sbom))


def with_referrer(existing: bytes | None, artifact: Artifact, artifact_type: str) -> bytes:
    """The referrers index of ``existing`` (None: there is none yet) listing ``artifact`` too."""
    kept = () if existing is None else parse_index(existing).manifests
    entry = Descriptor(
        artifact.media_type,
        Digest.of(artifact.manifest),
        len(artifact.manifest),
        artifact_type=artifact_type,
    )
    manifests = (*(m for m in kept if m.digest != entry.digest), entry)
    return Index(OCI_INDEX, manifests).to_bytes()


def signature_artifact(existing: bytes | None, payload: bytes, signature: str) -> Artifact:
    """cosign's ``.sig`` manifest: the signatures of ``existing`` and this one."""
    layer = Descriptor(
        COSIGN_SIMPLESIGNING,
        Digest.of(payload),
        len(payload),
        annotations={COSIGN_SIGNATURE_ANNOTATION: signature},
    )
    old = () if existing is None else parse_manifest(existing).layers
    layers = (*(d for d in old if d != layer), layer)
    # cosign's config shape: an image config whose diff_ids are the payload digests.
    config = canonical_bytes(
        {
            "architecture": "",
            "config": {},
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [str(d.digest) for d in layers]},
        }
    )
    manifest = Manifest(OCI_MANIFEST, Descriptor.of(config, OCI_CONFIG), layers)
    return Artifact(manifest.to_bytes(), (config, payload))


def _bare(descriptor: Descriptor) -> Descriptor:
    """A subject is media type, digest and size: no annotations or platform of an index entry."""
    return Descriptor(descriptor.media_type, descriptor.digest, descriptor.size)
