"""Image references: ``host[:port]/repo[:tag][@digest]`` parsed into a frozen value (pure).

Docker's grammar, with one deliberate difference: the registry host is never implied. Docker
reads ``alpine`` as ``docker.io/library/alpine``; ociforge refuses it, because pushing to Docker
Hub by accident (with a CI job token, say) is worse than asking the user to write the host.

The first path component is a host when it contains ``.`` or ``:``, is ``localhost``, or is a
bracketed IPv6 literal; this is docker's own rule, so ``registry.local/app`` and
``localhost:5000/app`` parse the same way in both tools.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ociforge.digest import Digest
from ociforge.errors import UsageError
from ociforge.spec import TAG_RE

_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?"
)
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*")
# Docker caps the full name (host/repo) at 255 characters; registries reject longer paths.
_MAX_NAME = 255
DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class Reference:
    """A parsed image reference. ``str()`` gives back the text it was parsed from."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        return parse_reference(text)

    @property
    def name(self) -> str:
        """``host[:port]/repo``: the reference without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def manifest_ref(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag, else ``latest``."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        """The same repository under ``tag``; a digest pin is dropped (it names other content)."""
        _check_tag(tag, f"{self.name}:{tag}")
        return replace(self, tag=tag, digest=None)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse ``host[:port]/repo[:tag][@digest]``; raise UsageError saying what is wrong."""
    if not text or text != text.strip():
        raise UsageError(f"invalid image reference {text!r}: empty or surrounded by whitespace")
    remainder, digest = _split_digest(text)
    host, path = _split_host(remainder, text)
    repository, tag = _split_tag(path)
    _check_repository(repository, text)
    if tag is not None:
        _check_tag(tag, text)
    if len(host) + 1 + len(repository) > _MAX_NAME:
        raise UsageError(f"invalid image reference {text!r}: name longer than {_MAX_NAME} chars")
    return Reference(registry=host, repository=repository, tag=tag, digest=digest)


def _split_digest(text: str) -> tuple[str, Digest | None]:
    if "@" not in text:
        return text, None
    remainder, _, digest_text = text.partition("@")
    try:
        digest = Digest.parse(digest_text)
    except UsageError:
        raise UsageError(
            f"invalid image reference {text!r}: digest must be sha256:<64 lower-case hex>"
        ) from None
    return remainder, digest


def _split_host(remainder: str, text: str) -> tuple[str, str]:
    first, sep, path = remainder.partition("/")
    looks_like_host = "." in first or ":" in first or first == "localhost" or first[:1] == "["
    if looks_like_host and not sep:
        raise UsageError(
            f"invalid image reference {text!r}: repository path after the host is missing"
        )
    if not looks_like_host:
        raise UsageError(
            f"invalid image reference {text!r}: ociforge needs an explicit registry host, "
            f"e.g. registry.example.com/{remainder} or docker.io/{remainder}"
        )
    if not _HOST_RE.fullmatch(first):
        raise UsageError(f"invalid image reference {text!r}: {first!r} is not a valid host[:port]")
    return first, path


def _split_tag(path: str) -> tuple[str, str | None]:
    # A ':' after the last '/' starts the tag; the host (and its port) is already split off.
    last_slash = path.rfind("/")
    colon = path.find(":", last_slash + 1)
    if colon < 0:
        return path, None
    return path[:colon], path[colon + 1 :]


def _check_repository(repository: str, text: str) -> None:
    if not repository:
        raise UsageError(f"invalid image reference {text!r}: repository path is empty")
    for component in repository.split("/"):
        if _COMPONENT_RE.fullmatch(component):
            continue
        if component.lower() != component and _COMPONENT_RE.fullmatch(component.lower()):
            raise UsageError(
                f"invalid image reference {text!r}: repository must be lower-case ({component!r})"
            )
        raise UsageError(
            f"invalid image reference {text!r}: repository component {component!r} must be "
            "lower-case letters and digits, separated by '.', '_', '__' or '-'"
        )


def _check_tag(tag: str, text: str) -> None:
    if not TAG_RE.fullmatch(tag):
        raise UsageError(
            f"invalid image reference {text!r}: tag {tag!r} must be 1-128 of [A-Za-z0-9_.-] "
            "and not start with '.' or '-'"
        )
