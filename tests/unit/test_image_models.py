"""Models and canonical JSON: the bytes we hash are stable, foreign documents still parse."""

from __future__ import annotations

import json

import pydantic
import pytest

from ociforge.digest import Digest
from ociforge.errors import ImageError
from ociforge.image import (
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    canonical_json,
    describe_bytes,
    parse_image_config,
    parse_index,
    parse_manifest,
)

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def small_manifest() -> Manifest:
    return Manifest(
        schemaVersion=2,
        mediaType=OCI_MANIFEST,
        config=Descriptor(mediaType=OCI_CONFIG, digest=A, size=7),
        layers=[Descriptor(mediaType=OCI_LAYER_GZIP, digest=B, size=42)],
    )


def test_canonical_json_is_sorted_compact_and_without_nulls() -> None:
    assert canonical_json(small_manifest()) == (
        b'{"config":{"digest":"' + A.encode() + b'","mediaType":"' + OCI_CONFIG.encode() + b'",'
        b'"size":7},"layers":[{"digest":"'
        + B.encode()
        + b'","mediaType":"'
        + OCI_LAYER_GZIP.encode()
        + b'","size":42}],"mediaType":"'
        + OCI_MANIFEST.encode()
        + b'","schemaVersion":2}'
    )


def test_canonical_json_digest_is_pinned() -> None:
    # A change here changes every image digest ociforge ever produced: do it on purpose only.
    data = canonical_json(small_manifest())
    assert str(Digest.of(data)) == (
        "sha256:60fb22377c7ac08e26b990c701e329da309e2e988db9a278eb170861799159bd"
    )


def test_canonical_json_keeps_unicode_as_utf8_and_has_no_newline() -> None:
    data = canonical_json({"b": "é", "a": [1, None]})
    assert data == '{"a":[1,null],"b":"é"}'.encode()
    assert not data.endswith(b"\n")


def test_same_model_built_either_way_gives_same_bytes() -> None:
    by_alias = Descriptor(mediaType=OCI_CONFIG, digest=A, size=1, annotations={"k": "v"})
    by_name = Descriptor.model_validate(
        {"media_type": OCI_CONFIG, "digest": A, "size": 1, "annotations": {"k": "v"}}
    )
    assert canonical_json(by_alias) == canonical_json(by_name)


def test_models_we_produce_refuse_unknown_fields_and_are_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        Descriptor.model_validate({"mediaType": OCI_CONFIG, "digest": A, "size": 1, "sise": 2})
    descriptor = Descriptor(mediaType=OCI_CONFIG, digest=A, size=1)
    with pytest.raises(pydantic.ValidationError):
        descriptor.size = 2


@pytest.mark.parametrize("digest", ["sha256:abc", "sha256:" + "A" * 64, "md5", ""])
def test_descriptor_refuses_bad_digests(digest: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        Descriptor(mediaType=OCI_CONFIG, digest=digest, size=1)


def test_describe_bytes() -> None:
    d = describe_bytes(b"{}", OCI_CONFIG)
    assert (d.digest, d.size, d.media_type) == (str(Digest.of(b"{}")), 2, OCI_CONFIG)
    assert d.sha256 == Digest.of(b"{}")


def test_parse_manifest_round_trips_our_bytes() -> None:
    data = canonical_json(small_manifest())
    assert canonical_json(parse_manifest(data)) == data


def test_parse_manifest_tolerates_fields_it_does_not_know() -> None:
    doc = json.loads(canonical_json(small_manifest()))
    doc["mediaType"] = DOCKER_MANIFEST
    doc["futureField"] = {"x": 1}
    doc["config"]["data"] = "e30="
    manifest = parse_manifest(json.dumps(doc).encode())
    assert manifest.media_type == DOCKER_MANIFEST
    assert manifest.layers[0].size == 42


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"schemaVersion":1,"fsLayers":[]}', "schema 1"),
        (b'{"schemaVersion":2,"mediaType":"' + OCI_INDEX.encode() + b'","manifests":[]}', "index"),
        (b'{"schemaVersion":2,"manifests":[]}', "index"),
        (b'{"schemaVersion":2,"mediaType":"text/plain"}', "text/plain"),
        (b'{"schemaVersion":2,"layers":[]}', "config"),
        (
            b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:12","size":1},'
            b'"layers":[]}',
            "config.digest",
        ),
    ],
)
def test_parse_manifest_refuses_garbage_with_image_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message) as info:
        parse_manifest(data)
    assert "\n" not in str(info.value)


def test_parse_index_reads_a_docker_manifest_list() -> None:
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
    index = parse_index(data)
    platform = index.manifests[0].platform
    assert platform is not None
    assert (platform.architecture, platform.variant) == ("arm", "v7")
    with pytest.raises(ImageError, match="not an image index"):
        parse_index(canonical_json(small_manifest()))


def test_parse_image_config_reads_a_docker_config() -> None:
    data = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "docker_version": "24.0.7",
            "container_config": {"Hostname": "abc"},
            "config": {"Env": ["PATH=/bin"], "Cmd": None, "ArgsEscaped": True, "Hostname": ""},
            "rootfs": {"type": "layers", "diff_ids": [A]},
            "history": [{"created_by": "/bin/sh -c #(nop) ADD", "empty_layer": False}],
        }
    ).encode()
    config = parse_image_config(data)
    assert config.config is not None
    assert config.config.env == ["PATH=/bin"]
    assert list(config.rootfs.diff_ids) == [A]
    with pytest.raises(ImageError, match="rootfs"):
        parse_image_config(b'{"architecture":"amd64","os":"linux"}')
