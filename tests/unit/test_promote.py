"""copy, tag and inspect over in-memory registries (tests/support/fakeregistry.py): the bytes a
destination ends up with, what a lying source gets refused for, and that nothing is tagged
then. The real registries are in tests/integration/test_promote.py."""

from __future__ import annotations

import json

import pytest

from ociforge.errors import RegistryDigestError
from ociforge.image.documents import parse_config_summary
from ociforge.publish.promote import add_tags, copy_to, describe
from ociforge.reference import parse_reference
from ociforge.registry import RegistryClient
from tests.support.fakeregistry import REGISTRY, FakeRegistry, sha

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = b"layer bytes " * 1000
CONFIG = json.dumps(
    {
        "architecture": "arm64",
        "os": "linux",
        "created": "2026-12-03T00:00:00Z",
        "rootfs": {"type": "layers", "diff_ids": [sha(b"tar")]},
        "history": [{"empty_layer": True, "created_by": "nothing"}, {"comment": "store paths: a"}],
    }
).encode()


def seeded() -> tuple[FakeRegistry, bytes]:
    fake = FakeRegistry()
    fake.blobs["src"] = {sha(LAYER): LAYER, sha(CONFIG): CONFIG}
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha(CONFIG), "size": len(CONFIG)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": sha(LAYER), "size": len(LAYER)}],
        }
    ).encode()  # fmt: skip
    fake.manifests[("src", "v1")] = (manifest, OCI_MANIFEST)
    fake.manifests[("src", sha(manifest))] = (manifest, OCI_MANIFEST)
    return fake, manifest


def client(fake: FakeRegistry) -> RegistryClient:
    return RegistryClient(REGISTRY, transport=fake.transport(), backoff=0, retries=1)


def test_copy_across_registries_gives_the_same_bytes() -> None:
    source, manifest = seeded()
    dest = FakeRegistry()
    src, ref = parse_reference(f"{REGISTRY}/src:v1"), parse_reference(f"{REGISTRY}/dst:v1")
    with client(source) as origin, client(dest) as target:
        result = copy_to(origin, target, src, [ref])
    assert dest.manifests[("dst", "v1")] == (manifest, OCI_MANIFEST)
    assert dest.blobs["dst"] == source.blobs["src"]
    assert {b.outcome for b in result.blobs} == {"uploaded"}
    assert result.manifest_digest == sha(manifest)


@pytest.mark.parametrize(
    ("served", "said"),
    [(b"x" * len(LAYER), sha(b"x" * len(LAYER))), (LAYER + b"!", "more than")],
)
def test_a_source_sending_other_bytes_fails_and_tags_nothing(served: bytes, said: str) -> None:
    source, _ = seeded()
    source.blobs["src"][sha(LAYER)] = served
    dest = FakeRegistry()
    src, ref = parse_reference(f"{REGISTRY}/src:v1"), parse_reference(f"{REGISTRY}/dst:v1")
    with (
        client(source) as origin,
        client(dest) as target,
        pytest.raises(RegistryDigestError, match=said),
    ):
        copy_to(origin, target, src, [ref])
    assert dest.manifests == {}
    assert sha(LAYER) not in dest.blobs.get("dst", {})


def test_copy_within_a_registry_mounts() -> None:
    fake, _ = seeded()
    src, ref = parse_reference(f"{REGISTRY}/src:v1"), parse_reference(f"{REGISTRY}/dst:v1")
    with client(fake) as both:
        result = copy_to(both, both, src, [ref])
    assert {b.outcome for b in result.blobs} == {"mounted"}
    assert fake.calls("PATCH") == []


def test_tag_sends_no_blob_request() -> None:
    fake, manifest = seeded()
    with client(fake) as registry:
        result = add_tags(registry, parse_reference(f"{REGISTRY}/src:v1"), ["stable", "x"])
    assert result.references == (f"{REGISTRY}/src:stable", f"{REGISTRY}/src:x")
    assert fake.manifests[("src", "stable")] == (manifest, OCI_MANIFEST)
    assert not [r for r in fake.requests if "/blobs/" in r.path]


def test_describe_reads_platform_and_history_comments() -> None:
    fake, _ = seeded()
    with client(fake) as registry:
        found = describe(registry, parse_reference(f"{REGISTRY}/src:v1"))
    (image,) = found.images
    assert (image.platform.architecture if image.platform else None) == "arm64"
    assert [layer.comment for layer in image.layers] == ["store paths: a"]
    assert image.size == len(LAYER) + len(CONFIG)


def test_config_summary_pads_a_short_history() -> None:
    summary = parse_config_summary(b'{"architecture": "amd64", "os": "linux"}', 2)
    assert summary.layer_comments == ("", "")
