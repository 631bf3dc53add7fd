"""A GitLab CI child pipeline that spreads an image repository over runners.

One job per image and platform, on a runner of that architecture (``tags``), started at once
(``needs: []``); one index job per multi-platform image that waits only for its own children
(``needs``); every job retried on runner failures (not on ociforge's own errors, which a retry
would only repeat). The parent pipeline runs ``ociforge ci gitlab`` and triggers the file
(examples/image-repo/scale-out).

The input is small and typed: :class:`ImageJob` and :class:`IndexJob`, each with the commands
it runs. **Adapter point for images.toml** (push-all's model): map each image and platform to
an ``ImageJob`` whose script pushes that one image (e.g. ``ociforge push-all images.toml
--only NAME --platform SYSTEM``) and each multi-platform image to an ``IndexJob`` (``ociforge
index ...``), then call :func:`gitlab_pipeline`; :func:`read_jobs_file` is the same input as a
JSON file, for job lists written by hand or by another tool.

The YAML is written here, not by a library: block style, every string double-quoted (a JSON
string is a valid YAML double-quoted scalar), keys in the order given: the same input gives
the same bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ociforge.errors import UsageError

# GitLab.com's hosted Linux runners; self-managed runners use their own tags (--runner-tags).
DEFAULT_RUNNER_TAGS: Mapping[str, tuple[str, ...]] = {
    "x86_64-linux": ("saas-linux-small-amd64",),
    "aarch64-linux": ("saas-linux-small-arm64",),
}
# Failures of the runner, not of the job: worth another runner. A script's exit is not.
RETRY_WHEN = (
    "runner_system_failure",
    "stuck_or_timeout_failure",
    "scheduler_failure",
    "api_failure",
)
DEFAULT_JOB_IMAGE = "$OCIFORGE_IMAGE"  # the project's own ociforge image, set by the parent
_SYSTEM_RE = re.compile(r"[a-z0-9_]+-[a-z0-9_]+")
_PLAIN_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # needs no quotes as a YAML key
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


@dataclass(frozen=True)
class ImageJob:
    """Push one image for one platform (a Nix system such as ``x86_64-linux``)."""

    image: str
    platform: str
    script: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.image}:{self.platform}"


@dataclass(frozen=True)
class IndexJob:
    """Join the platforms of ``image`` into an index, once their jobs have succeeded."""

    image: str
    platforms: tuple[str, ...]
    script: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.image}:index"


@dataclass(frozen=True)
class GitlabOptions:
    """``job_image`` None leaves ``image:`` out (shell executors; gitlab-ci-local without
    docker). ``runner_tags`` maps a platform to the tags of its runners (no entry: no tags)."""

    job_image: str | None = DEFAULT_JOB_IMAGE
    runner_tags: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_RUNNER_TAGS)
    index_tags: tuple[str, ...] = ()
    retries: int = 2
    variables: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or self.retries not in (0, 1, 2):
            raise UsageError(f"retries must be 0, 1 or 2 (GitLab's limit), got {self.retries!r}")


def gitlab_pipeline(
    images: Sequence[ImageJob],
    indexes: Sequence[IndexJob] = (),
    options: GitlabOptions | None = None,
) -> str:
    """The child pipeline's YAML for these jobs."""
    opts = options or GitlabOptions()
    _check_jobs(images, indexes)
    doc: dict[str, Any] = {"stages": ["images", "indexes"] if indexes else ["images"]}
    if opts.variables:
        doc["variables"] = dict(opts.variables)
    for job in images:
        tags = opts.runner_tags.get(job.platform, ())
        variables = {"OCIFORGE_IMAGE_NAME": job.image, "OCIFORGE_PLATFORM": job.platform}
        doc[job.name] = _job(
            opts, "images", tags=tags, needs=[], variables=variables, script=job.script
        )
    for index in indexes:
        needs = [f"{index.image}:{p}" for p in index.platforms]
        variables = {"OCIFORGE_IMAGE_NAME": index.image}
        doc[index.name] = _job(
            opts,
            "indexes",
            tags=opts.index_tags,
            needs=needs,
            variables=variables,
            script=index.script,
        )
    return to_yaml(doc)


