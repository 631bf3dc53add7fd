"""Manifest annotations: the user's ``--annotation K=V`` and those GitLab CI variables give.

Annotations go in the manifest, never in the config: the config (and so every layer's place in
the image) stays reproducible, while the manifest says where and from which commit it came.
``created`` is the commit's time, not the clock's, so pushing the same commit again gives the
same manifest and the push is "up to date".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ociforge.errors import UsageError
from ociforge.image.config import check_text, parse_env_items

__all__ = [
    "CI_ANNOTATIONS",
    "check_annotations",
    "ci_annotations",
    "merge_annotations",
    "parse_annotation_items",
]

RESERVED_PREFIX = "dev.ociforge."  # the layer keys

# annotation -> the GitLab CI predefined variable it is read from
CI_ANNOTATIONS: Mapping[str, str] = {
    "org.opencontainers.image.source": "CI_PROJECT_URL",
    "org.opencontainers.image.revision": "CI_COMMIT_SHA",
    "org.opencontainers.image.created": "CI_COMMIT_TIMESTAMP",
}


def ci_annotations(environ: Mapping[str, str]) -> dict[str, str]:
    """The OCI annotations that the CI variables present in ``environ`` give."""
    return {key: environ[var] for key, var in CI_ANNOTATIONS.items() if environ.get(var)}


def parse_annotation_items(items: Sequence[str]) -> dict[str, str]:
    """``["K=V", ...]`` -> mapping; an empty value (``K=``) asks to drop an automatic one."""
    return check_annotations(parse_env_items(items, option="--annotation"))


def check_annotations(annotations: Mapping[str, str]) -> dict[str, str]:
    """UsageError for a key ociforge writes itself (it recognises layers by them)."""
    check_text(annotations, "--annotation")
    for key in annotations:
        if key.startswith(RESERVED_PREFIX):
            raise UsageError(f"--annotation {key}: keys under {RESERVED_PREFIX} are ociforge's own")
    return dict(annotations)


def merge_annotations(automatic: Mapping[str, str], explicit: Mapping[str, str]) -> dict[str, str]:
    """``explicit`` wins; an explicit empty value removes the key. Sorted by key."""
    merged = {**automatic, **explicit}
    return {k: v for k, v in sorted(merged.items()) if v != ""}
