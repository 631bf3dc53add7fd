"""SBOM, cosign signature and ``verify`` through a real distribution 2.8.2 registry, read back
by independent tools: skopeo (the image is unchanged), cyclonedx-python-lib and spdx-tools
(the SBOM parses and validates), openssl (the signature verifies)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.test_trust import forge
from tests.support.nixstore import BuiltClosure
from tests.support.registry import RegistryServer
from tests.support.registry_fixtures import skopeo

pytestmark = pytest.mark.integration
ACCEPT = ", ".join(
    ["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"]
)


def ociforge(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OCIFORGE_")}
    environ.update(HOME=str(home), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "ociforge", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=home,
    )


def keys(home: Path, prefix: str) -> tuple[Path, Path]:
    made = ociforge(home, "keygen", "--cosign", prefix)
    assert made.returncode == 0, made.stderr
    assert "OCIFORGE_COSIGN_KEY" in made.stderr
    return home / f"{prefix}.key", home / f"{prefix}.pub"


def push(home: Path, app: str, ref: str, *flags: str) -> str:
    done = ociforge(home, "push", "--max-layers", "4", "--no-cache", app, ref, *flags)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().rsplit("@", 1)[1]


def get(registry: RegistryServer, repo: str, what: str, ref: str) -> bytes:
    response = httpx.get(f"{registry.url}/v2/{repo}/{what}/{ref}", headers={"Accept": ACCEPT})
    response.raise_for_status()
    return response.content


def sbom_of(registry: RegistryServer, repo: str, digest: str) -> tuple[dict[str, object], bytes]:
    """The referrers-tag index entry of the SBOM and the SBOM's bytes."""
    index = json.loads(get(registry, repo, "manifests", digest.replace(":", "-")))
    (entry,) = [
        m
        for m in index["manifests"]
        if "cyclonedx" in m["artifactType"] or "spdx" in m["artifactType"]
    ]
    artifact = json.loads(get(registry, repo, "manifests", entry["digest"]))
    assert artifact["subject"]["digest"] == digest
    assert artifact["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    return entry, get(registry, repo, "blobs", artifact["layers"][0]["digest"])


def test_a_signed_image_with_an_sbom_is_read_by_independent_tools(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    tmp_path: Path,
) -> None:
    private, public = keys(home, "ci")
    ref = f"{registry.host}/{repo_name}:latest"
    digest = push(home, closure["app-1.0"], ref, "--sbom", "--sign-key", str(private))

    inspected = skopeo(skopeo_env, "inspect", "--tls-verify=false", f"docker://{ref}")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Digest"] == digest  # the image itself is unchanged

    from cyclonedx.model.bom import Bom

    entry, document = sbom_of(registry, repo_name, digest)
    assert entry["artifactType"] == "application/vnd.cyclonedx+json"
    bom = Bom.from_json(json.loads(document))  # type: ignore[attr-defined]
    refs = {str(c.bom_ref) for c in bom.components}
    assert closure["app-1.0"] in refs and closure["busybox"] in refs
    assert bom.metadata.component is not None and bom.metadata.component.version == digest

    sig = json.loads(get(registry, repo_name, "manifests", digest.replace(":", "-") + ".sig"))
    (layer,) = sig["layers"]
    payload = get(registry, repo_name, "blobs", layer["digest"])
    assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == digest
    (tmp_path / "payload").write_bytes(payload)
    signature = layer["annotations"]["dev.cosignproject.cosign/signature"]
    (tmp_path / "sig.der").write_bytes(base64.b64decode(signature))
    checked = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            str(public),
            "-signature",
            str(tmp_path / "sig.der"),
            str(tmp_path / "payload"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0 and "Verified OK" in checked.stdout, checked.stderr

    verified = ociforge(
        home,
        "verify",
        ref,
        "--key",
        str(public),
        "--source",
        closure["app-1.0"],
        "--max-layers",
        "4",
        "--insecure",
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.count("ok  ") == 3

    # Pushing the same image again keeps one SBOM entry and one signature.
    assert push(home, closure["app-1.0"], ref, "--sbom", "--sign-key", str(private)) == digest
    assert (
        len(
            json.loads(get(registry, repo_name, "manifests", digest.replace(":", "-")))["manifests"]
        )
        == 1
    )
    sig = json.loads(get(registry, repo_name, "manifests", digest.replace(":", "-") + ".sig"))
    assert len(sig["layers"]) == 1


def test_an_spdx_sbom_validates_with_spdx_tools(
    closure: BuiltClosure, registry: RegistryServer, repo_name: str, home: Path, tmp_path: Path
) -> None:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    ref = f"{registry.host}/{repo_name}:latest"
    digest = push(home, closure["app-1.0"], ref, "--sbom", "--sbom-format", "spdx")
    entry, document = sbom_of(registry, repo_name, digest)
    assert entry["artifactType"] == "application/spdx+json"
    (tmp_path / "sbom.spdx.json").write_bytes(document)
    parsed = parse_file(str(tmp_path / "sbom.spdx.json"))
    assert validate_full_spdx_document(parsed) == []
    assert {p.file_name for p in parsed.packages} >= {closure["app-1.0"], closure["busybox"]}


def test_verify_names_each_mismatch(
    closure: BuiltClosure, registry: RegistryServer, repo_name: str, home: Path
) -> None:
    private, public = keys(home, "mine")
    _, other = keys(home, "theirs")
    app = closure["app-1.0"]
    signed = f"{registry.host}/{repo_name}-signed:latest"
    push(home, app, signed, "--sbom", "--sign-key", str(private))

    wrong_key = ociforge(home, "verify", signed, "--key", str(other), "--insecure")
    assert wrong_key.returncode == 7
    assert "signature mismatch" in wrong_key.stderr and "key given" in wrong_key.stderr
    assert wrong_key.stderr.count("\n") == 1 and "Traceback" not in wrong_key.stderr

    bare = f"{registry.host}/{repo_name}-bare:latest"
    push(home, app, bare, "--sign-key", str(private))
    no_sbom = ociforge(home, "verify", bare, "--key", str(public), "--insecure", "--json")
    assert no_sbom.returncode == 7 and "no SBOM attached" in no_sbom.stderr
    report = json.loads(no_sbom.stdout)
    assert [c["ok"] for c in report["checks"]] == [True, False]

    forge(registry, f"{repo_name}-signed", "latest")  # someone swaps the first layer
    tampered = ociforge(home, "verify", signed, "--source", app, "--max-layers", "4", "--insecure")
    assert tampered.returncode == 7
    assert "layer mismatch: layer 1" in tampered.stderr


def test_build_to_a_layout_keeps_the_sbom_beside_the_image(
    closure: BuiltClosure, home: Path, skopeo_env: dict[str, str], tmp_path: Path
) -> None:
    layout = tmp_path / "out"
    built = ociforge(home, "build", closure["app-1.0"], f"oci:{layout}:v1", "--sbom", "--json")
    assert built.returncode == 0, built.stderr
    digest = json.loads(built.stdout)["manifest_digest"]
    index = json.loads((layout / "index.json").read_text())
    (artifact_entry,) = [m for m in index["manifests"] if "annotations" not in m]
    blob = layout / "blobs" / "sha256" / artifact_entry["digest"].split(":")[1]
    artifact = json.loads(blob.read_bytes())
    assert artifact["subject"]["digest"] == digest
    assert artifact["artifactType"] == "application/vnd.cyclonedx+json"
    copied = skopeo(skopeo_env, "copy", f"oci:{layout}:v1", f"oci:{tmp_path / 'copy'}:v1")
    assert copied.returncode == 0, copied.stderr  # the image itself reads as before
