"""The image fingerprint: what a warm push recognises a tag by, and part of every OCI manifest.

So it must change with everything the manifest and config say, and with nothing else: not with
how the closure was read, not with host paths of added files, not with flag orders the JSON
sorts away, not with the interpreter's hash seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ociforge.annotations import parse_annotation_items
from ociforge.assemble import (
    FINGERPRINT_ANNOTATION,
    FINGERPRINT_FORMAT,
    ImageOptions,
    ImagePlan,
    plan_image,
)
from ociforge.customise import ImageSource
from ociforge.digest import Digest
from ociforge.errors import UsageError
from ociforge.essentials import EssentialsOptions
from ociforge.image import RuntimeConfig
from ociforge.image.summary import summarise_manifest
from tests.unit.test_customise import closure_of
from tests.unit.test_essentials import busybox

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Facts:
    diff_id: Digest
    digest: Digest
    size: int


def facts(plan: ImagePlan, salt: str = "") -> list[Facts]:
    return [
        Facts(Digest.of(f"tar {i}{salt}".encode()), Digest.of(f"gz {i}{salt}".encode()), 10 + i)
        for i in range(len(plan.layers))
    ]


@pytest.fixture
def root(tmp_path: Path) -> str:
    return busybox(tmp_path / "store")


def plan_of(root: str, options: ImageOptions, *, system: str | None = "x86_64-linux") -> ImagePlan:
    closure = dataclasses.replace(closure_of(root), system=system)
    return plan_image(ImageSource(closure), options, host_system="x86_64-linux")


def fingerprint(root: str, options: ImageOptions, *, system: str | None = "x86_64-linux") -> str:
    plan = plan_of(root, options, system=system)
    return plan.fingerprint(facts(plan))


def test_the_manifest_carries_the_fingerprint_of_its_plan(root: str) -> None:
    plan = plan_of(root, ImageOptions(annotations={"a": "1"}))
    manifest = json.loads(plan.finish(facts(plan)).manifest)
    assert manifest["annotations"] == {
        "a": "1",
        FINGERPRINT_ANNOTATION: plan.fingerprint(facts(plan)),
    }
    docker = plan_of(root, ImageOptions(format="docker"))
    assert "annotations" not in json.loads(docker.finish(facts(docker)).manifest)


@pytest.mark.parametrize(
    "changed",
    [
        ImageOptions(created="2024-05-01T00:00:00Z"),
        ImageOptions(annotations={"a": "1"}),
        ImageOptions(runtime=RuntimeConfig(entrypoint=("/bin/sh",))),
        ImageOptions(runtime=RuntimeConfig(env={"A": "1", "B": "2"})),
        ImageOptions(runtime=RuntimeConfig(labels={"l": "1"})),
        ImageOptions(architecture="arm64", os="linux"),
        ImageOptions(format="docker"),
        ImageOptions(link_roots=False),
    ],
    ids=["created", "annotations", "entrypoint", "env", "labels", "platform", "format", "layers"],
)
def test_whatever_the_manifest_or_config_says_changes_it(root: str, changed: ImageOptions) -> None:
    assert fingerprint(root, changed) != fingerprint(root, ImageOptions())


def test_layer_digests_change_it(root: str) -> None:
    plan = plan_of(root, ImageOptions())
    assert plan.fingerprint(facts(plan)) != plan.fingerprint(facts(plan, salt="x"))


def test_env_order_changes_it_because_the_config_keeps_that_order(root: str) -> None:
    one = RuntimeConfig(env={"A": "1", "B": "2"})
    other = RuntimeConfig(env={"B": "2", "A": "1"})
    assert fingerprint(root, ImageOptions(runtime=one)) != fingerprint(
        root, ImageOptions(runtime=other)
    )


def test_what_the_json_sorts_away_does_not(root: str) -> None:
    one = RuntimeConfig(labels={"a": "1", "b": "2"}, volumes=("/v", "/w"), exposed_ports=("80",))
    other = RuntimeConfig(
        labels={"b": "2", "a": "1"}, volumes=("/w", "/v"), exposed_ports=("80/tcp",)
    )
    first = ImageOptions(runtime=one, annotations={"x": "1", "y": "2"})
    second = ImageOptions(runtime=other, annotations={"y": "2", "x": "1"})
    assert fingerprint(root, first) == fingerprint(root, second)


def test_a_closure_read_without_its_system_gives_the_same_image(root: str) -> None:
    """``--closure-json`` does not know the system; the host's is the same one."""
    assert fingerprint(root, ImageOptions(), system=None) == fingerprint(root, ImageOptions())


def test_host_paths_of_added_files_do_not_change_it(root: str, tmp_path: Path) -> None:
    def with_added(name: str) -> str:
        src = tmp_path / name / "motd"
        src.parent.mkdir()
        src.write_text("hello\n")
        essentials = EssentialsOptions.only(adds=(f"{src}:/etc/motd",))
        return fingerprint(root, ImageOptions(essentials=essentials))

    assert with_added("one") == with_added("two")


