"""Registry content never decides what an image holds unless a trusted key signed it.

The attack (reproduced on the code before ociforge.trust): anyone who can write a manifest under
the tag (or in a --cache-from repository) maps a layer key to their own blob; every later
rebuild from source skipped that layer and republished their blob under the right key.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest

import ociforge
from ociforge.trust import SIGNATURE_ANNOTATION, SIGNER_ANNOTATION, statement
from tests.support.nixstore import BuiltClosure
from tests.support.registry import RegistryServer

pytestmark = pytest.mark.integration
ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push(root: str, ref: str, **registry: object) -> ociforge.PushResult:
    return ociforge.push(
        root,
        [ref],
        options=ociforge.ImageOptions(max_layers=4),
        registry=ociforge.RegistryOptions(cache_dir=None, **registry),  # type: ignore[arg-type]
    )


def put_blob(registry: RegistryServer, repo: str, data: bytes) -> str:
    start = httpx.post(f"{registry.url}/v2/{repo}/blobs/uploads/")
    location = httpx.URL(registry.url).join(start.headers["location"])
    httpx.put(location.copy_add_param("digest", sha(data)), content=data).raise_for_status()
    return sha(data)


def evil_layer() -> tuple[bytes, bytes]:
    """(tar, gzip of it): a layer that replaces /bin/app."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("bin/app")
        payload = b"#!/bin/sh\necho owned\n"
        info.size, info.mode = len(payload), 0o755
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue(), gzip.compress(buf.getvalue(), mtime=0)


def forge(registry: RegistryServer, repo: str, tag: str) -> str:
    """Rewrite ``repo:tag`` so that its first layer's key names the attacker's blob; the
    signature annotations (if any) are kept, as a forger would. Returns the evil digest."""
    url = f"{registry.url}/v2/{repo}/manifests/{tag}"
    manifest = httpx.get(url, headers={"Accept": ACCEPT}).json()
    config = json.loads(
        httpx.get(f"{registry.url}/v2/{repo}/blobs/{manifest['config']['digest']}").content
    )
    tar, blob = evil_layer()
    evil = put_blob(registry, repo, blob)
    config["rootfs"]["diff_ids"][0] = sha(tar)
    config_bytes = json.dumps(config).encode()
    manifest["config"].update(digest=put_blob(registry, repo, config_bytes), size=len(config_bytes))
    manifest["layers"][0].update(digest=evil, size=len(blob))
    httpx.put(
        url, content=json.dumps(manifest), headers={"Content-Type": ACCEPT}
    ).raise_for_status()
    return evil


@pytest.mark.parametrize("signed", [False, True], ids=["no key", "signing key"])
def test_a_forged_layer_table_never_reaches_a_rebuilt_image(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    signed: bool,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if signed:
        monkeypatch.setenv("OCIFORGE_SIGNING_KEY", ociforge.generate_key()[0])
    else:
        monkeypatch.delenv("OCIFORGE_SIGNING_KEY", raising=False)
    app, ref = closure["app-1.0"], f"{registry.host}/{repo_name}:latest"
    honest = push(app, ref)
    evil = forge(registry, repo_name, "latest")
    rebuilt = push(app, ref)  # a fresh runner rebuilding from source
    assert rebuilt.manifest_digest == honest.manifest_digest
    assert evil not in {str(b.descriptor.digest) for b in rebuilt.blobs}
    held = httpx.get(f"{registry.url}/v2/{repo_name}/manifests/latest", headers={"Accept": ACCEPT})
    assert sha(held.content) == honest.manifest_digest


def test_cache_from_another_project_needs_its_public_key(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Project B signs; project A trusts B's layers only with B's public key."""
    monkeypatch.setenv("HOME", str(tmp_path))
    b_private, b_public = ociforge.generate_key()
    app = closure["app-1.0"]
    monkeypatch.setenv("OCIFORGE_SIGNING_KEY", b_private)
    push(app, f"{registry.host}/{repo_name}-b:latest")
    monkeypatch.setenv("OCIFORGE_SIGNING_KEY", ociforge.generate_key()[0])  # project A's own
    source = ociforge.parse_reference(f"{registry.host}/{repo_name}-b:latest")
    events: list[ociforge.Event] = []
    result = ociforge.push(
        app,
        [f"{registry.host}/{repo_name}-a:latest"],
        options=ociforge.ImageOptions(max_layers=4),
        registry=ociforge.RegistryOptions(cache_dir=None, cache_from=(source,)),
        on_event=events.append,
    )
    # B's table is a mere claim for A: nothing is mounted on its word (A's repository lacks
    # the blobs, so there is nothing to hash either: the layers are streamed and uploaded).
    assert {b.outcome for b in result.blobs} == {"uploaded"}
    monkeypatch.setenv("OCIFORGE_TRUSTED_KEYS", base64.b64encode(_der(b_public)).decode())
    events.clear()
    trusted = ociforge.push(
        app,
        [f"{registry.host}/{repo_name}-a2:latest"],
        options=ociforge.ImageOptions(max_layers=4),
        registry=ociforge.RegistryOptions(cache_dir=None, cache_from=(source,)),
        on_event=events.append,
    )
    assert not any("hashing them" in str(getattr(e, "text", "")) for e in events)
    assert {b.outcome for b in trusted.blobs} == {"mounted"}
    assert [b.descriptor.digest for b in trusted.blobs] == [
        b.descriptor.digest for b in result.blobs
    ]


def _der(public_pem: str) -> bytes:
    body = "".join(line for line in public_pem.splitlines() if "-----" not in line)
    return base64.b64decode(body)


def test_the_signature_verifies_with_openssl(
    closure: BuiltClosure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An independent verifier: the manifest's signature is Ed25519 over the documented
    statement of the layer keys, digests and diff_ids."""
    private, public = ociforge.generate_key()
    monkeypatch.setenv("OCIFORGE_SIGNING_KEY", private)
    built = ociforge.build(
        closure["app-1.0"], f"oci:{tmp_path}/o:t", options=ociforge.ImageOptions(max_layers=4)
    )
    manifest = json.loads(built.image.manifest)
    claims = [
        (d["annotations"]["dev.ociforge.layer.key"], ociforge.Digest.parse(d["digest"]),
         ociforge.Digest.parse(diff_id), d["size"])
        for d, diff_id in zip(manifest["layers"], built.image.diff_ids, strict=True)
    ]  # fmt: skip
    (tmp_path / "statement").write_bytes(statement(claims))
    (tmp_path / "sig").write_bytes(base64.b64decode(manifest["annotations"][SIGNATURE_ANNOTATION]))
    (tmp_path / "pub.pem").write_text(public)
    assert manifest["annotations"][SIGNER_ANNOTATION].startswith("ed25519:")
    verify = [
        "openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"),
        "-rawin", "-in", str(tmp_path / "statement"), "-sigfile", str(tmp_path / "sig"),
    ]  # fmt: skip
    assert subprocess.run(verify, capture_output=True, check=False).returncode == 0
    (tmp_path / "statement").write_bytes(statement(claims[1:]))
    assert subprocess.run(verify, capture_output=True, check=False).returncode != 0
    again = ociforge.build(
        closure["app-1.0"], f"oci:{tmp_path}/p:t", options=ociforge.ImageOptions(max_layers=4)
    )
    assert again.manifest_digest == built.manifest_digest  # Ed25519 is deterministic
