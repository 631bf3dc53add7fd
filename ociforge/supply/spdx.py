"""The SPDX 2.3 JSON form of a closure's SBOM, through ``spdx-tools`` (validated as written)."""

from __future__ import annotations

import io
import re
import uuid
from typing import TYPE_CHECKING

from ociforge.errors import ImageError
from ociforge.nix import Closure, StorePathInfo
from ociforge.supply.sbom import FIXED_TIME, Subject, nar_hash_hex, parse_drv_name

if TYPE_CHECKING:
    from spdx_tools.spdx.model.package import Package
    from spdx_tools.spdx.model.relationship import Relationship, RelationshipType

_DOCUMENT = "SPDXRef-DOCUMENT"
_IMAGE = "SPDXRef-image"


def make_spdx(closure: Closure, subject: Subject, serial: uuid.UUID) -> bytes:
    # Imported only when an SBOM is made (spdx-tools pulls in rdflib: a second of start-up).
    from spdx_tools.spdx.model.actor import Actor, ActorType  # noqa: PLC0415
    from spdx_tools.spdx.model.document import CreationInfo, Document  # noqa: PLC0415
    from spdx_tools.spdx.model.package import Package  # noqa: PLC0415
    from spdx_tools.spdx.model.relationship import RelationshipType  # noqa: PLC0415
    from spdx_tools.spdx.model.spdx_no_assertion import SpdxNoAssertion  # noqa: PLC0415
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream  # noqa: PLC0415

    info = CreationInfo(
        spdx_version="SPDX-2.3",
        spdx_id=_DOCUMENT,
        name=subject.name,
        document_namespace=f"https://ociforge.invalid/spdx/{serial}",
        creators=[Actor(ActorType.TOOL, "ociforge")],
        created=FIXED_TIME,
    )
    image = Package(
        spdx_id=_IMAGE,
        name=subject.name,
        download_location=SpdxNoAssertion(),
        version=subject.digest,
        files_analyzed=False,
    )
    packages = [image, *(_package(p) for _, p in sorted(closure.paths.items()))]
    relationships = [_rel(_DOCUMENT, RelationshipType.DESCRIBES, _IMAGE)]
    relationships += [_rel(_IMAGE, RelationshipType.CONTAINS, _spdx_id(r)) for r in closure.roots]
    for path, path_info in sorted(closure.paths.items()):
        for ref in path_info.references:
            relationships.append(_rel(_spdx_id(path), RelationshipType.DEPENDS_ON, _spdx_id(ref)))
    document = Document(info, packages=packages, relationships=relationships)
    out = io.StringIO()
    try:
        write_document_to_stream(document, out, validate=True, drop_duplicates=False)
    except ValueError as exc:  # spdx-tools' validation failed: our document is wrong
        raise ImageError(f"the SPDX document does not validate: {str(exc)[:300]}") from None
    return out.getvalue().encode() + b"\n"


def _package(info: StorePathInfo) -> Package:
    from spdx_tools.spdx.model.checksum import Checksum, ChecksumAlgorithm  # noqa: PLC0415
    from spdx_tools.spdx.model.package import Package  # noqa: PLC0415
    from spdx_tools.spdx.model.spdx_no_assertion import SpdxNoAssertion  # noqa: PLC0415

    name, version = parse_drv_name(info.name)
    return Package(
        spdx_id=_spdx_id(info.path),
        name=name,
        version=version,
        file_name=info.path,  # the store path: what the package is, exactly
        download_location=SpdxNoAssertion(),
        files_analyzed=False,
        checksums=[Checksum(ChecksumAlgorithm.SHA256, nar_hash_hex(info.nar_hash))],
    )


def _rel(left: str, kind: RelationshipType, right: str) -> Relationship:
    from spdx_tools.spdx.model.relationship import Relationship  # noqa: PLC0415

    return Relationship(left, kind, right)


def _spdx_id(path: str) -> str:
    """``SPDXRef-<hash>-<name>`` of a store path (SPDX ids allow letters, digits, ``.`` ``-``)."""
    return "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]", "-", path.rsplit("/", 1)[-1])
