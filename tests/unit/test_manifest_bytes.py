"""The bytes of the configs and manifests ociforge writes: pinned, and the same in every process.

A warm push knows a tag is current by serialising the manifest it would push and comparing
digests, so these bytes are what "up to date" means.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ociforge.assemble import ImageOptions, ImagePlan, plan_image
from ociforge.assemble.annotations import parse_annotation_items
from ociforge.assemble.layer import LayerDigests
from ociforge.digest import Digest
from ociforge.errors import UsageError
from ociforge.image.config import RuntimeConfig
from ociforge.source import ImageSource
from tests.unit.test_customise import closure_of

REPO = Path(__file__).resolve().parents[2]
ROOT = "/nix/store/" + "a" * 32 + "-hello-1.0"


def facts(plan: ImagePlan) -> list[LayerDigests]:
    return [
        LayerDigests(Digest.of(f"tar {i}".encode()), Digest.of(f"gz {i}".encode()), 10 + i)
        for i in range(len(plan.layers))
    ]


def fixed_plan(options: ImageOptions) -> ImagePlan:
    """A plan whose layer keys are fixed: they name zlib's and libzstd's versions, which CI
    machines do not share."""
    plan = plan_image(ImageSource(closure_of(ROOT)), options, host_system="x86_64-linux")
    layers = tuple(
        dataclasses.replace(layer, key=f"sha256:{i:064x}") for i, layer in enumerate(plan.layers)
    )
    return dataclasses.replace(plan, layers=layers)


FULL = ImageOptions(
    link_roots=False,
    annotations={"a": "1"},
    runtime=RuntimeConfig(
        cmd=("/bin/hello",), env={"A": "1"}, labels={"l": "x", "b": "y"}, volumes=("/v", "/w")
    ),
)


def digests(options: ImageOptions) -> tuple[str, str]:
    plan = fixed_plan(options)
    built = plan.finish(facts(plan))
    return str(Digest.of(built.config)), str(Digest.of(built.manifest))


PINNED = {  # the same bytes as ociforge 4466908 wrote, before configs were plain JSON
    "full": (
        "sha256:c13e8692cc67f1606a2bf110eadc4421a58f511c491cc3b62219d55d3244d196",
        "sha256:826765b397b574e14f75e80b658c86766e72fb073a9fb237c8a8e4fdbf79ab19",
    ),
    "empty": (
        "sha256:918ed7d3028edcb18703fbca371288a7471e53a0003f27dbe9112934657ac7eb",
        "sha256:6e891c9d2288c8ccbe1120319b8e85f926d4c30e6e94eb439dbc5d1843484d0b",
    ),
}


@pytest.mark.parametrize("name", PINNED)
def test_the_bytes_of_a_fixed_plan_are_pinned(name: str) -> None:
    """If this fails, ociforge writes other bytes for the same image: every tag it pushed
    before gets a new manifest on its next push (the layers stay). Pin the new digests only
    if that is meant."""
    options = FULL if name == "full" else ImageOptions(link_roots=False)
    assert digests(options) == PINNED[name], "other config or manifest bytes for the same image"


BYTES = """
from tests.unit.test_manifest_bytes import FULL, digests
print(digests(FULL))
"""


def test_the_hash_seed_does_not_change_them() -> None:
    seen = {
        subprocess.run(
            [sys.executable, "-c", BYTES],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(seen) == 1 and "sha256:" in next(iter(seen))


def test_the_manifest_carries_the_user_s_annotations_and_the_layer_keys() -> None:
    plan = fixed_plan(FULL)
    manifest = json.loads(plan.finish(facts(plan)).manifest)
    assert manifest["annotations"] == {"a": "1"}
    assert [d["annotations"] for d in manifest["layers"]] == [
        {"dev.ociforge.layer.key": layer.key} for layer in plan.layers
    ]
    docker = fixed_plan(ImageOptions(format="docker", link_roots=False))
    built = json.loads(docker.finish(facts(docker)).manifest)
    assert "annotations" not in built and all("annotations" not in d for d in built["layers"])


def test_annotations_must_be_text() -> None:
    with pytest.raises(UsageError, match="must be text"):
        fixed_plan(ImageOptions(annotations={"a": 1}))  # type: ignore[dict-item]


def test_ociforge_s_own_annotation_keys_are_refused() -> None:
    with pytest.raises(UsageError, match=r"under dev\.ociforge\. are"):
        parse_annotation_items(["dev.ociforge.layer.key=x"])
    with pytest.raises(UsageError, match=r"under dev\.ociforge\. are"):
        fixed_plan(ImageOptions(annotations={"dev.ociforge.layer.key": "x"}))
