"""`ociforge push-all images.toml` end to end: five images sharing store paths (two of them
multi-platform) pushed to a GitLab-like token registry, checked with skopeo and podman."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.integration.test_push_e2e import cli_env, ociforge
from tests.support.nixstore import BuiltClosure, Entry, File, Package, Symlink, busybox_package
from tests.support.nixstore import make_closure as build_closure
from tests.support.podman import Podman
from tests.support.registry_fixtures import TokenRegistry, skopeo

pytestmark = pytest.mark.integration

SHARED = "shared-data-1.0"
APPS = [f"tool{i}-1.0" for i in range(5)]


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> BuiltClosure:
    """Five apps on busybox and one 2 MiB incompressible package they all use."""
    noise = random.Random(20261203).randbytes(2 * 1024 * 1024)
    packages = [busybox_package(), Package(SHARED, {"share/data.bin": noise})]
    for i, name in enumerate(APPS):
        script = f"#!@busybox@/bin/sh\necho tool {i} uses @{SHARED}@\n"
        entries: dict[str, Entry] = {
            "bin/tool": File(script, executable=True),
            "bin/sh": Symlink("@busybox@/bin/sh"),
        }
        packages.append(Package(name, entries, deps=("busybox", SHARED)))
    return build_closure(tmp_path_factory.mktemp("apps"), packages)


def write_repo(path: Path, registry: str, apps: BuiltClosure, broken: bool = False) -> Path:
    lines = [
        "[defaults]",
        f'registry = "{registry}"',
        'tags = ["latest", "nightly-{date}", "p$CI_PIPELINE_IID"]',
    ]
    for i, name in enumerate(APPS[:3]):
        source = "/nix/store/" + "0" * 32 + "-missing" if broken and i == 1 else apps[name]
        lines += [f"[images.tool{i}]", f'source = "{source}"']
    # Architecture-independent closures labelled for two platforms (no aarch64 builder here).
    lines += ["[images.tool3.platforms]", f'x86_64-linux = "{apps[APPS[3]]}"']
    lines += [f'aarch64-linux = "{apps[APPS[3]]}"']
    lines += ["[images.tool4.platforms]", f'"linux/amd64" = "{apps[APPS[4]]}"']
    lines += [f'"linux/arm64/v8" = "{apps[APPS[4]]}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def inspect(env: dict[str, str], ref: str, *extra: str) -> dict[str, object]:
    done = skopeo(env, "inspect", "--tls-verify=false", *extra, f"docker://{ref}")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_push_all_shares_layers_writes_indexes_and_reruns_as_a_no_op(
    apps: BuiltClosure,
    token_registry: TokenRegistry,
    skopeo_env: dict[str, str],
    podman: Podman,
    tmp_path: Path,
) -> None:
    repo_file = write_repo(tmp_path / "images.toml", token_registry.image, apps)
    env = cli_env(tmp_path / "home", {**token_registry.ci_env, "CI_PIPELINE_IID": "42"})
    run = ociforge("push-all", str(repo_file), "--json", env=env)
    assert run.code == 0, run.explain()
    summary = json.loads(run.out)
    assert [i["status"] for i in summary["images"]] == ["pushed"] * 5, run.explain()
    # The 2 MiB shared package went up once, not once per image (or per platform).
    assert summary["uploaded_bytes"] <= 1.1 * summary["layer_bytes"]
    assert summary["uploaded_bytes"] < 2 * 2 * 1024 * 1024
    # One login for the whole run: one token covering every repository.
    assert len(token_registry.tokens.requests) == 1

    user = ["--creds", f"{token_registry.reader[0]}:{token_registry.reader[1]}"]
    for image in summary["images"]:
        assert len(image["references"]) == 3 and "nightly-" in image["references"][1]
        assert image["references"][2].endswith(":p42")
        for ref in image["references"]:
            assert inspect(skopeo_env, ref, *user)["Digest"] == image["digest"]
    for name in ("tool3", "tool4"):
        ref = f"{token_registry.image}/{name}:latest"
        index = _raw_as(skopeo_env, ref, user)
        assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
        arches = {m["platform"]["architecture"] for m in index["manifests"]}  # type: ignore[attr-defined]
        assert arches == {"amd64", "arm64"}
        for arch in ("amd64", "arm64"):
            got = inspect(skopeo_env, ref, *user, "--override-arch", arch, "--override-os", "linux")
            assert got["Architecture"] == arch
            assert inspect(skopeo_env, f"{ref}-{arch}", *user)["Architecture"] == arch

    # podman resolves the host's child of the index and runs it; and the arm64 one on request.
    ref = f"{token_registry.image}/tool3:latest"
    podman.pull(ref, creds=token_registry.reader)
    done = podman.run(ref, ["/bin/sh", "-c", "tool"])
    assert done.returncode == 0 and "tool 3 uses" in done.stdout, done.stderr
    login = f"{token_registry.reader[0]}:{token_registry.reader[1]}"
    podman("pull", "--tls-verify=false", "--creds", login, "--arch", "arm64", f"docker://{ref}")
    arch = podman("image", "inspect", "--format", "{{.Architecture}}", ref).stdout.strip()
    assert arch == "arm64"

    again = ociforge("push-all", str(repo_file), "--json", env=env)
    assert again.code == 0, again.explain()
    rerun = json.loads(again.out)
    assert [i["status"] for i in rerun["images"]] == ["up to date"] * 5
    assert rerun["uploaded_bytes"] == 0
    assert [i["digest"] for i in rerun["images"]] == [i["digest"] for i in summary["images"]]


def _raw_as(env: dict[str, str], ref: str, creds: list[str]) -> dict[str, object]:
    done = skopeo(env, "inspect", "--raw", "--tls-verify=false", *creds, f"docker://{ref}")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_failed_image_does_not_stop_the_others(
    apps: BuiltClosure, token_registry: TokenRegistry, tmp_path: Path
) -> None:
    repo_file = write_repo(tmp_path / "images.toml", token_registry.image, apps, broken=True)
    env = cli_env(tmp_path / "home", {**token_registry.ci_env, "CI_PIPELINE_IID": "7"})
    run = ociforge("push-all", str(repo_file), env=env)
    assert run.code == 1, run.explain()
    assert "1 of 5 images failed: tool1" in run.one_line_error()
    assert "ociforge: tool1: failed: " in run.err
    pushed = {line.split("@")[0].rsplit("/", 1)[1] for line in run.out.splitlines()}
    assert "tool0:latest" in pushed and "tool4:latest" in pushed and "tool1:latest" not in pushed

    fast = ociforge("push-all", str(repo_file), "--fail-fast", "--json", env=env)
    assert fast.code == 1
    statuses = [i["status"] for i in json.loads(fast.out)["images"]]
    assert statuses == ["up to date", "failed", "not run", "not run", "not run"]


def test_a_mistake_in_the_file_names_file_entry_and_field(tmp_path: Path) -> None:
    repo_file = tmp_path / "images.toml"
    repo_file.write_text('[defaults]\nregistry = "localhost:1/x"\n[images.web]\nsourc = "a"\n')
    run = ociforge("push-all", str(repo_file), env=cli_env(tmp_path / "home"))
    assert run.code == 2
    assert f"{repo_file}: images.web.sourc: Extra inputs are not permitted" in run.one_line_error()


def test_index_joins_images_that_separate_jobs_pushed(
    apps: BuiltClosure, token_registry: TokenRegistry, skopeo_env: dict[str, str], tmp_path: Path
) -> None:
    """The GitLab pattern: one job per runner pushes TAG-ARCH, a last job joins them as TAG."""
    env = cli_env(tmp_path / "home", token_registry.ci_env)
    repo = f"{token_registry.image}/joined"
    for arch in ("amd64", "arm64"):
        done = ociforge("push", apps[APPS[0]], f"{repo}:v1-{arch}", "--arch", arch, env=env)
        assert done.code == 0, done.explain()
    run = ociforge("index", f"{repo}:v1", f"{repo}:v1-amd64", f"{repo}:v1-arm64", env=env)
    assert run.code == 0, run.explain()
    user = ["--creds", f"{token_registry.reader[0]}:{token_registry.reader[1]}"]
    for arch in ("amd64", "arm64"):
        got = inspect(skopeo_env, f"{repo}:v1", *user, "--override-arch", arch)
        assert got["Architecture"] == arch
    again = ociforge("index", f"{repo}:v1", f"{repo}:v1-amd64", f"{repo}:v1-arm64", env=env)
    assert again.out == run.out  # the same index, byte for byte: nothing moved
