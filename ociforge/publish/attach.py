"""Attach an SBOM and a cosign signature to an image in a registry.

The SBOM is an OCI 1.1 artifact manifest whose ``subject`` is the image manifest, listed in the
referrers tag schema's index (``sha256-<hex>``): distribution 2.8.2 and GitLab have no referrers
API. The signature goes where cosign puts it (``sha256-<hex>.sig``). Both tags are read, extended
and written back, so referrers and signatures of other tools stay. Two pushes of one image at
the same moment can still lose one of their index entries: the registry has no compare-and-swap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ociforge.errors import RegistryError
from ociforge.image.documents import Descriptor, parse_manifest
from ociforge.registry import (
    RegistryClient,
    get_manifest,
    get_small_blob,
    put_manifest,
    repository_scope,
    upload_bytes,
)
from ociforge.spec import COSIGN_SIGNATURE_ANNOTATION, OCI_INDEX, referrers_tag
from ociforge.supply.artifacts import Artifact, sbom_artifact, signature_artifact, with_referrer
from ociforge.supply.cosign import sign, simple_signing_payload, verify

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey


@dataclass(frozen=True)
class Attached:
    """What was attached to one repository's image: the SBOM manifest and the signature tag."""

    repository: str
    sbom_digest: str | None = None
    signature_tag: str | None = None


def image_descriptor(client: RegistryClient, repo: str, digest: str) -> Descriptor:
    """The descriptor of the manifest ``digest`` in ``repo`` (what a subject points at)."""
    found = get_manifest(client, repo, digest, scopes=[repository_scope(repo)])
    if found is None:
        raise RegistryError(f"{client.registry}/{repo}@{digest} is not in the registry")
    data, media_type, _ = found
    return Descriptor.of(data, media_type or parse_manifest(data).media_type)


def attach_sbom(
    client: RegistryClient, repo: str, subject: Descriptor, sbom: bytes, media_type: str
) -> str:
    """Put the SBOM artifact about ``subject`` and list it in the referrers index; its digest."""
    artifact = sbom_artifact(sbom, media_type, subject)
    _put(client, repo, artifact, str(artifact.descriptor.digest))
    tag = referrers_tag(str(subject.digest))
    existing = _get(client, repo, tag)
    index = with_referrer(existing, artifact, media_type)
    if index != existing:
        put_manifest(client, repo, tag, index, OCI_INDEX)
    return str(artifact.descriptor.digest)


def attach_signature(
    client: RegistryClient, repo: str, name: str, digest: str, key: EllipticCurvePrivateKey
) -> str:
    """Sign ``digest`` for ``name`` (``host/repo``) as cosign does; the ``.sig`` tag.

    ECDSA signatures differ on every run: a payload this key signed before is not signed again,
    so pushing the same image twice leaves one signature, not two.
    """
    payload = simple_signing_payload(name, digest)
    tag = referrers_tag(digest) + ".sig"
    existing = _get(client, repo, tag)
    if existing is not None and _signed_before(client, repo, existing, payload, key):
        return tag
    artifact = signature_artifact(existing, payload, sign(key, payload))
    _put(client, repo, artifact, tag)
    return tag


def _signed_before(
    client: RegistryClient,
    repo: str,
    manifest: bytes,
    payload: bytes,
    key: EllipticCurvePrivateKey,
) -> bool:
    public = key.public_key()
    for layer in parse_manifest(manifest).layers:
        signature = layer.annotations.get(COSIGN_SIGNATURE_ANNOTATION)
        if signature is None or layer.size != len(payload):
            continue
        held = get_small_blob(client, repo, layer.digest, scopes=[repository_scope(repo)])
        if held == payload and verify(public, payload, signature):
            return True
    return False


def _put(client: RegistryClient, repo: str, artifact: Artifact, ref: str) -> None:
    for blob in artifact.blobs:  # every blob first: a manifest may only name blobs present
        upload_bytes(client, repo, blob, key="artifact")
    put_manifest(client, repo, ref, artifact.manifest, artifact.media_type)


def _get(client: RegistryClient, repo: str, tag: str) -> bytes | None:
    found = get_manifest(client, repo, tag, scopes=[repository_scope(repo)])
    return None if found is None else found[0]
