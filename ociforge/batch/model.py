"""``images.toml``: the file that describes an image repository, and its resolution.

Two steps, both without I/O beyond reading the file:

- :func:`load_image_repo` reads and validates the file (pydantic v2): an error names the file,
  the entry and the field (``images.toml: images.tools.platforms: ...``) and is a
  :class:`UsageError` (exit 2), raised before nix or a registry is asked anything.
- :meth:`ImageRepo.resolve` turns it into :class:`ResolvedImage` values for one run: tags with
  CI variables (``$CI_COMMIT_SHORT_SHA``, ``${CI_PIPELINE_IID}``) and the date (``{date}``,
  UTC ``YYYY-MM-DD``; ``{date:%Y%m%d}`` for another format) filled in, destinations as full
  references, platforms as OCI (architecture, os, variant), and the :class:`ImageOptions` of
  each image. A pipeline generator (``ociforge ci gitlab``) builds on the same values.

Example::

    [defaults]
    registry = "registry.gitlab.com/group/images"
    tags = ["latest", "nightly-{date}"]

    [images.tools]
    source = ".#tools"

    [images.builder.platforms]
    x86_64-linux = ".#packages.x86_64-linux.builder"
    aarch64-linux = ".#packages.aarch64-linux.builder"
"""

from __future__ import annotations

import datetime
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ociforge.assemble import ImageOptions
from ociforge.batch.plan import (
    PlatformSource,
    ResolvedImage,
    expand_tag,
    expand_text,
    parse_platform,
)
from ociforge.compress import Compression, CompressionOptions
from ociforge.errors import UsageError
from ociforge.layering import STRATEGIES

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same module, on PyPI for Python 3.10
    import tomli as tomllib

_NAME_RE = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(_Strict):
    """What every image gets unless it says otherwise."""

    # host[:port]/path ($CI_REGISTRY_IMAGE works): an image's repository is registry/name
    registry: str | None = None
    tags: tuple[str, ...] = ("latest",)
    format: Literal["oci", "docker"] = "oci"
    compression: Literal["gzip", "zstd", "none"] = "gzip"
    # auto: dependencies that several images share form the same layers in each (uploaded once).
    layering: str = "auto"
    max_layers: int = Field(default=100, ge=2)
    annotations: dict[str, str] = {}

    @field_validator("layering")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown layering strategy {value!r}, one of {', '.join(STRATEGIES)}")
        return value


class ImageEntry(_Strict):
    """One image: a source, or one source per platform (then an index is written)."""

    source: str | None = None
    platforms: dict[str, str] = {}  # nix system (x86_64-linux) or os/arch[/variant] -> source
    repository: str | None = None  # default: the entry's name
    tags: tuple[str, ...] | None = None  # replace the default tags
    registries: tuple[str, ...] = ()  # more host[:port]/path prefixes pushed the same image
    format: Literal["oci", "docker"] | None = None
    compression: Literal["gzip", "zstd", "none"] | None = None
    max_layers: int | None = Field(default=None, ge=2)
    annotations: dict[str, str] = {}

    @model_validator(mode="after")
    def _one_kind_of_source(self) -> ImageEntry:
        if (self.source is None) == (not self.platforms):
            raise ValueError("give either source or platforms (one source per platform)")
        for key in self.platforms:
            try:
                parse_platform(key)
            except UsageError as error:
                raise ValueError(str(error)) from None
        return self


class ImageRepo(_Strict):
    """The whole file."""

    defaults: Defaults = Defaults()
    images: dict[str, ImageEntry] = Field(min_length=1)

    @field_validator("images")
    @classmethod
    def _names(cls, images: dict[str, ImageEntry]) -> dict[str, ImageEntry]:
        for name, entry in images.items():
            repo = entry.repository or name
            if not _NAME_RE.fullmatch(repo):
                raise ValueError(f"{repo!r} is not a repository name (lower case, a-z 0-9 . _ - /)")
        return images

    def resolve(self, env: Mapping[str, str], now: datetime.datetime) -> tuple[ResolvedImage, ...]:
        """Every image of the file as this run pushes it (see the module doc)."""
        return tuple(
            self._resolve_one(name, entry, env, now) for name, entry in self.images.items()
        )

    def _resolve_one(
        self, name: str, entry: ImageEntry, env: Mapping[str, str], now: datetime.datetime
    ) -> ResolvedImage:
        d = self.defaults
        where = f"images.{name}"
        prefixes = [
            expand_text(p, env, now, where)
            for p in ([d.registry] if d.registry else []) + list(entry.registries)
        ]
        if not prefixes:
            raise UsageError(f"images.{name}: no registry: set defaults.registry or registries")
        tags = tuple(expand_tag(t, env, now, f"images.{name}") for t in entry.tags or d.tags)
        repo = entry.repository or name
        compression = Compression(entry.compression or d.compression)
        options = ImageOptions(
            format=entry.format or d.format,
            strategy=d.layering,
            max_layers=entry.max_layers or d.max_layers,
            compression=CompressionOptions(compression),
            annotations={**d.annotations, **entry.annotations},
        )
        if entry.source is not None:
            children: tuple[PlatformSource, ...] = (PlatformSource(None, entry.source),)
        else:
            children = tuple(
                PlatformSource(parse_platform(k), v) for k, v in sorted(entry.platforms.items())
            )
        return ResolvedImage(
            name=name,
            repositories=tuple(f"{p.rstrip('/')}/{repo}" for p in prefixes),
            tags=tuple(dict.fromkeys(tags)),
            children=children,
            options=options,
        )


def load_image_repo(path: str | Path) -> ImageRepo:
    """Read and validate ``images.toml``; :class:`UsageError` naming the file, entry and field."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"cannot read {file}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{file}: not valid TOML: {error}") from None
    try:
        return ImageRepo.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise UsageError(f"{file}: {where}: {message}{more}") from None
