"""The one document codec: pinned bytes for what we write, strict readers for what others wrote."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ociforge.digest import Digest
from ociforge.errors import ImageError
from ociforge.image.documents import (
    Descriptor,
    Manifest,
    Platform,
    canonical_bytes,
    config_diff_ids,
    parse_index,
    parse_manifest,
)
from ociforge.spec import DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def small_manifest() -> Manifest:
    return Manifest(
        OCI_MANIFEST,
        Descriptor(OCI_CONFIG, Digest.parse(A), 7),
        (Descriptor(OCI_LAYER_GZIP, Digest.parse(B), 42),),
    )


def manifest(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": A, "size": 9},
        "layers": [
            {
                "mediaType": OCI_LAYER_GZIP,
                "digest": B,
                "size": 1234,
                "annotations": {"dev.ociforge.layer.key": "k1"},
            },
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": A, "size": 0},
        ],
        "annotations": {"org.example.built-by": "test"},
        "futureField": {"ignored": True},
    }
    doc.update(changes)
    return doc


def test_canonical_bytes_are_sorted_compact_and_pinned() -> None:
    data = small_manifest().to_bytes()
    assert data == (
        b'{"config":{"digest":"' + A.encode() + b'","mediaType":"' + OCI_CONFIG.encode() + b'",'
        b'"size":7},"layers":[{"digest":"'
        + B.encode()
        + b'","mediaType":"'
        + OCI_LAYER_GZIP.encode()
        + b'","size":42}],"mediaType":"'
        + OCI_MANIFEST.encode()
        + b'","schemaVersion":2}'
    )
    # A change here changes every image digest ociforge ever produced: do it on purpose only.
    assert str(Digest.of(data)) == (
        "sha256:60fb22377c7ac08e26b990c701e329da309e2e988db9a278eb170861799159bd"
    )


def test_canonical_bytes_keep_unicode_as_utf8_and_have_no_newline() -> None:
    data = canonical_bytes({"b": "é", "a": [1, None]})
    assert data == '{"a":[1,null],"b":"é"}'.encode()


def test_a_descriptor_of_bytes() -> None:
    d = Descriptor.of(b"{}", OCI_CONFIG)
    assert (d.media_type, d.digest, d.size) == (OCI_CONFIG, Digest.of(b"{}"), 2)
    assert d.document() == {"mediaType": OCI_CONFIG, "digest": str(Digest.of(b"{}")), "size": 2}


def test_our_bytes_read_back_to_the_same_manifest() -> None:
    ours = small_manifest()
    assert parse_manifest(ours.to_bytes()) == ours
    annotated = Manifest(ours.media_type, ours.config, ours.layers, {"a": "1"})
    assert parse_manifest(annotated.to_bytes()).to_bytes() == annotated.to_bytes()


def test_a_foreign_manifest_reads_with_unknown_fields_ignored() -> None:
    read = parse_manifest(json.dumps(manifest()).encode())
    assert read.config.digest == Digest.parse(A)
    assert [(d.digest, d.size, dict(d.annotations)) for d in read.layers] == [
        (Digest.parse(B), 1234, {"dev.ociforge.layer.key": "k1"}),
        (Digest.parse(A), 0, {}),
    ]
    assert read.annotations == {"org.example.built-by": "test"}
    docker = manifest(
        mediaType=None,
        config={
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": A,
            "size": 1,
        },
    )
    assert parse_manifest(json.dumps(docker).encode()).media_type == DOCKER_MANIFEST


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"schemaVersion":1,"fsLayers":[]}', "schema 1"),
        (manifest(schemaVersion=2.0), "schema 2"),
        (manifest(mediaType=OCI_INDEX, manifests=[]), "index"),
        (manifest(mediaType=None, manifests=[]), "index"),
        (manifest(mediaType="text/plain"), "text/plain"),
        (manifest(layers="x"), "no layers"),
        (manifest(config=None), "config is not a descriptor"),
        (manifest(layers=[{"mediaType": "m", "digest": B, "size": -1}]), "size"),
        (manifest(layers=[{"mediaType": "m", "digest": B, "size": True}]), "size"),
        (manifest(layers=[{"digest": B, "size": 1}]), "mediaType"),
        (manifest(layers=[{"mediaType": "m", "digest": B + "0", "size": 1}]), "digest"),
        (manifest(config={"mediaType": "m", "digest": "md5:abc", "size": 1}), "sha256"),
        (
            manifest(layers=[{"mediaType": "m", "digest": B, "size": 1, "annotations": {"a": 1}}]),
            "map of strings",
        ),
        (
            manifest(layers=[{"mediaType": "m", "digest": B, "size": 1, "platform": "x"}]),
            "platform",
        ),
    ],
)
def test_what_is_not_a_manifest_is_refused_in_one_line(
    doc: bytes | dict[str, Any], message: str
) -> None:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(ImageError, match=message) as info:
        parse_manifest(data)
    assert "\n" not in str(info.value)


def test_an_index_reads_its_platforms() -> None:
    data = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [
                {
                    "mediaType": DOCKER_MANIFEST,
                    "digest": A,
                    "size": 10,
                    "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
                }
            ],
        }
    ).encode()
    assert parse_index(data).manifests[0].platform == Platform("arm", "linux", "v7")
    with pytest.raises(ImageError, match="not an image index"):
        parse_index(small_manifest().to_bytes())


def test_config_diff_ids() -> None:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [B, A]},
    }
    assert config_diff_ids(json.dumps(config).encode()) == (Digest.parse(B), Digest.parse(A))
    broken_configs: list[dict[str, Any]] = [
        {},
        {"rootfs": []},
        {"rootfs": {"type": "other", "diff_ids": []}},
        {"rootfs": {"type": "layers", "diff_ids": "x"}},
        {"rootfs": {"type": "layers", "diff_ids": [1]}},
    ]
    for broken in broken_configs:
        with pytest.raises(ImageError):
            config_diff_ids(json.dumps(broken).encode())