def _job(
    opts: GitlabOptions,
    stage: str,
    *,
    tags: Sequence[str],
    needs: list[str],
    variables: dict[str, str],
    script: Sequence[str],
) -> dict[str, Any]:
    job: dict[str, Any] = {"stage": stage}
    if opts.job_image is not None:
        job["image"] = opts.job_image
    if tags:
        job["tags"] = list(tags)
    job["needs"] = needs  # [] for image jobs: they start at once, not after a stage
    job["variables"] = variables
    if opts.retries:
        job["retry"] = {"max": opts.retries, "when": list(RETRY_WHEN)}
    job["script"] = list(script)
    return job


def _check_jobs(images: Sequence[ImageJob], indexes: Sequence[IndexJob]) -> None:
    if not images:
        raise UsageError("the pipeline has no image jobs")
    seen: set[str] = set()
    for job in images:
        _check_job(job.image, job.script, job.name)
        _check_platform(job.platform, job.name)
        if job.name in seen:
            raise UsageError(f"image {job.image} has two jobs for {job.platform}")
        seen.add(job.name)
    for index in indexes:
        _check_job(index.image, index.script, index.name)
        missing = [p for p in index.platforms if f"{index.image}:{p}" not in seen]
        if not index.platforms or missing:
            raise UsageError(
                f"index job {index.name} needs image jobs for {', '.join(missing) or 'a platform'}"
            )


def _check_platform(platform: str, name: str) -> None:
    if not _SYSTEM_RE.fullmatch(platform):
        raise UsageError(f"job {name}: {platform!r} is not a Nix system like x86_64-linux")


def _check_job(image: str, script: Sequence[str], name: str) -> None:
    if not _NAME_RE.fullmatch(image):
        raise UsageError(f"job {name}: {image!r} is not an image name")
    if not script or not all(isinstance(line, str) and line.strip() for line in script):
        raise UsageError(f"job {name}: its script must be a list of commands")


def read_jobs_file(path: str) -> tuple[list[ImageJob], list[IndexJob]]:
    """``{"images": [{"image", "platform", "script"}], "indexes": [{"image", "platforms",
    "script"}]}`` from ``path``; UsageError naming the file and the entry otherwise."""
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) - {"images", "indexes"}:
        raise UsageError(f'{path}: want an object with "images" and optionally "indexes"')
    images = [
        ImageJob(
            _text(e, "image", path, f"images[{i}]"),
            _text(e, "platform", path, f"images[{i}]"),
            _texts(e, "script", path, f"images[{i}]"),
        )
        for i, e in enumerate(_entries(doc, "images", path))
    ]
    indexes = [
        IndexJob(
            _text(e, "image", path, f"indexes[{i}]"),
            _texts(e, "platforms", path, f"indexes[{i}]"),
            _texts(e, "script", path, f"indexes[{i}]"),
        )
        for i, e in enumerate(_entries(doc, "indexes", path))
    ]
    return images, indexes


def _entries(doc: Mapping[str, Any], key: str, path: str) -> list[Mapping[str, Any]]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise UsageError(f"{path}: {key} must be a list of objects")
    return value


def _text(entry: Mapping[str, Any], key: str, path: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str):
        raise UsageError(f"{path}: {where}.{key} must be a string")
    return value


def _texts(entry: Mapping[str, Any], key: str, path: str, where: str) -> tuple[str, ...]:
    value = entry.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{path}: {where}.{key} must be a list of strings")
    return tuple(value)


def to_yaml(value: Mapping[str, Any]) -> str:
    """Block-style YAML of plain JSON-like data (dicts, lists, str, int, bool)."""
    return "\n".join(_yaml_lines(value, 0)) + "\n"


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            bare = _PLAIN_KEY_RE.fullmatch(str(key)) is not None
            head = f"{pad}{key if bare else _scalar(str(key))}:"
            lines += _nested(head, item, indent)
    else:
        for item in value:
            lines += _nested(f"{pad}-", item, indent)
    return lines


def _nested(head: str, item: Any, indent: int) -> list[str]:
    if isinstance(item, (Mapping, list)):
        # An empty one has no block form: [] or {} (flow style, valid YAML).
        return [head, *_yaml_lines(item, indent + 2)] if item else [f"{head} {json.dumps(item)}"]
    return [f"{head} {_scalar(item)}"]


def _scalar(value: Any) -> str:
    if isinstance(value, int):  # bool too: true/false
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise UsageError(f"cannot write {type(value).__name__} in the pipeline")