FINGERPRINT = """
import sys
from tests.unit.test_fingerprint import fingerprint
from ociforge.assemble import ImageOptions
from ociforge.image import RuntimeConfig
runtime = RuntimeConfig(labels={"a": "1", "b": "2"}, volumes=("/v", "/w"), env={"E": "1"})
print(fingerprint(sys.argv[1], ImageOptions(runtime=runtime, annotations={"x": "1"})))
"""


def test_the_hash_seed_does_not_change_it(root: str) -> None:
    seen = {
        subprocess.run(
            [sys.executable, "-c", FINGERPRINT, root],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(seen) == 1 and next(iter(seen)).startswith("sha256:")


def test_the_bytes_of_a_fixed_plan_are_pinned() -> None:
    """A tag is taken for up to date when it carries the fingerprint: if this fails, ociforge
    now writes configs or manifests differently, and FINGERPRINT_FORMAT must be bumped with the
    new digests (else tags holding the old bytes would never be re-pushed). The layer keys are
    fixed here: they name zlib's and libzstd's versions, which CI machines do not share."""
    root = "/nix/store/" + "a" * 32 + "-hello-1.0"
    runtime = RuntimeConfig(cmd=("/bin/hello",), env={"A": "1"}, labels={"l": "x"})
    options = ImageOptions(link_roots=False, annotations={"a": "1"}, runtime=runtime)
    plan = plan_image(ImageSource(closure_of(root)), options, host_system="x86_64-linux")
    layers = tuple(
        dataclasses.replace(layer, key=f"sha256:{i:064x}") for i, layer in enumerate(plan.layers)
    )
    built = dataclasses.replace(plan, layers=layers).finish(facts(plan))
    assert (FINGERPRINT_FORMAT, str(Digest.of(built.config)), str(Digest.of(built.manifest))) == (
        2,
        "sha256:da7dcd976175d5d7673a3da9914dfec7937a1e0c473592b06d50d0cc3588d39d",
        "sha256:ff685d345918abd911874036d2911b8b60406ffa643a7e9854ece68deaa0de72",
    ), "bump FINGERPRINT_FORMAT, then pin the new digests"


RUNTIME_VALUES: dict[str, object] = {
    "entrypoint": ("/bin/sh",),
    "cmd": ("-c", "true"),
    "env": {"A": "1"},
    "workdir": "/work",
    "user": "ci",
    "labels": {"l": "1"},
    "exposed_ports": ("80",),
    "volumes": ("/data",),
    "stop_signal": "SIGTERM",
}


def test_every_runtime_field_changes_it(root: str) -> None:
    """``runtime_identity`` lists the fields by hand: a field added to RuntimeConfig must be
    added there (and here), or images differing in it would be taken for one another."""
    assert set(RUNTIME_VALUES) == {f.name for f in dataclasses.fields(RuntimeConfig)}
    plain = fingerprint(root, ImageOptions())
    for name, value in RUNTIME_VALUES.items():
        runtime = RuntimeConfig(**{name: value})  # type: ignore[arg-type]
        assert fingerprint(root, ImageOptions(runtime=runtime)) != plain, name


def test_equal_values_of_other_types_do_not_change_it(root: str) -> None:
    """A list where a tuple is expected, an empty variant: the JSON is the same."""
    as_list = RuntimeConfig(entrypoint=["/bin/sh"], cmd=["x"])  # type: ignore[arg-type]
    as_tuple = RuntimeConfig(entrypoint=("/bin/sh",), cmd=("x",))
    assert fingerprint(root, ImageOptions(runtime=as_list)) == fingerprint(
        root, ImageOptions(runtime=as_tuple)
    )
    platform = {"architecture": "arm64", "os": "linux"}
    assert fingerprint(root, ImageOptions(**platform, variant="")) == fingerprint(  # type: ignore[arg-type]
        root,
        ImageOptions(**platform, variant=None),  # type: ignore[arg-type]
    )


def test_a_plan_recognises_its_own_manifest_and_nothing_else(root: str) -> None:
    plan = plan_of(root, ImageOptions(annotations={"a": "1"}))
    ours = json.loads(plan.finish(facts(plan)).manifest)

    def recognised(doc: dict[str, Any], salt: str = "") -> bool:
        return plan.recognises(summarise_manifest(json.dumps(doc).encode()), facts(plan, salt))

    assert recognised(ours)
    assert not recognised(ours, salt="x")  # other layer digests
    appended = {**ours, "layers": [*ours["layers"], ours["layers"][0]]}  # crane append
    assert not recognised(appended)
    relabelled = {**ours, "annotations": {**ours["annotations"], "b": "2"}}
    assert not recognised(relabelled)
    unkeyed = {**ours, "layers": [{**d, "annotations": {}} for d in ours["layers"]]}
    assert not recognised(unkeyed)
    docker = plan_of(root, ImageOptions(format="docker"))
    assert not docker.recognises(summarise_manifest(json.dumps(ours).encode()), facts(docker))


def test_ociforge_s_own_annotation_keys_are_refused(root: str) -> None:
    with pytest.raises(UsageError, match=r"under dev\.ociforge\. are"):
        parse_annotation_items([f"{FINGERPRINT_ANNOTATION}=sha256:x"])
    with pytest.raises(UsageError, match=r"under dev\.ociforge\. are"):
        plan_of(root, ImageOptions(annotations={"dev.ociforge.layer.key": "x"}))
