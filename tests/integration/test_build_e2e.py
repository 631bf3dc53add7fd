"""`ociforge build` end to end on a real closure, checked by skopeo, umoci and podman."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.filetree import tree
from tests.support.nixstore import (
    BuiltClosure,
    Dir,
    File,
    Package,
    Symlink,
    busybox_package,
    make_closure,
)
from tests.support.podman import Podman

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
LONG = (
    "deeply/nested/" + "directory-with-a-rather-long-name/" * 4 + "file-beyond-100-characters.txt"
)


@pytest.fixture(scope="module")
def closure(tmp_path_factory: pytest.TempPathFactory) -> BuiltClosure:
    tmp = tmp_path_factory.mktemp("closure")
    return make_closure(
        tmp,
        [
            busybox_package(),
            Package(
                "libgreet-1.0",
                {
                    "lib/libgreet.txt": "greetings library\n",
                    LONG: "long\n",
                    "share/empty": Dir(),
                    "share/a/b": "component order: a/b before a-b\n",
                    "share/a-b": "a-b\n",
                    "lib/link-rel": Symlink("libgreet.txt"),
                },
            ),
            Package(
                "app-2.0",
                {
                    "bin/app": File(
                        "#!@busybox@/bin/sh\necho app uses @libgreet-1.0@\n", executable=True
                    ),
                    "etc/app.conf": "conf\n",
                    "lib/abs-link": Symlink("@libgreet-1.0@/lib/libgreet.txt"),
                },
                deps=("busybox", "libgreet-1.0"),
            ),
        ],
    )


def ociforge(
    *args: str, stdout: int | None = subprocess.PIPE
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "ociforge", *args],
        cwd=REPO,
        stdout=stdout,
        stderr=subprocess.PIPE,
        check=False,
    )


def ok(*args: str) -> str:
    proc = ociforge("build", *args)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


@pytest.fixture(scope="module")
def layout(closure: BuiltClosure, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("layout") / "oci"
    ok(closure["app-2.0"], f"oci:{out}:v1", "--max-layers", "3")
    return out


def test_skopeo_accepts_the_layout(layout: Path) -> None:
    info = json.loads(
        subprocess.run(
            ["skopeo", "inspect", f"oci:{layout}:v1"], capture_output=True, check=True
        ).stdout
    )
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert len(info["Layers"]) == 3  # 2 store layers (max-layers 3 counts the customisation one)
    copied = layout.parent / "copy.tar"
    subprocess.run(
        ["skopeo", "copy", f"oci:{layout}:v1", f"docker-archive:{copied}"],
        capture_output=True,
        check=True,
    )


def test_unpacked_store_equals_the_closure(layout: Path, closure: BuiltClosure) -> None:
    bundle = layout.parent / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{layout}:v1", str(bundle)],
        capture_output=True,
        check=True,
    )
    rootfs = bundle / "rootfs"
    store_paths = sorted(os.listdir(rootfs / "nix/store"))
    expected = sorted(Path(p).name for p in _closure_paths(closure["app-2.0"]))
    assert store_paths == expected
    for name in expected:
        assert tree(rootfs / "nix/store" / name) == tree(Path("/nix/store") / name), name
    assert os.readlink(rootfs / "bin" / "app") == f"{closure['app-2.0']}/bin/app"


def _closure_paths(root: str) -> list[str]:
    out = subprocess.run(["nix-store", "-qR", root], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_builds_are_byte_identical(closure: BuiltClosure, tmp_path: Path) -> None:
    first = ok(closure["app-2.0"], f"oci:{tmp_path}/a:t", "--compression", "zstd").split("@")[-1]
    second = ok(closure["app-2.0"], f"oci:{tmp_path}/b:t", "--compression", "zstd").split("@")[-1]
    assert first == second
    blobs_a = sorted(os.listdir(tmp_path / "a/blobs/sha256"))
    assert blobs_a == sorted(os.listdir(tmp_path / "b/blobs/sha256"))
    for blob in blobs_a:
        assert (tmp_path / "a/blobs/sha256" / blob).read_bytes() == (
            tmp_path / "b/blobs/sha256" / blob
        ).read_bytes()


def test_closure_json_builds_the_same_image_offline(
    closure: BuiltClosure, layout: Path, tmp_path: Path
) -> None:
    saved = tmp_path / "closure.json"
    saved.write_bytes(
        subprocess.run(
            [
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "path-info",
                "--json",
                "-r",
                closure["app-2.0"],
            ],
            capture_output=True,
            check=True,
        ).stdout
    )
    from_nix = ok(closure["app-2.0"], f"oci:{tmp_path}/x:t", "--max-layers", "3")
    offline = ok("--closure-json", str(saved), f"oci:{tmp_path}/y:t", "--max-layers", "3")
    assert from_nix.split("@")[-1] == offline.split("@")[-1]


def test_docker_archive_on_stdout_loads_and_runs_in_podman(
    closure: BuiltClosure, podman: Podman
) -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ociforge",
            "build",
            closure["app-2.0"],
            "docker-archive:-:ociforge-test/app:1",
            "--cmd",
            "/bin/app",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as build:
        load = subprocess.run(
            [*podman.argv, "load"], stdin=build.stdout, capture_output=True, check=False
        )
        _, build_err = build.communicate()
    assert build.returncode == 0, build_err.decode()
    assert load.returncode == 0, load.stderr.decode()
    run = podman.run("localhost/ociforge-test/app:1", [])
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"app uses {closure['libgreet-1.0']}"


def test_image_with_busybox_runs_commands(
    closure: BuiltClosure, podman: Podman, tmp_path: Path
) -> None:
    ok(closure["busybox"], f"oci:{tmp_path}/bb:latest")
    run = podman.sh(f"oci:{tmp_path}/bb:latest", "echo $((6*7)) && ls /bin/sh")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["42", "/bin/sh"]


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--max-layers", "1", "oci:{tmp}/o"], 2, "--max-layers"),
        (["tarball:{tmp}/x"], 2, "unknown output"),
        (["./examples/hello#doesNotExist", "oci:{tmp}/o"], 3, "doesNotExist"),
        (["--closure-json", "{tmp}/missing.json", "oci:{tmp}/o"], 2, "missing.json"),
        (["--env", "NOEQUALS", "oci:{tmp}/o"], 2, "--env"),
        (["oci:{tmp}/o", "--compression", "zstd", "--format", "docker"], 2, "zstd"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(
    closure: BuiltClosure, tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    argv = [a.format(tmp=tmp_path) for a in args]
    if not any(a.startswith(("./", "--closure-json")) for a in argv):
        argv.insert(0, closure["busybox"])
    proc = ociforge("build", *argv)
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def _path_info(closure: BuiltClosure) -> list[dict[str, object]]:
    done = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "path-info", "--json",
         "--recursive", closure["busybox"]],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    entries: list[dict[str, object]] = json.loads(done.stdout)
    return entries


def _plain(entry: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in entry.items() if k not in ("path", "deriver")}


@pytest.mark.parametrize(
    ("forge", "needle"),
    [
        # The file names another store: its paths would be host files (/etc/shadow...).
        (lambda doc: {"version": 2, "storeDir": "/etc", "info": {
            "shadow": {**_plain(doc[0]), "references": []}}}, "/etc"),
        # A "store path" that climbs out of the store.
        (lambda doc: [{**doc[0], "path": "/nix/store/../../etc", "references": []}], "etc"),
        # A well-formed name that this store does not hold.
        (lambda doc: [{**doc[0], "path": "/nix/store/" + "0" * 32 + "-gone", "references": []}],
         "not in this machine's store"),
    ],
    ids=["other storeDir", "dot-dot", "absent"],
)  # fmt: skip
def test_a_closure_json_never_reaches_outside_the_store(
    closure: BuiltClosure, tmp_path: Path, forge: Any, needle: str
) -> None:
    """Untrusted input: nothing is written and the one-line error names the offending path."""
    saved = tmp_path / "forged.json"
    saved.write_text(json.dumps(forge(_path_info(closure))))
    proc = ociforge("build", "--closure-json", str(saved), f"oci:{tmp_path}/out:t")
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
