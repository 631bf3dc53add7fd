"""An SBOM of a closure: CycloneDX (``cyclonedx-python-lib``) or SPDX (``spdx-tools``) JSON.

One component per store path: name and version as ``builtins.parseDrvName`` splits them, the
narHash as SHA-256 hex, the store path as its reference, dependencies from the references. The
bytes depend only on the closure and the subject: the serial number and namespace are derived
from them and the timestamp is fixed, so the same closure gives the same SBOM.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ociforge.errors import NixError, UsageError
from ociforge.nix import Closure, StorePathInfo, hash_to_sri
from ociforge.spec import SBOM_MEDIA_TYPES

if TYPE_CHECKING:
    from cyclonedx.model.component import Component

# No clock in the output: the SBOM is about the closure, which has no date.
FIXED_TIME = datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc)
_NAMESPACE = uuid.UUID("5f1c7c1e-6a53-4e0e-9d3c-0c1f0f7a1b2e")  # ociforge's SBOM serials


@dataclass(frozen=True)
class Subject:
    """What the SBOM describes: the image (name and manifest digest) or, without one, a name."""

    name: str
    digest: str | None = None


def parse_drv_name(name: str) -> tuple[str, str | None]:
    """Nix's ``builtins.parseDrvName``: the version starts at the first ``-`` not followed by a
    letter (``perl5.38.2-URI-5.21`` -> ``perl5.38.2-URI``, ``5.21``)."""
    for i, char in enumerate(name[:-1]):
        if char == "-" and not name[i + 1].isalpha():
            return name[:i], name[i + 1 :]
    return name, None


def nar_hash_hex(nar_hash: str) -> str:
    """A narHash as nix prints it (SRI ``sha256-<b64>`` or ``sha256:<nix32|hex>``) in hex."""
    algorithm, sep, value = nar_hash.partition(":")
    if sep:
        fmt = "base16" if len(value) == 64 else "nix32"
        sri = hash_to_sri({"algorithm": algorithm, "format": fmt, "hash": value})
    else:
        sri = hash_to_sri(nar_hash)
    name, _, b64 = sri.partition("-")
    if name != "sha256":
        raise NixError(f"narHash {nar_hash!r} is not SHA-256")
    return base64.b64decode(b64).hex()


def make_sbom(closure: Closure, subject: Subject, fmt: str = "cyclonedx") -> bytes:
    """The SBOM of ``closure`` about ``subject`` in ``fmt`` (``cyclonedx`` or ``spdx``)."""
    if fmt not in SBOM_MEDIA_TYPES:
        raise UsageError(f"unknown SBOM format {fmt!r}: use 'cyclonedx' or 'spdx'")
    if fmt == "spdx":
        from ociforge.supply.spdx import make_spdx  # noqa: PLC0415  (a heavy import)

        return make_spdx(closure, subject, content_id(closure, subject))
    return _cyclonedx(closure, subject)


def content_id(closure: Closure, subject: Subject) -> uuid.UUID:
    """A UUID of everything the SBOM says: same closure and subject, same serial number."""
    h = hashlib.sha256(f"{subject.name}\0{subject.digest or ''}\0".encode())
    for path in sorted(closure.paths):
        info = closure.paths[path]
        h.update(f"{path}\0{info.nar_hash}\0{' '.join(info.references)}\n".encode())
    return uuid.uuid5(_NAMESPACE, h.hexdigest())


def _cyclonedx(closure: Closure, subject: Subject) -> bytes:
    from cyclonedx.model.bom import Bom  # noqa: PLC0415  (imported only when an SBOM is made)
    from cyclonedx.model.component import Component, ComponentType  # noqa: PLC0415
    from cyclonedx.output.json import JsonV1Dot6  # noqa: PLC0415

    bom = Bom(serial_number=content_id(closure, subject))
    bom.metadata.timestamp = FIXED_TIME
    image = Component(
        type=ComponentType.CONTAINER,
        name=subject.name,
        version=subject.digest,
        bom_ref=subject.digest or subject.name,
    )
    bom.metadata.component = image
    components = {p: _component(info) for p, info in sorted(closure.paths.items())}
    for component in components.values():
        bom.components.add(component)
    bom.register_dependency(image, [components[r] for r in closure.roots if r in components])
    for path, info in sorted(closure.paths.items()):
        deps = [components[r] for r in info.references if r in components]
        bom.register_dependency(components[path], deps)
    return JsonV1Dot6(bom).output_as_string(indent=2).encode() + b"\n"


def _component(info: StorePathInfo) -> Component:
    from cyclonedx.model import HashAlgorithm, HashType  # noqa: PLC0415
    from cyclonedx.model.component import Component, ComponentType  # noqa: PLC0415

    name, version = parse_drv_name(info.name)
    return Component(
        type=ComponentType.LIBRARY,
        name=name,
        version=version,
        bom_ref=info.path,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=nar_hash_hex(info.nar_hash))],
    )


def root_name(closure: Closure) -> str:
    """A subject name when there is no image: the first root's name (``hello-2.12``)."""
    roots: Sequence[str] = closure.roots or sorted(closure.paths)
    return roots[0].rsplit("/", 1)[-1].split("-", 1)[-1] if roots else "closure"
