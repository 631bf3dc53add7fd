"""`ociforge copy`, `tag` and `inspect` against real distribution 2.8.2 registries on loopback:
within one registry (blobs mounted), across two (blobs streamed and checked), through a proxy
that swaps a blob's bytes (the copy fails and tags nothing), and with GitLab-like token auth.
What the destination holds is checked with skopeo.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import ociforge
from tests.integration.test_push_e2e import (
    APP,
    cli_env,
    copy_to_layout,
    inspect_digest,
    raw_manifest,
)
from tests.integration.test_push_e2e import ociforge as ociforge_cli
from tests.support.faultproxy import Fault, Respond
from tests.support.nixstore import BuiltClosure
from tests.support.registry import RegistryServer
from tests.support.registry_fixtures import MakeFaultProxy, TokenRegistry, skopeo

pytestmark = pytest.mark.integration

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(scope="module")
def second_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry-second")) as server:
        yield server


def push_image(closure: BuiltClosure, ref: str, home: Path) -> str:
    run = ociforge_cli("push", closure[APP], ref, env=cli_env(home))
    assert run.code == 0, run.explain()
    return run.pushed()[ref]


def manifest_of(skopeo_env: dict[str, str], ref: str) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(raw_manifest(skopeo_env, ref))
    return parsed


def layers_for_amd64(skopeo_env: dict[str, str], ref: str) -> list[str]:
    """The layers skopeo resolves for linux/amd64 (through an index, if ``ref`` is one)."""
    args = ("inspect", "--tls-verify=false", "--override-arch", "amd64", f"docker://{ref}")
    result = skopeo(skopeo_env, *args)
    assert result.returncode == 0, result.stderr
    layers: list[str] = json.loads(result.stdout)["Layers"]
    assert layers
    return layers


def put_index(registry: RegistryServer, repo: str, tag: str, child: bytes) -> bytes:
    """An OCI index of one child (labelled linux/amd64) under ``tag``, written by hand."""
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + hashlib.sha256(child).hexdigest(),
                "size": len(child),
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
        "annotations": {"org.example.release": "2026.12"},
    }
    data = json.dumps(index).encode()
    url = f"{registry.url}/v2/{repo}/manifests/{tag}"
    response = httpx.put(url, content=data, headers={"Content-Type": OCI_INDEX})
    assert response.status_code == 201, response.text
    return data


def test_copy_within_a_registry_mounts_every_blob(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    tmp_path: Path,
) -> None:
    src, dest = f"{registry.host}/{repo_name}/rc:v1", f"{registry.host}/{repo_name}/stable:v1"
    digest = push_image(closure, src, home)

    run = ociforge_cli("copy", "--json", src, dest, env=cli_env(home))

    assert run.code == 0, run.explain()
    summary = json.loads(run.out)
    assert summary["manifest_digest"] == digest
    assert {b["outcome"] for b in summary["blobs"]} == {"mounted"}
    assert raw_manifest(skopeo_env, dest) == raw_manifest(skopeo_env, src)
    copy_to_layout(skopeo_env, dest, tmp_path / "copy")  # skopeo checks every blob's digest

    again = ociforge_cli("copy", src, dest, env=cli_env(home))
    assert again.code == 0, again.explain()
    assert again.out.strip() == f"{dest}@{digest}"
    assert "up to date" in again.err


def test_copy_across_registries_streams_an_index_with_its_children(
    closure: BuiltClosure,
    registry: RegistryServer,
    second_registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    tmp_path: Path,
) -> None:
    child_ref = f"{registry.host}/{repo_name}:amd64"
    push_image(closure, child_ref, home)
    put_index(registry, repo_name, "multi", raw_manifest(skopeo_env, child_ref))
    src, dest = f"{registry.host}/{repo_name}:multi", f"{second_registry.host}/{repo_name}:multi"

    run = ociforge_cli("copy", "--json", src, dest, env=cli_env(home))

    assert run.code == 0, run.explain()
    summary = json.loads(run.out)
    assert summary["manifests"] == 2
    assert {b["outcome"] for b in summary["blobs"]} == {"uploaded"}
    assert raw_manifest(skopeo_env, dest) == raw_manifest(skopeo_env, src)
    assert inspect_digest(skopeo_env, dest) == inspect_digest(skopeo_env, src)
    assert layers_for_amd64(skopeo_env, dest) == layers_for_amd64(skopeo_env, child_ref)
    copy_to_layout(skopeo_env, dest, tmp_path / "copy")


def test_a_source_sending_other_bytes_fails_the_copy_and_tags_nothing(
    closure: BuiltClosure,
    registry: RegistryServer,
    second_registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    make_fault_proxy: MakeFaultProxy,
) -> None:
    digest = push_image(closure, f"{registry.host}/{repo_name}:v1", home)
    manifest = manifest_of(skopeo_env, f"{registry.host}/{repo_name}:v1")
    layers = manifest["layers"]
    assert isinstance(layers, list)
    biggest = max(layers, key=lambda layer: layer["size"])
    proxy = make_fault_proxy(registry.url)
    forged = bytes(biggest["size"])  # right length, wrong bytes
    proxy.add_fault(Fault("GET", f"/blobs/{biggest['digest']}", Respond(200, forged), times=10))
    dest = f"{second_registry.host}/{repo_name}:v1"

    run = ociforge_cli("copy", f"{proxy.host}/{repo_name}:v1", dest, env=cli_env(home))

    assert run.code == 5, run.explain()
    line = run.one_line_error()
    assert biggest["digest"] in line and "sha256:" + hashlib.sha256(forged).hexdigest() in line
    absent = skopeo(skopeo_env, "inspect", "--tls-verify=false", f"docker://{dest}")
    assert absent.returncode != 0 and "manifest unknown" in absent.stderr
    assert digest not in run.out


def test_tag_writes_the_same_manifest_without_blob_traffic(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    make_fault_proxy: MakeFaultProxy,
) -> None:
    digest = push_image(closure, f"{registry.host}/{repo_name}:rc", home)
    proxy = make_fault_proxy(registry.url)

    rc = f"{proxy.host}/{repo_name}:rc"
    run = ociforge_cli("tag", rc, "stable", "2026.12", env=cli_env(home))

    assert run.code == 0, run.explain()
    tagged = [f"{proxy.host}/{repo_name}:{t}" for t in ("stable", "2026.12")]
    assert run.out.splitlines() == [f"{ref}@{digest}" for ref in tagged]
    assert proxy.count("*", "/blobs/") == 0
    for tag in ("stable", "2026.12"):
        assert inspect_digest(skopeo_env, f"{registry.host}/{repo_name}:{tag}") == digest


def test_tag_of_a_missing_reference_is_one_line_exit_2(
    registry: RegistryServer, repo_name: str, home: Path
) -> None:
    run = ociforge_cli("tag", f"{registry.host}/{repo_name}:nope", "stable", env=cli_env(home))
    assert run.code == 2, run.explain()
    assert "has no manifest nope" in run.one_line_error()


def test_inspect_shows_store_paths_sizes_and_platforms(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
) -> None:
    ref = f"{registry.host}/{repo_name}:v1"
    digest = push_image(closure, ref, home)
    manifest = manifest_of(skopeo_env, ref)
    layers = manifest["layers"]
    assert isinstance(layers, list)

    as_json = ociforge_cli("inspect", "--json", ref, env=cli_env(home))

    assert as_json.code == 0, as_json.explain()
    doc = json.loads(as_json.out)
    assert doc["digest"] == digest
    (image,) = doc["images"]
    assert image["platform"] == "linux/amd64"
    assert [(x["digest"], x["size"]) for x in image["layers"]] == [
        (x["digest"], x["size"]) for x in layers
    ]
    comments = " ".join(x["comment"] for x in image["layers"])
    assert Path(closure[APP]).name in comments and "busybox" in comments

    text = ociforge_cli("inspect", ref, env=cli_env(home))
    assert text.code == 0, text.explain()
    assert text.out.splitlines()[0].startswith(f"{ref}@{digest}  image")
    assert Path(closure[APP]).name in text.out
    assert f"linux/amd64  {digest}" in text.out

    put_index(registry, repo_name, "multi", raw_manifest(skopeo_env, ref))
    multi = f"{registry.host}/{repo_name}:multi"
    index = json.loads(ociforge_cli("inspect", "--json", multi, env=cli_env(home)).out)
    assert index["mediaType"] == OCI_INDEX
    assert index["annotations"] == {"org.example.release": "2026.12"}
    assert [(i["platform"], i["digest"]) for i in index["images"]] == [("linux/amd64", digest)]


def test_copy_with_gitlab_token_auth_mounts_within_the_project(
    closure: BuiltClosure,
    token_registry: TokenRegistry,
    home: Path,
    skopeo_env: dict[str, str],
) -> None:
    env = cli_env(home, token_registry.ci_env)
    src, dest = f"{token_registry.image}/rc:v1", f"{token_registry.image}/stable:v1"
    pushed = ociforge_cli("push", closure[APP], src, env=env)
    assert pushed.code == 0, pushed.explain()

    run = ociforge_cli("copy", "--json", src, dest, env=env)

    assert run.code == 0, run.explain()
    summary = json.loads(run.out)
    # The job token holds pull on the source repository: the registry mounts every blob.
    assert {b["outcome"] for b in summary["blobs"]} == {"mounted"}
    inspected = ociforge_cli("inspect", dest, env=env)
    assert inspected.code == 0 and summary["manifest_digest"] in inspected.out


def test_the_api_gives_what_the_commands_give(
    closure: BuiltClosure, registry: RegistryServer, repo_name: str, home: Path
) -> None:
    src = f"{registry.host}/{repo_name}:rc"
    digest = push_image(closure, src, home)

    copied = ociforge.copy_image(src, [f"{registry.host}/{repo_name}/api:v1"])
    tagged = ociforge.tag_image(src, ["api"])
    inspected = ociforge.inspect_image(src)

    assert copied.manifest_digest == tagged.manifest_digest == inspected.digest == digest
    cli = json.loads(ociforge_cli("inspect", "--json", src, env=cli_env(home)).out)
    (image,) = inspected.images
    assert [(str(x.descriptor.digest), x.comment) for x in image.layers] == [
        (x["digest"], x["comment"]) for x in cli["images"][0]["layers"]
    ]
