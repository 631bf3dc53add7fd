"""Warm pushes: unchanged layers are never re-read, re-compressed or re-uploaded (issue 4)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

import ociforge
import ociforge.assemble.layer
import ociforge.tarstream
from ociforge import ImageOptions, RegistryOptions
from tests.support.faultproxy import FaultProxy
from tests.support.nixstore import BuiltClosure, File, Package, busybox_package, make_closure
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration
SIGNING_KEY, PUBLIC_KEY = ociforge.generate_key()


@pytest.fixture(autouse=True)
def signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """These pushes sign their layer-key tables, as a protected CI/CD variable makes them:
    only a signed table lets a fresh runner reuse layers without reading them."""
    monkeypatch.setenv("OCIFORGE_SIGNING_KEY", SIGNING_KEY)


def spec(version: str) -> list[Package]:
    return [
        busybox_package(),
        Package(f"libgreet-{version}", {"lib/greeting": f"hello {version}\n"}),
        Package(
            "app-1.0",
            {
                "bin/app": File(
                    f"#!@busybox@/bin/sh\ncat @libgreet-{version}@/lib/greeting\n", executable=True
                )
            },
            deps=("busybox", f"libgreet-{version}"),
        ),
    ]


@pytest.fixture(scope="module")
def closures(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltClosure, BuiltClosure]:
    return (
        make_closure(tmp_path_factory.mktemp("v1"), spec("1")),
        make_closure(tmp_path_factory.mktemp("v2"), spec("2")),
    )


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Store paths whose files a layer stream started to read, in order."""
    seen: list[str] = []
    real = ociforge.tarstream.store_tar_chunks

    def recording(paths: Sequence[str], **kw: object) -> Iterator[bytes]:
        seen.extend(paths)
        return real(paths, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ociforge.assemble.layer, "store_tar_chunks", recording)
    return seen


def push(
    root: str, refs: list[str], cache: Path | None, *, commit: str = "", **kw: object
) -> ociforge.PushResult:
    """``commit``: an annotation that changes the manifest only, as a new commit does in CI."""
    return ociforge.push(
        root,
        refs,
        # popularity: the tests below reason about its layers (which ones v2 shares with v1).
        options=ImageOptions(
            strategy="popularity",
            max_layers=10,
            annotations={"rev": commit} if commit else {},
        ),
        registry=RegistryOptions(cache_dir=str(cache) if cache else None, **kw),  # type: ignore[arg-type]
    )


def outcomes(result: ociforge.PushResult) -> list[str]:
    return [b.outcome for b in result.blobs]


def test_second_push_reads_no_file_and_sends_a_handful_of_requests(
    closures: tuple[BuiltClosure, BuiltClosure],
    fault_proxy: FaultProxy,
    repo_name: str,
    tmp_path: Path,
    opened: list[str],
) -> None:
    app = closures[0]["app-1.0"]
    ref = f"{fault_proxy.host}/{repo_name}:latest"
    first = push(app, [ref], tmp_path / "cache")
    assert outcomes(first) == ["uploaded"] * 4 and not first.up_to_date
    opened.clear()
    before = len(fault_proxy.requests)
    second = push(app, [ref], tmp_path / "cache")
    sent = fault_proxy.requests[before:]
    assert opened == []
    assert second.up_to_date and second.manifest_digest == first.manifest_digest
    assert [(r.method, r.path.split("/")[-2]) for r in sent] == [
        ("GET", "v2"),
        ("GET", "manifests"),
    ]  # ping + what the tag points to: nothing else


def test_fresh_runner_learns_layers_from_the_registry(
    closures: tuple[BuiltClosure, BuiltClosure],
    fault_proxy: FaultProxy,
    repo_name: str,
    tmp_path: Path,
    opened: list[str],
) -> None:
    app = closures[0]["app-1.0"]
    ref = f"{fault_proxy.host}/{repo_name}:latest"
    first = push(app, [ref], tmp_path / "runner-1")
    opened.clear()
    before = len(fault_proxy.requests)
    again = push(app, [ref], tmp_path / "runner-2")  # empty cache: a new CI runner
    sent = [(r.method, r.path.split("/")[-2]) for r in fault_proxy.requests[before:]]
    assert opened == []
    assert again.up_to_date and again.manifest_digest == first.manifest_digest
    assert sent == [("GET", "v2"), ("GET", "manifests"), ("GET", "blobs")]  # + the config
    assert list((tmp_path / "runner-2").rglob("*.json")), "what it learned is cached"


