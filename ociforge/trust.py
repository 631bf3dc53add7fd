"""Which knowledge about layers ociforge may act on without reading the layer's files.

A layer's key (``assemble.layer.layer_key``) names its inputs; mapping it to a blob digest lets a
push skip streaming the layer. Anyone who can write a manifest in the registry, or a file in a
shared cache directory, could otherwise map a key to *their* blob, and every later rebuild from
source would republish it. So a mapping is acted on only when it is authenticated:

- **in the registry**: the manifest's layer-key table (key, blob digest, diff_id, size of every
  annotated layer) is signed with an Ed25519 key the user holds (``OCIFORGE_SIGNING_KEY``, a
  protected, masked CI/CD variable); a push verifies it against the user's own public key and any
  ``--trusted-key`` (another project's, for ``--cache-from``). Ed25519 signatures are
  deterministic: the same image and key give the same manifest bytes.
- **in the local cache**: every entry carries an HMAC with a key derived from the signing key, or
  without one, from a secret kept outside the cache directory (``$XDG_STATE_HOME/ociforge``), so
  an entry written by anyone else (a shared CI cache, a disk error) is ignored.

Unauthenticated mappings are hints only: they decide whether a layer is hashed before it is
uploaded (to skip the upload when the registry already has the computed digest), never which
bytes the image holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ociforge.digest import Digest
from ociforge.errors import UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SIGNATURE_ANNOTATION = "dev.ociforge.layer-keys.signature"
SIGNER_ANNOTATION = "dev.ociforge.layer-keys.signer"
SIGNING_KEY_VARIABLE = "OCIFORGE_SIGNING_KEY"
TRUSTED_KEYS_VARIABLE = "OCIFORGE_TRUSTED_KEYS"
_STATEMENT_VERSION = 1

LayerClaim = tuple[str, Digest, Digest, int]  # key, blob digest, diff_id, size


@dataclass(frozen=True)
class TrustKeys:
    """The user's signing key (if any) and the public keys whose signatures are trusted."""

    signing_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    trusted: tuple[Ed25519PublicKey, ...] = field(default=(), repr=False)
    # The local cache's MAC key when there is no signing key (a secret of this machine).
    local_secret: bytes | None = field(default=None, repr=False)

    @property
    def signer_id(self) -> str | None:
        """What a signed manifest names its signer by: a digest of the public key."""
        return None if self.signing_key is None else key_id(self.signing_key.public_key())

    def sign(self, claims: Sequence[LayerClaim]) -> dict[str, str]:
        """The manifest annotations that authenticate ``claims``; none without a key."""
        if self.signing_key is None or not claims:
            return {}
        signature = self.signing_key.sign(statement(claims))
        return {
            SIGNATURE_ANNOTATION: base64.b64encode(signature).decode(),
            SIGNER_ANNOTATION: str(self.signer_id),
        }

    def verify(self, claims: Sequence[LayerClaim], annotations: Mapping[str, str]) -> bool:
        """Whether ``annotations`` carry a valid signature of ``claims`` by a trusted key."""
        signer, signature = (
            annotations.get(SIGNER_ANNOTATION),
            annotations.get(SIGNATURE_ANNOTATION),
        )
        if not signer or not signature or not claims:
            return False
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

        for public in self._verifiers():
            if key_id(public) != signer:
                continue
            try:
                public.verify(base64.b64decode(signature, validate=True), statement(claims))
            except (InvalidSignature, binascii.Error, ValueError):
                return False
            return True
        return False

    def cache_key(self) -> bytes:
        """The HMAC key of local cache entries (see the module docstring)."""
        if self.signing_key is not None:
            from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

            raw = self.signing_key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            return hmac.new(raw, b"ociforge layer cache v1", hashlib.sha256).digest()
        return self.local_secret or b""

    def _verifiers(self) -> tuple[Ed25519PublicKey, ...]:
        own = () if self.signing_key is None else (self.signing_key.public_key(),)
        return (*own, *self.trusted)


