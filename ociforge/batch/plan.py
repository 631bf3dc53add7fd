"""A resolved run of ``images.toml`` (see ``model.py``): plain values, no pydantic, so that
``run.py`` and the public API can name them without loading the validator."""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ociforge.assemble import ImageOptions
from ociforge.errors import OciforgeError, UsageError
from ociforge.image.config import platform_for_system
from ociforge.image.documents import Platform
from ociforge.spec import TAG_RE

# $NAME, ${NAME}, {date} and {date:FORMAT}; anything else is literal text.
_TEMPLATE_RE = re.compile(r"\$\{(\w+)\}|\$(\w+)|\{date(?::([^}]*))?\}")


@dataclass(frozen=True)
class PlatformSource:
    """One child of an image: its platform (None: the closure's own) and its source."""

    platform: Platform | None
    source: str

    def suffix(self) -> str:
        """The per-platform tag suffix (``amd64``, ``arm64``, ``armv7``)."""
        if self.platform is None:
            return ""
        arch, variant = self.platform.architecture, self.platform.variant
        # arm64 is v8 (almost) always: only 32-bit arm needs its variant to be told apart.
        return arch + (variant or "") if arch == "arm" else arch

    def options(self, base: ImageOptions) -> ImageOptions:
        if self.platform is None:
            return base
        p = self.platform
        return dataclasses.replace(base, architecture=p.architecture, os=p.os, variant=p.variant)


@dataclass(frozen=True)
class ResolvedImage:
    """One image of a run: where it goes (``host/path/repo``, each with every tag), from what."""

    name: str
    repositories: tuple[str, ...]
    tags: tuple[str, ...]
    children: tuple[PlatformSource, ...]
    options: ImageOptions

    @property
    def multi_platform(self) -> bool:
        return any(c.platform is not None for c in self.children)

    def destinations(self) -> tuple[str, ...]:
        return tuple(f"{repo}:{tag}" for repo in self.repositories for tag in self.tags)


def parse_platform(text: str) -> Platform:
    """``x86_64-linux`` (a nix system) or ``linux/arm64[/v8]`` (OCI) -> a :class:`Platform`."""
    if "/" in text:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(f"platform {text!r}: expected os/arch[/variant] or a nix system")
        return Platform(parts[1], parts[0], parts[2] if len(parts) == 3 else None)
    try:
        arch, os_name, variant = platform_for_system(text)
    except OciforgeError as error:
        raise UsageError(f"platform {text!r}: {error}") from None
    return Platform(arch, os_name, variant)


def expand_tag(template: str, env: Mapping[str, str], now: datetime.datetime, where: str) -> str:
    """A tag template with CI variables and the date filled in; refused unless a valid tag."""
    tag = expand_text(template, env, now, where)
    if not TAG_RE.fullmatch(tag):
        raise UsageError(f"{where}: tag {template!r} gives {tag!r}, which is not a valid tag")
    return tag


def expand_text(template: str, env: Mapping[str, str], now: datetime.datetime, where: str) -> str:
    """``$VAR``, ``${VAR}`` (which must be set), ``{date}`` and ``{date:FORMAT}`` filled in."""

    def fill(match: re.Match[str]) -> str:
        var = match.group(1) or match.group(2)
        if var is None:
            return now.strftime(match.group(3) or "%Y-%m-%d")
        value = env.get(var)
        if not value:
            raise UsageError(f"{where}: {template!r} uses ${var}, which is not set")
        return value

    return _TEMPLATE_RE.sub(fill, template)
