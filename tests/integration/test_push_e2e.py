"""`ociforge push` end to end against real distribution 2.8.2 registries on loopback: anonymous,
htpasswd (Basic) and GitLab-like token auth. What a registry holds is checked with independent
clients: skopeo (inspect, copy), umoci (unpack), podman (pull, run) and hand-made requests.

The CLI runs as a subprocess with a controlled environment: PATH, NIX_CONFIG, a fresh empty
HOME per test (no auth files, and a cold layer cache: ociforge keeps one under HOME) and only
the variables a test sets. Faults injected by a proxy are in test_push_faults.py, which shares
the helpers defined here.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.faultproxy import Delay, Fault, FaultProxy, InvalidToken
from tests.support.filetree import tree
from tests.support.nixstore import BuiltClosure, Entry, File, Package, Symlink, busybox_package
from tests.support.nixstore import make_closure as build_closure
from tests.support.podman import Podman
from tests.support.registry import RegistryServer
from tests.support.registry_fixtures import MakeFaultProxy, TokenRegistry, skopeo
from tests.support.tokenserver import JOB_TOKEN_USER

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
APP, NOISE = "app-1.0", "noise-1.0"
UPLOADS = r"/blobs/uploads/"
PUSHED_LINE = re.compile(r"^(?P<ref>\S+)@(?P<digest>sha256:[0-9a-f]{64})$")
CI_KEYS = ("CI_REGISTRY", "CI_REGISTRY_IMAGE", "CI_REGISTRY_USER", "CI_REGISTRY_PASSWORD")


# --- shared helpers (test_push_faults.py uses them too) --------------------------------------


def make_push_closure(tmp: Path) -> BuiltClosure:
    """busybox, a 3 MiB incompressible file (a layer big enough to cut mid-upload) and an app
    depending on both. The app's bin/sh puts ``sh`` on the image's /bin and PATH."""
    # Seeded: the same bytes every run, hence the same store path (built once per machine).
    noise = random.Random(20240601).randbytes(3 * 1024 * 1024)
    script = f"#!@busybox@/bin/sh\necho app uses @{NOISE}@\n"
    app: dict[str, Entry] = {
        "bin/app": File(script, executable=True),
        "bin/sh": Symlink("@busybox@/bin/sh"),
    }
    return build_closure(
        tmp,
        [
            busybox_package(),
            Package(NOISE, {"share/noise.bin": noise}),
            Package(APP, app, deps=("busybox", NOISE)),
        ],
    )


@dataclass(frozen=True)
class Run:
    """One finished ``python -m ociforge`` invocation."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def explain(self) -> str:
        return f"ociforge {' '.join(self.args)} -> exit {self.code}\n{self.out}\n{self.err}"

    def pushed(self) -> dict[str, str]:
        """``DEST -> digest`` from the ``DEST@sha256:...`` lines (every stdout line is one)."""
        matches = [PUSHED_LINE.match(line) for line in self.out.splitlines()]
        assert matches and all(matches), self.explain()
        return {m["ref"]: m["digest"] for m in matches if m is not None}

    def one_line_error(self) -> str:
        """The single ``ociforge: error:`` line, which must be the last line of stderr."""
        assert "Traceback" not in self.err, self.explain()
        lines = self.err.strip().splitlines()
        errors = [line for line in lines if line.startswith("ociforge: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], self.explain()
        return errors[0]


def cli_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH, HOME, NIX_CONFIG and ``extra``: nothing else of the test runner's environment."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "NIX_CONFIG": os.environ.get("NIX_CONFIG", "substituters ="),
    }
    return {**env, **(extra or {})}


def start_ociforge(*args: str, env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ociforge", *args],
        cwd=REPO,
        env=dict(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], stdin: str = "", timeout: float = 120) -> Run:
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    args = tuple(str(a) for a in proc.args)[3:]  # type: ignore[union-attr]
    return Run(args, proc.returncode, out, err)


def ociforge(*args: str, env: Mapping[str, str], stdin: str = "") -> Run:
    return finish(start_ociforge(*args, env=env), stdin)


def inspect_digest(skopeo_env: dict[str, str], ref: str, *creds: str) -> str:
    """The manifest digest skopeo reads from the registry for ``ref``."""
    result = skopeo(skopeo_env, "inspect", "--tls-verify=false", *creds, f"docker://{ref}")
    assert result.returncode == 0, result.stderr
    digest: str = json.loads(result.stdout)["Digest"]
    return digest


def copy_to_layout(skopeo_env: dict[str, str], ref: str, layout: Path) -> None:
    """skopeo copy (which checks every blob against its digest) into ``oci:layout:t``."""
    args = ("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:t")
    result = skopeo(skopeo_env, *args)
    assert result.returncode == 0, result.stderr


def raw_manifest(skopeo_env: dict[str, str], ref: str, *creds: str) -> bytes:
    args = ("inspect", "--tls-verify=false", *creds, "--raw", f"docker://{ref}")
    result = skopeo(skopeo_env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.encode()


def local_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


# --- anonymous registry: the whole story ------------------------------------------------


def test_push_two_tags_gives_the_local_build_that_unpacks_and_runs(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    podman: Podman,
    tmp_path: Path,
) -> None:
    env = cli_env(home)
    dests = [f"{registry.host}/{repo_name}:one", f"{registry.host}/{repo_name}:two"]
    run = ociforge("push", closure[APP], *dests, env=env)
    assert run.code == 0, run.explain()
    pushed = run.pushed()
    digest = pushed[dests[0]]
    assert pushed == {dests[0]: digest, dests[1]: digest}
    assert list(pushed) == dests

    # The same bytes as a local build with the same options.
    built = ociforge("build", closure[APP], f"oci:{tmp_path}/local:t", env=env)
    assert built.out.strip() == f"oci:{tmp_path}/local:t@{digest}", built.explain()
    assert [inspect_digest(skopeo_env, d) for d in dests] == [digest, digest]
    assert raw_manifest(skopeo_env, dests[1]) == local_blob(tmp_path / "local", digest)
    copy_to_layout(skopeo_env, dests[1], tmp_path / "copy")
    blobs = sorted(os.listdir(tmp_path / "local/blobs/sha256"))
    assert sorted(os.listdir(tmp_path / "copy/blobs/sha256")) == blobs

    # Unpacked, the image's store is the closure, file by file.
    bundle = tmp_path / "bundle"
    unpack = ["umoci", "unpack", "--rootless", "--image", f"{tmp_path}/copy:t", str(bundle)]
    subprocess.run(unpack, capture_output=True, check=True)
    listed = subprocess.run(
        ["nix-store", "-qR", closure[APP]], capture_output=True, text=True, check=True
    )
    expected = sorted(Path(p).name for p in listed.stdout.split())
    store = bundle / "rootfs/nix/store"
    assert sorted(os.listdir(store)) == expected
    for name in expected:
        assert tree(store / name) == tree(Path("/nix/store") / name), name

    # And it runs, pulled from the registry.
    podman.pull(dests[0])
    ran = podman.sh(dests[0], "echo ok && app")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["ok", f"app uses {closure[NOISE]}"]


# --- GitLab CI: token auth from the job's variables -------------------------------------


def gitlab_env(home: Path, tr: TokenRegistry, host: str | None = None) -> dict[str, str]:
    """Only the registry variables of a GitLab job. ``host``: the registry as the job sees
    it, e.g. through a proxy."""
    ci = {k: v for k, v in tr.ci_env.items() if k in (*CI_KEYS, "CI_JOB_TOKEN")}
    if host is not None:
        ci.update(CI_REGISTRY=host, CI_REGISTRY_IMAGE=f"{host}/{tr.project}")
    return cli_env(home, ci)


def reader_creds(tr: TokenRegistry) -> tuple[str, str]:
    """skopeo options for the pull-only user: an independent read of what was pushed."""
    return ("--creds", f"{tr.reader[0]}:{tr.reader[1]}")


def test_gitlab_ci_job_pushes_with_no_flags(
    closure: BuiltClosure, token_registry: TokenRegistry, home: Path, skopeo_env: dict[str, str]
) -> None:
    env = gitlab_env(home, token_registry)
    dest = f"{env['CI_REGISTRY_IMAGE']}/builder:latest"
    run = ociforge("push", closure[APP], dest, env=env)
    assert run.code == 0, run.explain()

    with_basic = [r for r in token_registry.tokens.requests if r.auth_given]
    assert with_basic, token_registry.tokens.requests
    assert {(r.username, r.status) for r in with_basic} == {(JOB_TOKEN_USER, 200)}
    granted = {(a.name, a.actions) for r in with_basic for a in r.granted}
    assert (f"{token_registry.project}/builder", ("pull", "push")) in granted
    assert inspect_digest(skopeo_env, dest, *reader_creds(token_registry)) == run.pushed()[dest]


def test_expiring_tokens_are_renewed_during_the_push(
    closure: BuiltClosure,
    token_registry: TokenRegistry,
    make_fault_proxy: MakeFaultProxy,
    home: Path,
    skopeo_env: dict[str, str],
) -> None:
    token_registry.tokens.set_registry_validity(1)
    proxy = make_fault_proxy(token_registry.url)
    proxy.add_fault(
        # The first PATCH reaches the registry after its token died: a real 401 invalid_token.
        Fault("PATCH", UPLOADS, Delay(2.5)),
        # The manifest PUT meets the same answer, deterministically.
        Fault("PUT", r"/manifests/", InvalidToken()),
    )
    env = gitlab_env(home, token_registry, host=proxy.host)
    dest = f"{env['CI_REGISTRY_IMAGE']}/builder:latest"
    run = ociforge("push", closure[APP], dest, env=env)
    assert run.code == 0, run.explain()

    assert {r.fault for r in proxy.faults_fired()} == {"Delay", "InvalidToken"}
    assert any(r.method == "PATCH" and r.status == 401 for r in proxy.requests), proxy.requests
    issued = [r for r in token_registry.tokens.requests if r.status == 200 and r.auth_given]
    assert len(issued) >= 3  # the first token, one after the PATCH, one after the manifest
    stored = f"{token_registry.image}/builder:latest"
    assert inspect_digest(skopeo_env, stored, *reader_creds(token_registry)) == run.pushed()[dest]


# --- htpasswd Basic registry -------------------------------------------------------------


@pytest.mark.parametrize("how", ["password-stdin", "environment"])
def test_basic_auth_registry(
    how: str,
    closure: BuiltClosure,
    basic_registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
) -> None:
    assert basic_registry.credentials is not None
    user, password = basic_registry.credentials
    dest = f"{basic_registry.host}/{repo_name}:t"
    if how == "environment":
        env = cli_env(home, {"OCIFORGE_USERNAME": user, "OCIFORGE_PASSWORD": password})
        run = ociforge("push", closure[APP], dest, env=env)
    else:
        args = ("push", closure[APP], dest, "--username", user, "--password-stdin")
        run = ociforge(*args, env=cli_env(home), stdin=password + "\n")
    assert run.code == 0, run.explain()
    creds = ("--creds", f"{user}:{password}")
    assert inspect_digest(skopeo_env, dest, *creds) == run.pushed()[dest]


# --- push of an OCI layout built before ------------------------------------------------


def test_pushing_a_built_layout_is_byte_for_byte_and_skips_blobs_the_second_time(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    tmp_path: Path,
) -> None:
    env = cli_env(home)
    layout = tmp_path / "layout"
    built = ociforge("build", closure[APP], f"oci:{layout}:v1", "--compression", "zstd", env=env)
    assert built.code == 0, built.explain()
    digest = built.out.strip().rsplit("@", 1)[-1]
    manifest = json.loads(local_blob(layout, digest))
    blob_digests = sorted(
        [manifest["config"]["digest"], *(x["digest"] for x in manifest["layers"])]
    )

    dest = f"{registry.host}/{repo_name}:v1"
    outcomes = []
    for _ in range(2):
        run = ociforge("push", f"oci:{layout}:v1", dest, "--json", env=env)
        assert run.code == 0, run.explain()
        summary = json.loads(run.out)
        assert (summary["manifest_digest"], summary["references"]) == (digest, [dest])
        assert sorted(b["digest"] for b in summary["blobs"]) == blob_digests
        outcomes.append({b["outcome"] for b in summary["blobs"]})
    assert outcomes == [{"uploaded"}, {"skipped"}]
    assert inspect_digest(skopeo_env, dest) == digest
    assert raw_manifest(skopeo_env, dest) == local_blob(layout, digest)


# --- chunked uploads and parallelism do not change the image -----------------------------


def test_chunk_size_and_jobs_give_the_same_image(
    closure: BuiltClosure,
    registry: RegistryServer,
    fault_proxy: FaultProxy,
    repo_name: str,
    tmp_path: Path,
    skopeo_env: dict[str, str],
) -> None:
    # Each push with its own HOME: a warm layer cache would skip the upload being compared.
    def push(name: str, host: str, *options: str) -> str:
        dest = f"{host}/{repo_name}-{name}:t"
        run = ociforge("push", closure[APP], dest, *options, env=cli_env(tmp_path / name))
        assert run.code == 0, run.explain()
        return run.pushed()[dest]

    chunked = push("chunked", fault_proxy.host, "--chunk-size", "64KB", "--jobs", "4")
    patches = [r for r in fault_proxy.requests if r.method == "PATCH"]
    assert all(r.status == 202 for r in patches), patches
    assert max(r.body_bytes for r in patches) <= 64_000
    # The 3 MiB layer alone needs 50 chunks of 64 KB.
    assert len(patches) >= 50
    assert push("jobs1", registry.host, "--jobs", "1") == chunked
    copy_to_layout(skopeo_env, f"{registry.host}/{repo_name}-chunked:t", tmp_path / "copy")


@pytest.mark.parametrize(
    ("rules", "needle", "code", "blobs_sent"),
    [
        # A protected tag is known to fail from the token alone: before any blob.
        ({"push_denied": ("^v[0-9]+",)}, "is protected (rule '^v[0-9]+')", 6, False),
        # An immutable one only if it would change: once the manifest is known, before tags.
        ({"immutable": ("^v1$",)}, "is immutable (rule '^v1$')", 5, True),
    ],
    ids=["protected", "immutable"],
)
def test_a_tag_the_registry_will_refuse_fails_before_any_upload(
    closure: BuiltClosure,
    token_registry: TokenRegistry,
    home: Path,
    skopeo_env: dict[str, str],
    rules: dict[str, tuple[str, ...]],
    needle: str,
    code: int,
    blobs_sent: bool,
) -> None:
    """GitLab puts its protected and immutable tag rules in the job's token: a tag the
    registry will refuse fails at once, naming tag and rule, and no other tag moves."""
    env = gitlab_env(home, token_registry)
    image = f"{env['CI_REGISTRY_IMAGE']}/app"
    before = ociforge("push", closure["busybox"], f"{image}:v1", f"{image}:latest", env=env)
    assert before.code == 0, before.explain()
    token_registry.tokens.protect_tags(token_registry.project, **rules)
    uploads = len(token_registry.registry.log_text().splitlines())
    run = ociforge("push", closure[APP], f"{image}:latest", f"{image}:v1", env=env)
    assert run.code == code, run.explain()
    assert needle in run.one_line_error() and f"{image}:v1" in run.one_line_error()
    log = token_registry.registry.log_text().splitlines()[uploads:]
    repo = f"/v2/{token_registry.project}/app/"
    writes = [line for line in log if repo in line and any(m in line for m in WRITES)]
    assert [line for line in writes if "/manifests/" in line] == [], writes
    assert bool(writes) == blobs_sent, writes
    for tag in ("latest", "v1"):
        held = inspect_digest(skopeo_env, f"{image}:{tag}", *reader_creds(token_registry))
        assert held == before.pushed()[f"{image}:{tag}"]


WRITES = ('"POST ', '"PATCH ', '"PUT ')


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--env", "A=1"], "runtime"), (["--strategy", "popularity"], "strategy")],
)
def test_image_options_with_an_oci_source_are_refused_not_ignored(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    tmp_path: Path,
    flags: list[str],
    named: str,
) -> None:
    layout = f"oci:{tmp_path}/built:t"
    built = subprocess.run(
        [sys.executable, "-m", "ociforge", "build", closure["busybox"], layout],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    dest = f"{registry.host}/{repo_name}:latest"
    run = ociforge("push", layout, dest, *flags, env=cli_env(home))
    assert run.code == 2, run.explain()
    assert named in run.one_line_error() and "pushed as it was built" in run.one_line_error()
    plain = ociforge("push", layout, dest, env=cli_env(home))
    assert plain.code == 0, plain.explain()


def test_an_immutable_tag_that_already_holds_the_image_is_no_obstacle(
    closure: BuiltClosure, token_registry: TokenRegistry, home: Path
) -> None:
    """A re-run release pipeline: v1 (immutable) already holds this image, latest moved."""
    env = gitlab_env(home, token_registry)
    image = f"{env['CI_REGISTRY_IMAGE']}/app"
    assert ociforge("push", closure[APP], f"{image}:v1", env=env).code == 0
    assert ociforge("push", closure["busybox"], f"{image}:latest", env=env).code == 0
    token_registry.tokens.protect_tags(token_registry.project, immutable=("^v1$",))
    again = ociforge("push", closure[APP], f"{image}:latest", f"{image}:v1", env=env)
    assert again.code == 0, again.explain()


def test_an_oci_source_meets_the_tag_rules_before_any_upload(
    closure: BuiltClosure, token_registry: TokenRegistry, home: Path, tmp_path: Path
) -> None:
    env = gitlab_env(home, token_registry)
    image = f"{env['CI_REGISTRY_IMAGE']}/built"
    layout = f"oci:{tmp_path}/layout:t"
    assert ociforge("build", closure[APP], layout, env=env).code == 0
    token_registry.tokens.protect_tags(token_registry.project, push_denied=("^v",))
    mark = len(token_registry.registry.log_text().splitlines())
    run = ociforge("push", layout, f"{image}:v2", env=env)
    assert run.code == 6, run.explain()
    assert "is protected (rule '^v')" in run.one_line_error()
    log = token_registry.registry.log_text().splitlines()[mark:]
    repo = f"/v2/{token_registry.project}/built/"
    assert [line for line in log if repo in line and any(m in line for m in WRITES)] == []
    assert ociforge("push", layout, f"{image}:latest", env=env).code == 0  # others still go