def test_without_a_key_a_fresh_runner_hashes_but_uploads_nothing(
    closures: tuple[BuiltClosure, BuiltClosure],
    registry: RegistryServer,
    repo_name: str,
    tmp_path: Path,
    opened: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unsigned table is a hint: the layers it names are hashed from the store, and only
    a digest computed here decides that the registry's blob is the layer."""
    monkeypatch.delenv("OCIFORGE_SIGNING_KEY")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no machine secret: no usable cache
    app = closures[0]["app-1.0"]
    ref = f"{registry.host}/{repo_name}:latest"
    first = push(app, [ref], tmp_path / "runner-1")
    opened.clear()
    again = push(app, [ref], tmp_path / "runner-2")
    assert sorted(opened) == sorted(closures[0].paths.values())  # every store path was read
    assert again.up_to_date and again.manifest_digest == first.manifest_digest


def test_changing_a_leaf_uploads_only_the_layers_that_hold_changed_paths(
    closures: tuple[BuiltClosure, BuiltClosure],
    registry: RegistryServer,
    repo_name: str,
    tmp_path: Path,
    opened: list[str],
) -> None:
    v1, v2 = closures
    ref = f"{registry.host}/{repo_name}:latest"
    push(v1["app-1.0"], [ref], None)
    opened.clear()
    result = push(v2["app-1.0"], [ref], None)  # fresh runner: knowledge from the registry
    assert sorted(opened) == sorted([v2["app-1.0"], v2["libgreet-2"]])
    assert outcomes(result).count("skipped") == 1  # busybox; libgreet, app, links changed
    check_with_skopeo(ref, tmp_path)


def test_a_blob_deleted_from_the_registry_is_uploaded_again(
    closures: tuple[BuiltClosure, BuiltClosure],
    registry: RegistryServer,
    repo_name: str,
    tmp_path: Path,
) -> None:
    app = closures[0]["app-1.0"]
    first = push(app, [f"{registry.host}/{repo_name}:one"], tmp_path / "cache")
    gone = first.blobs[0].descriptor.digest
    httpx.delete(f"{registry.url}/v2/{repo_name}/blobs/{gone}").raise_for_status()
    second = push(app, [f"{registry.host}/{repo_name}:two"], tmp_path / "cache")
    assert outcomes(second)[0] == "uploaded" and set(outcomes(second)[1:]) == {"skipped"}
    assert second.manifest_digest == first.manifest_digest
    check_with_skopeo(f"{registry.host}/{repo_name}:two", tmp_path)


def test_a_new_commit_of_the_same_closure_checks_no_layer_the_tag_already_has(
    closures: tuple[BuiltClosure, BuiltClosure],
    fault_proxy: FaultProxy,
    repo_name: str,
    tmp_path: Path,
    opened: list[str],
) -> None:
    """The registry keeps every blob a manifest references: no HEAD per layer, on a fresh
    runner either. What is sent is the config and the manifest."""
    app = closures[0]["app-1.0"]
    ref = f"{fault_proxy.host}/{repo_name}:latest"
    first = push(app, [ref], tmp_path / "runner-1", commit="1")
    opened.clear()
    before = len(fault_proxy.requests)
    second = push(app, [ref], tmp_path / "runner-2", commit="2")
    sent = [(r.method, r.path.split("/")[-2]) for r in fault_proxy.requests[before:]]
    assert opened == [] and outcomes(second) == ["skipped"] * 4
    assert second.manifest_digest != first.manifest_digest
    layers = {str(b.descriptor.digest) for b in second.blobs}
    assert not [r for r in fault_proxy.requests[before:] if r.path.rsplit("/", 1)[-1] in layers]
    assert sent[:3] == [("GET", "v2"), ("GET", "manifests"), ("GET", "blobs")]  # + old config
    assert sent[-1] == ("PUT", "manifests") and len(sent) <= 7, sent  # config upload, manifest


def test_a_layer_deleted_under_the_tags_manifest_is_uploaded_again(
    closures: tuple[BuiltClosure, BuiltClosure],
    registry: RegistryServer,
    repo_name: str,
    tmp_path: Path,
    opened: list[str],
) -> None:
    """Its API lets a blob go while a manifest still names it: the manifest PUT says so
    (MANIFEST_BLOB_UNKNOWN), and the push checks every layer and tags again, without
    streaming a second time what its first pass uploaded."""
    v1, v2 = closures
    ref = f"{registry.host}/{repo_name}:latest"
    first = push(v1["app-1.0"], [ref], tmp_path / "cache", commit="1")
    gone = first.blobs[0].descriptor.digest  # busybox's layer: v2 has it too
    httpx.delete(f"{registry.url}/v2/{repo_name}/blobs/{gone}").raise_for_status()
    opened.clear()
    second = push(v2["app-1.0"], [ref], tmp_path / "cache", commit="2")
    assert outcomes(second) == ["uploaded"] * 4  # busybox again, and v2's three new layers
    assert sorted(opened) == sorted(set(opened)), "a layer was streamed twice"
    check_with_skopeo(ref, tmp_path)


def test_a_layer_deleted_from_one_of_two_destinations_is_found_before_mounting(
    closures: tuple[BuiltClosure, BuiltClosure],
    registry: RegistryServer,
    repo_name: str,
    tmp_path: Path,
) -> None:
    """With a second repository, every layer is checked in the first one: a blob to mount
    from it must really be there."""
    app = closures[0]["app-1.0"]
    ref = f"{registry.host}/{repo_name}:latest"
    first = push(app, [ref], None, commit="1")
    httpx.delete(
        f"{registry.url}/v2/{repo_name}/blobs/{first.blobs[0].descriptor.digest}"
    ).raise_for_status()
    other = f"{registry.host}/{repo_name}-copy:latest"
    second = push(app, [ref, other], None, commit="2")
    assert outcomes(second)[:4] == ["uploaded", "skipped", "skipped", "skipped"]
    check_with_skopeo(other, tmp_path)


def test_corrupt_cache_entries_are_ignored(
    closures: tuple[BuiltClosure, BuiltClosure],
    registry: RegistryServer,
    repo_name: str,
    tmp_path: Path,
) -> None:
    app = closures[0]["app-1.0"]
    ref = f"{registry.host}/{repo_name}:latest"
    first = push(app, [ref], tmp_path / "cache")
    entries = sorted((tmp_path / "cache" / "layers-v2").glob("*.json"))
    assert len(entries) == 4
    entries[0].write_text("{not json")
    data = json.loads(entries[1].read_text())
    entries[1].write_text(json.dumps({**data, "digest": "sha256:" + "0" * 64, "key": "x"}))
    # Well-formed, its own key, and a blob the registry has: another layer's. Whoever wrote it
    # (a merge request's pipeline sharing the CI cache) has no key to MAC it with.
    poisoned, donor = json.loads(entries[2].read_text()), json.loads(entries[3].read_text())
    swapped = {k: donor[k] for k in ("digest", "diff_id", "size")}
    entries[2].write_text(json.dumps({**poisoned, **swapped}))
    again = push(app, [f"{registry.host}/{repo_name}:other"], tmp_path / "cache")
    assert again.manifest_digest == first.manifest_digest
    check_with_skopeo(f"{registry.host}/{repo_name}:other", tmp_path)


def test_dry_run_reports_and_uploads_nothing(
    closures: tuple[BuiltClosure, BuiltClosure],
    fault_proxy: FaultProxy,
    repo_name: str,
    opened: list[str],
) -> None:
    v1, v2 = closures
    ref = f"{fault_proxy.host}/{repo_name}:latest"
    push(v1["app-1.0"], [ref], None)
    opened.clear()
    writes = sum(fault_proxy.count(m) for m in ("POST", "PATCH", "PUT"))
    preview = ociforge.preview(
        v2["app-1.0"],
        [ref],
        options=ImageOptions(strategy="popularity", max_layers=10),  # as push() above
        registry=RegistryOptions(cache_dir=None),
    )
    assert [row.action for row in preview.layers] == ["reused", "upload", "upload", "upload"]
    assert not preview.up_to_date and opened == []
    assert (
        fault_proxy.count("PATCH") + fault_proxy.count("PUT") + fault_proxy.count("POST") == writes
    )


def check_with_skopeo(ref: str, tmp_path: Path) -> None:
    dest = tmp_path / "copied"
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:t"],
        check=True,
        capture_output=True,
    )


