"""Media type choice: the right type per format and compression, docker + zstd refused."""

from __future__ import annotations

import pytest

from ociforge.errors import UsageError
from ociforge.spec import (
    ACCEPT_MANIFEST_TYPES,
    config_media_type,
    layer_media_type,
    manifest_media_type,
)


@pytest.mark.parametrize(
    ("fmt", "compression", "expected"),
    [
        ("oci", "gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("oci", "zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("oci", "none", "application/vnd.oci.image.layer.v1.tar"),
        ("docker", "gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ("docker", "none", "application/vnd.docker.image.rootfs.diff.tar"),
    ],
)
def test_layer_media_type(fmt: str, compression: str, expected: str) -> None:
    assert layer_media_type(fmt, compression) == expected  # type: ignore[arg-type]


def test_docker_has_no_zstd_layers() -> None:
    with pytest.raises(UsageError, match=r"Docker .* no zstd") as info:
        layer_media_type("docker", "zstd")
    assert "--compression gzip" in str(info.value)


def test_unknown_compression_and_format_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="'bzip2'"):
        layer_media_type("oci", "bzip2")
    with pytest.raises(UsageError, match="'appc'"):
        manifest_media_type("appc")  # type: ignore[arg-type]


def test_manifest_and_config_types() -> None:
    assert manifest_media_type("oci") == "application/vnd.oci.image.manifest.v1+json"
    assert manifest_media_type("docker") == "application/vnd.docker.distribution.manifest.v2+json"
    assert config_media_type("oci") == "application/vnd.oci.image.config.v1+json"
    assert config_media_type("docker") == "application/vnd.docker.container.image.v1+json"


def test_accept_lists_all_four_manifest_types() -> None:
    assert set(ACCEPT_MANIFEST_TYPES) == {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
