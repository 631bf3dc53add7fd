"""cosign-compatible image signatures: ECDSA P-256 over the "simple signing" payload.

What cosign writes and admission controllers (cosign verify, Kyverno, policy-controller) read:
the payload names the repository and the manifest digest; its signature is ASN.1 DER ECDSA
with SHA-256, base64 in the ``dev.cosignproject.cosign/signature`` annotation of the layer that
holds the payload, under the tag ``sha256-<hex>.sig``. The private key is PEM (PKCS#8 or SEC1
``EC PRIVATE KEY``), from a file or the ``OCIFORGE_COSIGN_KEY`` CI/CD variable.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ociforge.errors import UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import (
        EllipticCurvePrivateKey,
        EllipticCurvePublicKey,
    )

COSIGN_KEY_VARIABLE = "OCIFORGE_COSIGN_KEY"
PAYLOAD_TYPE = "cosign container image signature"


@dataclass(frozen=True)
class CosignKey:
    """A P-256 signing key, cosign's key type (a wrapper: ``cryptography`` loads only when a
    key does)."""

    private: EllipticCurvePrivateKey = field(repr=False)


def generate_cosign_key() -> tuple[str, str]:
    """A new P-256 key pair as (private PKCS#8 PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


def load_cosign_key(
    key_file: str | None = None, environ: Mapping[str, str] | None = None
) -> CosignKey | None:
    """The signing key from ``key_file``, else ``OCIFORGE_COSIGN_KEY`` (PEM text); None if
    neither is given."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    env = os.environ if environ is None else environ
    if key_file is not None:
        text, where = _read(key_file), key_file
    elif env.get(COSIGN_KEY_VARIABLE):
        text, where = env[COSIGN_KEY_VARIABLE], COSIGN_KEY_VARIABLE
    else:
        return None
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError):
        raise UsageError(
            f"{where} is not an unencrypted PEM private key (make one with "
            "`ociforge keygen --cosign`)"
        ) from None
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _not_p256(where)
    return CosignKey(key)


def load_public_key(key_file: str) -> EllipticCurvePublicKey:
    """A P-256 public key (PEM ``PUBLIC KEY``, as cosign writes ``cosign.pub``)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    try:
        key = serialization.load_pem_public_key(_read(key_file).encode())
    except (ValueError, TypeError):
        raise UsageError(f"{key_file} is not a PEM public key") from None
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _not_p256(key_file)
    return key


def simple_signing_payload(repository: str, manifest_digest: str) -> bytes:
    """cosign's payload for ``repository`` (``host/path``, no tag) at ``manifest_digest``."""
    document = {
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": PAYLOAD_TYPE,
        },
        "optional": None,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def sign(key: EllipticCurvePrivateKey, payload: bytes) -> str:
    """The base64 DER ECDSA/SHA-256 signature of ``payload``."""
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def verify(key: EllipticCurvePublicKey, payload: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64 DER) signs ``payload`` with ``key``."""
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    try:
        key.verify(base64.b64decode(signature, validate=True), payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error):
        return False
    return True


def signed_digest(payload: bytes) -> tuple[str, str] | None:
    """(docker-reference, docker-manifest-digest) a payload names; None if it is no cosign
    payload."""
    try:
        critical = json.loads(payload)["critical"]
        if critical["type"] != PAYLOAD_TYPE:
            return None
        return (
            str(critical["identity"]["docker-reference"]),
            str(critical["image"]["docker-manifest-digest"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read key {path}: {getattr(exc, 'strerror', exc)}") from None


def _not_p256(where: str) -> UsageError:
    return UsageError(f"{where} is not an ECDSA P-256 key (cosign's key type)")