def statement(claims: Sequence[LayerClaim]) -> bytes:
    """The exact bytes a layer-key table's signature covers."""
    rows = [[key, str(digest), str(diff_id), size] for key, digest, diff_id, size in claims]
    document = {"ociforge-layer-keys": _STATEMENT_VERSION, "layers": rows}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def entry_mac(secret: bytes, entry: Mapping[str, object]) -> str:
    """The HMAC of a cache entry's fields (everything but the MAC itself)."""
    body = json.dumps({k: v for k, v in entry.items() if k != "mac"}, sort_keys=True)
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()


def key_id(public: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def trust_from_environment(
    environ: Mapping[str, str],
    *,
    signing_key_file: str | None = None,
    trusted_key_files: Sequence[str] = (),
) -> TrustKeys:
    """The keys the user configured: ``--signing-key FILE`` or ``OCIFORGE_SIGNING_KEY`` (the
    key itself, as ``ociforge keygen`` prints it), ``--trusted-key FILE`` and
    ``OCIFORGE_TRUSTED_KEYS`` (public keys, comma-separated)."""
    text = _read(signing_key_file) if signing_key_file else environ.get(SIGNING_KEY_VARIABLE, "")
    where = signing_key_file or SIGNING_KEY_VARIABLE
    signing = load_private_key(text, where) if text.strip() else None
    publics = [_read(f) for f in trusted_key_files]
    publics += [k for k in environ.get(TRUSTED_KEYS_VARIABLE, "").split(",") if k.strip()]
    trusted = tuple(load_public_key(p, "a trusted key") for p in publics)
    secret = None if signing is not None else local_secret(environ)
    return TrustKeys(signing, trusted, secret)


def load_private_key(text: str, where: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM or from one line of base64 PKCS#8 DER."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    try:
        data = (
            text.encode() if "-----BEGIN" in text else base64.b64decode(text.strip(), validate=True)
        )
        key = (
            serialization.load_pem_private_key(data, None)
            if "-----BEGIN" in text
            else serialization.load_der_private_key(data, None)
        )
    except (ValueError, TypeError, binascii.Error):
        raise UsageError(
            f"{where} is not an ociforge signing key (make one: ociforge keygen)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{where} is not an Ed25519 key (make one: ociforge keygen)")
    return key


def load_public_key(text: str, where: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM or from one line of base64 SubjectPublicKeyInfo DER."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )

    try:
        key = (
            serialization.load_pem_public_key(text.encode())
            if "-----BEGIN" in text
            else serialization.load_der_public_key(base64.b64decode(text.strip(), validate=True))
        )
    except (ValueError, TypeError, binascii.Error):
        raise UsageError(
            f"{where} is not an Ed25519 public key (ociforge keygen writes one)"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{where} is not an Ed25519 public key")
    return key


def generate_key() -> tuple[str, str]:
    """A new key pair: (private key as one line of base64, public key as PEM)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    key = Ed25519PrivateKey.generate()
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode(), pem.decode()


def local_secret(environ: Mapping[str, str]) -> bytes | None:
    """This machine's cache secret (32 random bytes), made on first use; None if it cannot be
    kept or is not one (an empty or short file turns the cache off rather than weakening it)."""
    home = Path(environ.get("HOME") or "~").expanduser()
    base = environ.get("XDG_STATE_HOME") or str(home / ".local" / "state")
    path = Path(base) / "ociforge" / "cache-secret"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written whole under another name, then linked: a concurrent reader sees all of
            # it or none, and of two writers the first link wins.
            tmp = path.with_name(f".cache-secret-{secrets.token_hex(8)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(_SECRET_BYTES))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        secret = path.read_bytes()
    except OSError:
        return None
    return secret if len(secret) == _SECRET_BYTES else None


_SECRET_BYTES = 32


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror or exc}") from None
