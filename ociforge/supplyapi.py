"""The facade of the supply chain: SBOMs, cosign signatures, ``verify`` (re-exported by api).

Kept beside ``api.py`` so that the facade of building and pushing stays readable; the same
rule holds: the CLI calls these with the same result a Python caller gets.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ociforge.assemble import BuiltImage, ImageOptions, plan_source
from ociforge.errors import UsageError
from ociforge.events import ProgressCallback, ignore_event
from ociforge.nix import Closure
from ociforge.publish import PushResult, PushSession, RegistryOptions
from ociforge.publish.attach import Attached, attach_sbom, attach_signature, image_descriptor
from ociforge.publish.verify import (
    Check,
    VerifyReport,
    check_sbom,
    check_signature,
    check_source,
    resolve,
)
from ociforge.reference import Reference, parse_reference
from ociforge.sinks import attach_sbom_to_layout
from ociforge.source import LayoutRef, SourceSpec, load_source, parse_source
from ociforge.spec import sbom_media_type
from ociforge.supply.cosign import (
    CosignKey,
    generate_cosign_key,
    load_cosign_key,
    load_public_key,
)
from ociforge.supply.sbom import Subject, make_sbom, root_name

__all__ = [
    "Check",
    "CosignKey",
    "SupplyOptions",
    "VerifyReport",
    "generate_cosign_key",
    "layout_sbom",
    "load_cosign_key",
    "sbom",
    "verify",
]


@dataclass(frozen=True)
class SupplyOptions:
    """What a push attaches: an SBOM (``cyclonedx``, ``spdx`` or None) and a cosign signature
    (a P-256 key, see :func:`load_cosign_key`; None: unsigned)."""

    sbom_format: str | None = None
    signing_key: CosignKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.sbom_format is not None:
            sbom_media_type(self.sbom_format)  # an unknown format fails before nix runs

    @classmethod
    def from_environment(cls, sbom_format: str | None = None) -> SupplyOptions:
        """Signed when ``OCIFORGE_COSIGN_KEY`` is set in this process's environment."""
        return cls(sbom_format, load_cosign_key(None, os.environ))

    def check_layout_source(self, layout: LayoutRef) -> None:
        if self.sbom_format is not None:
            raise UsageError(
                f"--sbom needs the closure: push the installable, not {layout} "
                "(build it with --sbom to keep its SBOM in the layout)"
            )

    def attach(
        self,
        session: PushSession,
        refs: Sequence[Reference],
        result: PushResult,
        closure: Closure | None,
    ) -> PushResult:
        """Attach the SBOM and the signature to the pushed image in every repository."""
        if self.sbom_format is None and self.signing_key is None:
            return result
        attached = []
        for ref in {r.repository: r for r in refs}.values():
            attached.append(self._attach_one(session, ref, result.manifest_digest, closure))
        return dataclasses.replace(result, attached=tuple(attached))

    def _attach_one(
        self, session: PushSession, ref: Reference, digest: str, closure: Closure | None
    ) -> Attached:
        client, repo = session.client, ref.repository
        sbom_digest = signature_tag = None
        if self.sbom_format is not None and closure is not None:
            subject = image_descriptor(client, repo, digest)
            document = make_sbom(closure, Subject(ref.name, digest), self.sbom_format)
            media_type = sbom_media_type(self.sbom_format)
            sbom_digest = attach_sbom(client, repo, subject, document, media_type)
        if self.signing_key is not None:
            signature_tag = attach_signature(
                client, repo, ref.name, digest, self.signing_key.private
            )
        return Attached(repo, sbom_digest, signature_tag)


def sbom(
    source: str | Closure | SourceSpec | None,
    *,
    sbom_format: str = "cyclonedx",
    name: str | None = None,
    closure_json: str | None = None,
    nix: str = "nix",
) -> bytes:
    """The SBOM of ``source``'s closure (what ``ociforge sbom`` writes); ``name``: what it
    describes (default: the first root's name)."""
    sbom_media_type(sbom_format)
    spec = parse_source(source, closure_json=closure_json, nix=nix)
    if spec.layout is not None:
        raise UsageError(f"an SBOM is made of a closure; {spec.layout} is an image")
    closure = load_source(spec).closure
    return make_sbom(closure, Subject(name or root_name(closure)), sbom_format)


def layout_sbom(target: LayoutRef, closure: Closure, built: BuiltImage, sbom_format: str) -> str:
    """Attach the SBOM of ``closure`` to the image ``built`` in the layout ``target``."""
    name = target.tag or "latest"
    document = make_sbom(closure, Subject(name, built.manifest_digest), sbom_format)
    return attach_sbom_to_layout(target.directory, built, document, sbom_media_type(sbom_format))


def verify(
    reference: str | Reference,
    *,
    public_key_file: str | None = None,
    source: str | Closure | SourceSpec | None = None,
    options: ImageOptions | None = None,
    registry: RegistryOptions | None = None,
    closure_json: str | None = None,
    devshell: bool = False,
    contents: Sequence[str] = (),
    nix: str = "nix",
    on_event: ProgressCallback = ignore_event,
) -> VerifyReport:
    """Check the image ``reference`` names: its cosign signature by the key in
    ``public_key_file`` (if given), its SBOM (attached, about this manifest), and with
    ``source`` (or ``closure_json``) that its layers are what that closure builds to with
    ``options`` (and ``devshell`` / ``contents`` as the push was given them), streamed and
    hashed, nothing uploaded. Mismatches are in the report's
    ``failures``; errors reading the registry raise."""
    ref = reference if isinstance(reference, Reference) else parse_reference(reference)
    key = None if public_key_file is None else load_public_key(public_key_file)
    spec = None
    if source is not None or closure_json is not None:
        spec = parse_source(
            source, closure_json=closure_json, devshell=devshell, contents=contents, nix=nix
        )
        if spec.layout is not None:
            raise UsageError("verify --source takes what the image was built from, not oci:")
    checks: list[Check] = []
    with PushSession(ref.registry, registry, on_event) as session:
        manifest, digest = resolve(session.client, ref)
        if key is not None:
            checks.append(check_signature(session.client, ref, digest, key))
        checks.append(check_sbom(session.client, ref, digest))
    if spec is not None:
        plan = plan_source(spec, options or ImageOptions(), on_event=on_event)
        checks.append(check_source(manifest, plan))
    return VerifyReport(str(ref), digest, tuple(checks))
