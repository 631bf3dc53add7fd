"""``images.toml`` as a GitLab child pipeline: the jobs ``ociforge ci gitlab`` writes.

Every image gets a job per platform, each on a runner of that architecture, running
``ociforge push-all FILE --only NAME --platform SYSTEM`` (the child under ``TAG-ARCH``); a
multi-platform image then gets an index job, ``--index-only``, which joins what its platform
jobs pushed and needs nothing else. An image with one platform is pushed whole by one job.
Tags with ``{date}`` come out the same in every job: the pipeline carries its date
(``OCIFORGE_DATE``), which ``push-all`` uses instead of the clock.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ociforge.batch.plan import ResolvedImage
from ociforge.ci_gitlab import ImageJob, IndexJob
from ociforge.image.documents import Platform

DATE_VARIABLE = "OCIFORGE_DATE"
DEFAULT_SYSTEM = "x86_64-linux"  # a single-platform image's job: the usual runners
_SYSTEMS = {("amd64", None): "x86_64", ("arm64", None): "aarch64", ("arm64", "v8"): "aarch64"}


def gitlab_jobs(
    images: Sequence[ResolvedImage], file: str
) -> tuple[list[ImageJob], list[IndexJob]]:
    """The platform jobs and index jobs of ``images`` (read from ``file``)."""
    jobs: list[ImageJob] = []
    indexes: list[IndexJob] = []
    for image in images:
        command = f"ociforge push-all {shlex.quote(file)} --only {shlex.quote(image.name)}"
        if not image.multi_platform:
            jobs.append(ImageJob(image.name, DEFAULT_SYSTEM, (command,)))
            continue
        systems = [nix_system(c.platform) for c in image.children if c.platform is not None]
        jobs += [ImageJob(image.name, s, (f"{command} --platform {s}",)) for s in systems]
        indexes.append(IndexJob(image.name, tuple(systems), (f"{command} --index-only",)))
    return jobs, indexes


def nix_system(platform: Platform) -> str:
    """The Nix system of an OCI platform (``arm64`` -> ``aarch64-linux``): what runner tags
    and ``--platform`` are keyed by."""
    arch = _SYSTEMS.get((platform.architecture, platform.variant))
    if arch is None and platform.architecture == "arm":
        arch = f"arm{platform.variant or 'v7'}l"
    return f"{arch or platform.architecture}-{platform.os}"
