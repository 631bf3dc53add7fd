"""The pydantic-free readers a warm push uses: they agree with the models on what they read and
refuse what the models refuse."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ociforge.digest import Digest
from ociforge.errors import ImageError
from ociforge.image import RuntimeConfig, parse_image_config, parse_manifest
from ociforge.image.config import config_document
from ociforge.image.models import ImageConfig, Manifest, canonical_json
from ociforge.image.summary import (
    BlobDescriptor,
    canonical_bytes,
    config_diff_ids,
    manifest_document,
    summarise_manifest,
)

CONFIG = "sha256:" + "c" * 64
LAYER = "sha256:" + "1" * 64
MEDIA = "application/vnd.oci.image.manifest.v1+json"


def manifest(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": CONFIG,
            "size": 9,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": LAYER,
                "size": 1234,
                "annotations": {"dev.ociforge.layer.key": "k1"},
            },
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": CONFIG, "size": 0},
        ],
        "annotations": {"org.example.built-by": "test", "org.x": "y"},
        "futureField": {"ignored": True},
    }
    doc.update(changes)
    return doc


def test_a_manifest_reads_as_the_models_read_it() -> None:
    data = json.dumps(manifest()).encode()
    summary, model = summarise_manifest(data), parse_manifest(data)
    assert summary.config.digest == model.config.sha256
    assert [(d.digest, d.size, d.media_type, dict(d.annotations)) for d in summary.layers] == [
        (d.sha256, d.size, d.media_type, d.annotations or {}) for d in model.layers
    ]


def test_an_oci_1_1_artifact_manifest_reads() -> None:
    empty = {
        "mediaType": "application/vnd.oci.empty.v1+json",
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "size": 2,
        "data": "e30=",
    }
    doc = manifest(artifactType="application/vnd.example+type", config=empty, subject=empty)
    summary = summarise_manifest(json.dumps(doc).encode())
    assert str(summary.config.digest) == empty["digest"] and len(summary.layers) == 2
    assert parse_manifest(json.dumps(doc).encode()).config.sha256 == summary.config.digest


def test_a_docker_manifest_without_annotations_reads() -> None:
    doc = manifest(mediaType="application/vnd.docker.distribution.manifest.v2+json")
    del doc["annotations"]
    summary = summarise_manifest(json.dumps(doc).encode())
    assert summary.layers[1].annotations == {}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (manifest(schemaVersion=1), "schema 2"),
        (manifest(mediaType="application/vnd.oci.image.index.v1+json"), "schema 2"),
        (manifest(layers="x"), "no layers"),
        (manifest(config=None), "config is not a descriptor"),
        (manifest(layers=[{"mediaType": "m", "digest": LAYER, "size": -1}]), "size"),
        (manifest(layers=[{"digest": LAYER, "size": 1}]), "mediaType"),
        (manifest(layers=[{"mediaType": "m", "digest": LAYER + "0", "size": 1}]), "digest"),
        (
            manifest(
                layers=[{"mediaType": "m", "digest": LAYER, "size": 1, "annotations": {"a": 1}}]
            ),
            "map of strings",
        ),
        (manifest(mediaType=None, manifests=[]), "schema 2"),
    ],
)
def test_what_is_not_a_manifest_is_refused(doc: bytes | dict[str, Any], message: str) -> None:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(ImageError, match=message):
        summarise_manifest(data)
    with pytest.raises(ImageError):
        parse_manifest(data)  # the models agree


@pytest.mark.parametrize(
    "doc",
    [
        manifest(config={"mediaType": "m", "digest": "md5:abc", "size": 1}),
        manifest(layers=[{"mediaType": "m", "digest": LAYER, "size": True}]),
        manifest(schemaVersion=2.0),
    ],
    ids=["not sha256", "bool size", "float version"],
)
def test_stricter_than_the_models_where_they_would_fail_later(doc: dict[str, Any]) -> None:
    """A digest the models accept but ``Descriptor.sha256`` refuses; a size pydantic coerces."""
    with pytest.raises(ImageError):
        summarise_manifest(json.dumps(doc).encode())


def test_config_diff_ids() -> None:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [LAYER, CONFIG]},
    }
    data = json.dumps(config).encode()
    assert config_diff_ids(data) == (Digest.parse(LAYER), Digest.parse(CONFIG))
    assert [str(d) for d in config_diff_ids(data)] == parse_image_config(data).rootfs.diff_ids
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


RUNTIMES = [
    RuntimeConfig(),
    RuntimeConfig(
        entrypoint=("/bin/sh", "-c"),
        cmd=("echo hi",),
        env={"B": "2", "PATH": "/bin"},
        workdir="/w",
        user="1000:1000",
        labels={"z": "1", "a": "é"},
        exposed_ports=("80", "53/udp"),
        volumes=("/data",),
        stop_signal="SIGTERM",
    ),
]


@pytest.mark.parametrize("runtime", RUNTIMES, ids=["empty", "everything"])
def test_the_documents_written_are_the_models_bytes(runtime: RuntimeConfig) -> None:
    """What ociforge writes without pydantic is what the models give, and passes them in
    their strict mode (unknown fields refused: a misspelt key here fails)."""
    args: dict[str, Any] = {
        "runtime": runtime,
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
        "diff_ids": [Digest.parse(LAYER), Digest.parse(CONFIG)],
        "history_comments": ["one", "two"],
        "default_path": "/nix/store/x/bin",
    }
    config = canonical_bytes(config_document(**args))
    assert config == canonical_json(ImageConfig.model_validate(json.loads(config)))
    layer = BlobDescriptor(Digest.parse(LAYER), 5, "application/vnd.oci.image.layer.v1.tar", {})
    keyed = BlobDescriptor(Digest.parse(CONFIG), 7, layer.media_type, {"k": "v"})
    config_blob = BlobDescriptor(Digest.of(config), len(config), "application/x-config", {})
    for notes in ({}, {"a": "1"}):
        document = manifest_document(MEDIA, config_blob, [layer, keyed], notes)
        model = Manifest.model_validate(json.loads(canonical_bytes(document)))
        assert canonical_bytes(document) == canonical_json(model)