WARM_PUSH = """
import sys
sys.argv = ["ociforge", *sys.argv[1:]]
from ociforge.__main__ import run
try:
    run()
except SystemExit as exit:
    print("exit", exit.code, file=sys.stderr)
"""


def warm_push(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WARM_PUSH, *args], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("runner", ["same runner", "fresh runner", "new commit"])
def test_a_warm_push_through_the_command(
    closures: tuple[BuiltClosure, BuiltClosure], registry: RegistryServer, repo_name: str,
    tmp_path: Path, runner: str,
) -> None:  # fmt: skip
    """The manifest that would be pushed is compared with the tag's byte for byte, on a fresh
    runner too; a new commit (another annotation) pushes a new manifest and nothing else."""
    app = closures[0]["app-1.0"]
    ref = f"{registry.host}/{repo_name}:latest"
    args = ["push", app, ref, "--max-layers", "10", "--cache-dir"]
    first = warm_push(*args, str(tmp_path / "cache"), "--annotation", "rev=1")
    cache = tmp_path / ("fresh" if runner == "fresh runner" else "cache")
    rev = "rev=2" if runner == "new commit" else "rev=1"
    again = warm_push(*args, str(cache), "--annotation", rev)
    assert first.stderr.splitlines()[-1] == "exit 0", first.stderr
    assert again.stderr.splitlines()[-1] == "exit 0", again.stderr
    if runner == "new commit":
        assert "up to date" not in again.stderr and again.stdout != first.stdout
        check_with_skopeo(ref, tmp_path)
    else:
        assert "up to date" in again.stderr
        assert again.stdout == first.stdout  # the same DEST@digest line


def test_docker_format_tags_are_up_to_date_too(
    closures: tuple[BuiltClosure, BuiltClosure], registry: RegistryServer, repo_name: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Docker manifests carry no layer keys: on the same runner the local cache knows the
    layers, and the manifest is compared byte for byte as for OCI."""
    app = closures[0]["app-1.0"]
    ref = f"{registry.host}/{repo_name}:latest"
    args = ["push", app, ref, "--format", "docker", "--cache-dir", str(tmp_path / "cache")]
    first, second = warm_push(*args), warm_push(*args)
    assert "up to date" in second.stderr and second.stdout == first.stdout
    assert second.stderr.splitlines()[-1] == "exit 0", second.stderr
