"""``--from``: an image built on a base image, checked with skopeo and podman.

The base is made by hand (a gzip layer with /etc/base-release and /usr/share/base, a config with
Env, Labels, WorkingDir and an ``empty_layer`` history entry), in an index with an amd64 and an
arm64 image, and pushed with skopeo: ociforge must pick the image's own platform, put the base's
layers first, merge the config and record the OCI base annotations.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.test_push_e2e import APP, NOISE, cli_env, ociforge, raw_manifest
from tests.support.nixstore import BuiltClosure
from tests.support.podman import Podman
from tests.support.registry import RegistryServer
from tests.support.registry_fixtures import skopeo

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
RELEASE = b"base-os 1.0\n"
BASE_LABELS = {"org.example.from": "base", "shared": "base"}
KEY = "dev.ociforge.layer.key"


@dataclass(frozen=True)
class Base:
    ref: str  # host/repo:1
    layer: str  # the blob digest of its one layer
    diff_id: str
    layer_bytes: bytes


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(layout: Path, data: bytes, media_type: str) -> dict[str, object]:
    path = layout / "blobs" / "sha256" / _digest(data).removeprefix("sha256:")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}


def _layer() -> tuple[bytes, bytes]:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("etc", "usr", "usr/share", "usr/share/base"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1
            tar.addfile(info)
        for name, data in [("etc/base-release", RELEASE), ("usr/share/base/doc", b"doc\n")]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue(), gzip.compress(out.getvalue(), mtime=0)


def write_base_layout(layout: Path) -> tuple[bytes, bytes]:
    """An index (amd64 and arm64) over one layer, as a distro base would be published."""
    tar, layer = _layer()
    layer_desc = _blob(layout, layer, "application/vnd.oci.image.layer.v1.tar+gzip")
    entries = []
    for arch in ("arm64", "amd64"):
        config = {
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/bin:/bin", "BASE_ONLY=yes"],
                "Cmd": ["/bin/sh"],
                "WorkingDir": "/srv",
                "Labels": BASE_LABELS,
            },
            "rootfs": {"type": "layers", "diff_ids": [_digest(tar)]},
            "history": [
                {"created": "2020-01-01T00:00:00Z", "created_by": "ADD base.tar /"},
                {"created_by": 'CMD ["/bin/sh"]', "empty_layer": True},
            ],
        }
        config_desc = _blob(
            layout, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc,
            "layers": [layer_desc],
        }
        entry = _blob(layout, json.dumps(manifest).encode(), OCI_MANIFEST)
        entries.append({**entry, "platform": {"architecture": arch, "os": "linux"}})
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }
    index_entry = _blob(layout, json.dumps(index).encode(), str(index["mediaType"]))
    index_entry["annotations"] = {"org.opencontainers.image.ref.name": "1"}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    top = {"schemaVersion": 2, "manifests": [index_entry]}
    (layout / "index.json").write_text(json.dumps(top))
    return tar, layer


def push_base(registry: RegistryServer, repo: str, tmp: Path, env: dict[str, str]) -> Base:
    tar, layer = write_base_layout(tmp / "base-layout")
    ref = f"{registry.host}/{repo}:1"
    copy = (
        "copy",
        "--all",
        "--dest-tls-verify=false",
        f"oci:{tmp}/base-layout:1",
        f"docker://{ref}",
    )
    result = skopeo(env, *copy)
    assert result.returncode == 0, result.stderr
    return Base(ref, _digest(layer), _digest(tar), layer)


def base_digest(env: dict[str, str], ref: str) -> str:
    return _digest(raw_manifest(env, ref))


def config_of(env: dict[str, str], ref: str) -> dict[str, object]:
    result = skopeo(env, "inspect", "--tls-verify=false", "--config", "--raw", f"docker://{ref}")
    assert result.returncode == 0, result.stderr
    config: dict[str, object] = json.loads(result.stdout)
    return config


def test_push_from_a_base_puts_its_layers_first_merges_config_and_runs(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    podman: Podman,
    tmp_path: Path,
) -> None:
    base = push_base(registry, repo_name + "-base", tmp_path, skopeo_env)
    dest = f"{registry.host}/{repo_name}:app"
    run = ociforge(
        "push", "--from", base.ref, "--label", "shared=ours", "--json", closure[APP], dest,
        env=cli_env(home),
    )  # fmt: skip
    assert run.code == 0, run.explain()
    resolved = base_digest(skopeo_env, base.ref)  # the index the tag names
    assert f"base image {base.ref} resolved to {resolved}" in run.err, run.explain()
    summary = json.loads(run.out)
    assert summary["base_digest"] == resolved
    # Same registry: the base layer is mounted, not streamed through ociforge.
    assert summary["blobs"][0]["digest"] == base.layer
    assert summary["blobs"][0]["outcome"] == "mounted"

    manifest = json.loads(raw_manifest(skopeo_env, dest))
    assert manifest["annotations"]["org.opencontainers.image.base.name"] == base.ref
    assert manifest["annotations"]["org.opencontainers.image.base.digest"] == resolved
    first, *ours = manifest["layers"]
    assert first["digest"] == base.layer and KEY not in first.get("annotations", {})
    assert ours and all(KEY in layer["annotations"] for layer in ours)

    config = config_of(skopeo_env, dest)
    diff_ids = config["rootfs"]["diff_ids"]  # type: ignore[index]
    assert diff_ids[0] == base.diff_id and len(diff_ids) == len(manifest["layers"])
    history = config["history"]
    assert isinstance(history, list)
    assert history[0]["created_by"] == "ADD base.tar /" and history[1]["empty_layer"] is True
    assert len([h for h in history if not h.get("empty_layer")]) == len(diff_ids)
    container = config["config"]
    assert isinstance(container, dict)
    env = dict(item.split("=", 1) for item in container["Env"])
    assert env["BASE_ONLY"] == "yes"
    # Ours first, then the base's entries not in it already, each once.
    path = env["PATH"].split(":")
    assert path.index("/usr/local/sbin") > 0 and "/usr/bin" in path, env["PATH"]
    assert len(path) == len(set(path)), env["PATH"]
    assert container["WorkingDir"] == "/srv"
    assert container["Labels"] == {"org.example.from": "base", "shared": "ours"}

    # Files of both parts, in a container pulled from the registry.
    podman.pull(dest)
    ran = podman.sh(dest, "cat /etc/base-release && app && pwd")
    assert ran.returncode == 0, ran.stderr
    expected = [RELEASE.decode().strip(), f"app uses {closure[NOISE]}", "/srv"]
    assert ran.stdout.splitlines() == expected


def test_build_from_a_base_into_a_layout_copies_its_blobs(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    tmp_path: Path,
) -> None:
    base = push_base(registry, repo_name, tmp_path, skopeo_env)
    layout = tmp_path / "out"
    run = ociforge("build", "--from", base.ref, closure[APP], f"oci:{layout}:t", env=cli_env(home))
    assert run.code == 0, run.explain()
    assert (layout / "blobs/sha256" / base.layer.removeprefix("sha256:")).read_bytes() == (
        base.layer_bytes
    )
    inspected = skopeo(skopeo_env, "inspect", f"oci:{layout}:t")
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["Layers"][0] == base.layer
    assert info["Labels"]["org.example.from"] == "base"
    # skopeo reads every blob of the layout and checks it against its digest.
    copied = skopeo(skopeo_env, "copy", f"oci:{layout}:t", f"oci:{tmp_path}/copy:t")
    assert copied.returncode == 0, copied.stderr


def test_a_tampered_base_blob_fails_the_build_and_writes_no_tag(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    tmp_path: Path,
) -> None:
    base = push_base(registry, repo_name, tmp_path, skopeo_env)
    hexd = base.layer.removeprefix("sha256:")
    data = registry.storage_dir / f"docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"
    original = data.read_bytes()
    # The registry now serves other bytes, of the same length, under the layer's digest.
    data.write_bytes(bytes(b ^ 0xFF for b in original[:64]) + original[64:])
    try:
        layout = tmp_path / "out"
        run = ociforge(
            "build", "--from", base.ref, closure[APP], f"oci:{layout}:t", env=cli_env(home)
        )
    finally:
        data.write_bytes(original)  # the registry is shared by the session's tests
    assert run.code == 5, run.explain()  # the registry sent other bytes: a registry error
    line = run.one_line_error()
    assert base.layer in line and "expected digest" in line and "sent blob" in line, line
    index = json.loads((layout / "index.json").read_text()) if layout.exists() else {}
    assert index.get("manifests", []) == []
    assert not (layout / "blobs/sha256" / hexd).exists()
