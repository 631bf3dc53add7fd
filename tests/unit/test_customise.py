"""What an image gets besides store paths: root links, essentials, a dev shell's Env and hook,
manifest annotations; and who wins when two of them set the same thing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ociforge.assemble import ImageOptions, plan_image
from ociforge.assemble.annotations import ci_annotations, merge_annotations, parse_annotation_items
from ociforge.assemble.customise import customise
from ociforge.assemble.devshell import ENTRYPOINT
from ociforge.assemble.essentials import EssentialsOptions
from ociforge.assemble.layer import LayerDigests
from ociforge.digest import Digest
from ociforge.errors import UsageError
from ociforge.image.config import RuntimeConfig
from ociforge.nix.closure import Closure, StorePathInfo, merge_closures
from ociforge.nix.devenv import DevEnv
from ociforge.source import ImageSource
from tests.unit.test_essentials import busybox, package

NAR_HASH = "sha256-" + "A" * 43 + "="


def closure_of(*paths: str, roots: tuple[str, ...] | None = None) -> Closure:
    infos = {p: StorePathInfo(p, NAR_HASH, 1) for p in paths}
    return Closure(roots=roots or paths[:1], paths=infos, system="x86_64-linux")


def shell_env(*path: str, **variables: str) -> DevEnv:
    exported = {"PATH": ":".join(path), "NIX_BUILD_TOP": "/build", **variables}
    return DevEnv(installable=".#devShells.x86_64-linux.default", variables=exported)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def test_a_plain_closure_gets_its_root_links_and_nothing_else(store: Path) -> None:
    bb = busybox(store)
    custom = customise(ImageSource(closure_of(bb)), essentials_options=None)
    assert [e.name for e in custom.entries] == [
        "/bin",
        "/bin/busybox",
        "/bin/env",
        "/bin/ls",
        "/bin/sh",
    ]
    assert {e.kind for e in custom.entries[1:]} == {"symlink"}
    assert custom.env == {} and custom.warnings == () and custom.entrypoint is None


def test_a_dev_shell_gets_every_essential_and_its_environment(store: Path) -> None:
    bb = busybox(store)
    shell = package(store, "s", "devshell", {"out": "inputs\n"})
    source = ImageSource(
        closure_of(shell, bb), linked_roots=(), devenv=shell_env(f"{bb}/bin", GREETING="hi")
    )
    custom = customise(source, essentials_options=None)
    entries = {e.name: e for e in custom.entries}
    assert entries["/bin/sh"].target == f"{bb}/bin/sh"
    assert entries["/tmp"].mode == 0o1777
    assert "/etc/passwd" in entries and "/root" in entries
    assert not any(n.startswith("/out") for n in entries)  # the shell's output is not linked
    assert custom.env["GREETING"] == "hi"
    assert custom.env["HOME"] == "/root" and custom.env["NIX_BUILD_TOP"] == "/tmp"
    assert custom.env["PATH"] == f"{bb}/bin:/bin:/usr/bin"
    assert list(custom.env) == sorted(custom.env)
    assert custom.warnings == (
        "no CA bundle in the closure (etc/ssl/certs/ca-bundle.crt): HTTPS clients cannot verify "
        "servers; add cacert to the image or pass --ca-bundle FILE",
    )


def test_no_essentials_keeps_the_shell_environment_only(store: Path) -> None:
    bb = busybox(store)
    source = ImageSource(closure_of(bb), linked_roots=(), devenv=shell_env(f"{bb}/bin"))
    custom = customise(source, essentials_options=EssentialsOptions.only(user="ci"))
    assert custom.entries == ()
    assert custom.env["HOME"] == "/home/ci" and custom.env["USER"] == "ci"
    assert custom.user == "ci"
    assert custom.warnings == (
        "--user ci: without essentials the image has no /etc/passwd entry for it and containers "
        "will not start; add --essentials or give a numeric UID[:GID]",
    )
    numeric = customise(source, essentials_options=EssentialsOptions.only(user="1000:1000"))
    assert numeric.warnings == ()
    fake_nss = package(store, "f", "fake-nss", {"etc/passwd": "ci:x:1000:1000::/:/bin/sh\n"})
    own = ImageSource(closure_of(fake_nss, bb), devenv=shell_env(f"{bb}/bin"))
    assert customise(own, essentials_options=EssentialsOptions.only(user="ci")).warnings == ()


def test_only_what_is_asked_for_without_essentials(store: Path, tmp_path: Path) -> None:
    bb = busybox(store)
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    opts = EssentialsOptions.only(ca_bundle=str(bundle), adds=(f"{bundle}:/opt/ca.pem",))
    custom = customise(ImageSource(closure_of(bb), linked_roots=()), essentials_options=opts)
    assert [e.name for e in custom.entries] == [
        "/etc",
        "/etc/ssl",
        "/etc/ssl/certs",
        "/etc/ssl/certs/ca-bundle.crt",
        "/etc/ssl/certs/ca-certificates.crt",
        "/opt",
        "/opt/ca.pem",
    ]
    assert custom.env["SSL_CERT_FILE"] == "/etc/ssl/certs/ca-bundle.crt"
    assert "HOME" not in custom.env


def test_the_entrypoint_hook_needs_a_dev_shell(store: Path) -> None:
    source = ImageSource(closure_of(busybox(store)))
    with pytest.raises(UsageError, match="--devshell"):
        customise(source, essentials_options=None, entrypoint_hook=True)


def test_the_entrypoint_hook_runs_the_shell_hook_with_the_closure_bash(store: Path) -> None:
    bash = package(store, "h", "bash", {"bin/bash": None})
    env = DevEnv(installable="x", variables={"PATH": f"{bash}/bin"}, shell_hook="export A=1")
    source = ImageSource(closure_of(bash), linked_roots=(), devenv=env)
    custom = customise(source, essentials_options=None, entrypoint_hook=True)
    [script] = [e for e in custom.entries if e.name == ENTRYPOINT]
    assert script.data.startswith(f"#!{bash}/bin/bash\n".encode())
    assert b"export A=1" in script.data
    assert custom.entrypoint == (ENTRYPOINT,)


def test_the_users_settings_win_over_the_sources(store: Path) -> None:
    bb = busybox(store)
    source = ImageSource(closure_of(bb), linked_roots=(), devenv=shell_env(f"{bb}/bin", A="1"))
    runtime = RuntimeConfig(env={"A": "mine", "PATH": "/custom"}, user="1000")
    plan = plan_image(source, ImageOptions(runtime=runtime), host_system="x86_64-linux")
    assert plan.runtime.env["A"] == "mine" and plan.runtime.env["PATH"] == "/custom"
    assert plan.runtime.env["HOME"] == "/root"  # essentials' HOME: the user did not set one
    assert plan.runtime.user == "1000"
    # The history names what the last layer holds, not just "customisation".
    assert plan.layers[-1].comment == "customisation: /bin, /etc, /root, /tmp, /usr, /var"


def test_an_explicit_entrypoint_conflicts_with_the_hook() -> None:
    """Refused when the options are made: before nix builds the shell."""
    with pytest.raises(UsageError, match="drop --entrypoint"):
        ImageOptions(entrypoint_hook=True, runtime=RuntimeConfig(entrypoint=("/x",)))


def finished_manifest(source: ImageSource, options: ImageOptions) -> dict[str, Any]:
    plan = plan_image(source, options, host_system="x86_64-linux")
    facts = [_FACTS for _ in plan.layers]
    manifest: dict[str, Any] = json.loads(plan.finish(facts).manifest)
    return manifest


_FACTS = LayerDigests(Digest.of(b"layer"), Digest.of(b"layer"), 5)


def test_annotations_go_in_the_manifest_only(store: Path) -> None:
    source = ImageSource(closure_of(busybox(store)))
    plain = finished_manifest(source, ImageOptions())
    annotated = finished_manifest(source, ImageOptions(annotations={"a": "1"}))
    assert "annotations" not in plain
    assert annotated["annotations"] == {"a": "1"}
    assert annotated["config"] == plain["config"] and annotated["layers"] == plain["layers"]


def test_docker_manifests_refuse_annotations() -> None:
    with pytest.raises(UsageError, match="--format oci"):
        ImageOptions(format="docker", annotations={"a": "1"})


def test_gitlab_ci_variables_become_annotations() -> None:
    environ = {"CI_PROJECT_URL": "https://gl/p", "CI_COMMIT_SHA": "abc", "CI_JOB_ID": "7"}
    assert ci_annotations(environ) == {
        "org.opencontainers.image.source": "https://gl/p",
        "org.opencontainers.image.revision": "abc",
    }
    assert ci_annotations({}) == {}


def test_explicit_annotations_win_and_an_empty_value_drops_one() -> None:
    explicit = parse_annotation_items(["x=1", "org.opencontainers.image.source="])
    merged = merge_annotations({"org.opencontainers.image.source": "s", "y": "2"}, explicit)
    assert merged == {"x": "1", "y": "2"}


@pytest.mark.parametrize("item", ["novalue", "=v", "a b=c"])
def test_bad_annotations_are_usage_errors(item: str) -> None:
    with pytest.raises(UsageError, match="--annotation"):
        parse_annotation_items([item])


def test_merged_closures_keep_root_order_and_every_path() -> None:
    a = closure_of("/nix/store/a", "/nix/store/shared")
    b = Closure(
        roots=("/nix/store/b",),
        paths={p: StorePathInfo(p, NAR_HASH, 1) for p in ("/nix/store/b", "/nix/store/shared")},
    )
    merged = merge_closures([a, b])
    assert merged.roots == ("/nix/store/a", "/nix/store/b")
    assert sorted(merged.paths) == ["/nix/store/a", "/nix/store/b", "/nix/store/shared"]
    assert merged.system == "x86_64-linux"
    other = Closure(roots=("/o/x",), paths={}, store_dir="/o")
    with pytest.raises(UsageError, match="store directories"):
        merge_closures([a, other])
