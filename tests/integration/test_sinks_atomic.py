"""`ociforge build` never leaves a broken image where a good one was, and says why it failed.

Real CLI runs that fail mid-way (a store path that cannot be archived, a full file system, a bad
NAME:TAG), checked with skopeo where an image should be readable. The full file system is a
512 KiB tmpfs mounted for the test (root in these sandboxes may mount one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nixstore import BuiltClosure, busybox_package, make_closure

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
OLD = b"yesterday's good archive\n"
PATH_INFO = ("nix", "--extra-experimental-features", "nix-command", "path-info", "--json")
GONE = "/nix/store/" + "0" * 32 + "-gone"


@pytest.fixture(scope="module")
def closure(tmp_path_factory: pytest.TempPathFactory) -> BuiltClosure:
    return make_closure(tmp_path_factory.mktemp("closure"), [busybox_package()])


@pytest.fixture(scope="module")
def vanished(closure: BuiltClosure, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A saved closure whose root refers to a store path that cannot be archived: it passes
    the checks made before anything is written (a store path of this store, present), and the
    build fails mid-way, on a FIFO no real store holds."""
    info = json.loads(
        subprocess.run(
            [*PATH_INFO, closure["busybox"]],
            capture_output=True,
            check=True,
        ).stdout
    )
    info[0]["references"] = [GONE]
    info.append({"path": GONE, "narHash": "sha256-" + "A" * 43 + "=", "narSize": 8})
    saved = tmp_path_factory.mktemp("vanished") / "closure.json"
    saved.write_text(json.dumps(info))
    Path(GONE).mkdir()
    os.mkfifo(Path(GONE) / "pipe")
    try:
        yield saved
    finally:
        shutil.rmtree(GONE)


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def ociforge(*args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "ociforge", "build", *args],
        cwd=REPO,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=300,  # a guard against a hang (the FIFO case), not an assertion
        check=False,
    )
    err = proc.stderr.decode()
    if proc.returncode != 0:  # every failure is one error line (the last), without a traceback
        errors = [line for line in err.splitlines() if line.startswith("ociforge: error: ")]
        assert len(errors) == 1 and err.strip().endswith(errors[0]), err
        assert "Traceback" not in err, err
    return proc.returncode, err


def untouched(old: Path) -> bool:
    return old.read_bytes() == OLD  # a bool: a failing diff of a whole archive helps nobody


def skopeo_inspect(ref: str) -> dict[str, object]:
    out = subprocess.run(["skopeo", "inspect", ref], capture_output=True, check=True).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_a_failed_build_leaves_the_old_archive_untouched(vanished: Path, tmp_path: Path) -> None:
    old = tmp_path / "image.tar"
    old.write_bytes(OLD)
    code, err = ociforge("--closure-json", str(vanished), f"docker-archive:{old}")
    assert code == 4 and GONE in err
    assert untouched(old)
    assert os.listdir(tmp_path) == ["image.tar"]  # no temporary file left either


def test_a_bad_name_tag_leaves_the_old_archive_untouched(
    closure: BuiltClosure, tmp_path: Path
) -> None:
    old = tmp_path / "image.tar"
    old.write_bytes(OLD)
    code, err = ociforge(closure["busybox"], f"docker-archive:{old}:Busy/Box:1")
    assert code == 2 and "Busy/Box" in err
    assert untouched(old)


def test_a_good_build_replaces_the_old_archive(closure: BuiltClosure, tmp_path: Path) -> None:
    old = tmp_path / "image.tar"
    old.write_bytes(OLD)
    code, err = ociforge(closure["busybox"], f"docker-archive:{old}:busybox:1")
    assert code == 0, err
    assert skopeo_inspect(f"docker-archive:{old}")["Architecture"] == "amd64"
    assert os.listdir(tmp_path) == ["image.tar"]


def test_a_full_disk_is_exit_4_naming_the_archive(closure: BuiltClosure, full_fs: Path) -> None:
    old = full_fs / "image.tar"
    old.write_bytes(OLD)
    code, err = ociforge(closure["busybox"], f"docker-archive:{old}")
    assert code == 4, err
    assert f"cannot write {old}: No space left on device" in err
    assert untouched(old)
    assert os.listdir(full_fs) == ["image.tar"]


def test_a_full_device_is_exit_4_naming_it(closure: BuiltClosure) -> None:
    """A device is written in place (like stdout): it cannot be replaced atomically."""
    code, err = ociforge(closure["busybox"], "docker-archive:/dev/full")
    assert code == 4 and "cannot write /dev/full: No space left on device" in err


def test_a_full_disk_under_a_layout_is_exit_4_and_names_no_missing_blob(
    closure: BuiltClosure, full_fs: Path
) -> None:
    layout = full_fs / "oci"
    code, err = ociforge(closure["busybox"], f"oci:{layout}:t")
    assert code == 4 and str(layout) in err and "No space left on device" in err
    index = json.loads((layout / "index.json").read_bytes())
    assert index["manifests"] == []
    assert [p.name for p in (layout / "blobs" / "sha256").iterdir() if ".tmp-" in p.name] == []


def test_a_failed_first_layout_build_does_not_block_the_next(
    closure: BuiltClosure, vanished: Path, tmp_path: Path
) -> None:
    layout = tmp_path / "oci"
    code, err = ociforge("--closure-json", str(vanished), f"oci:{layout}:v1")
    assert code == 4 and GONE in err
    code, err = ociforge(closure["busybox"], f"oci:{layout}:v1")
    assert code == 0, err
    assert skopeo_inspect(f"oci:{layout}:v1")["Os"] == "linux"


def test_a_bad_layout_tag_is_refused_and_creates_nothing(
    closure: BuiltClosure, tmp_path: Path
) -> None:
    code, err = ociforge(closure["busybox"], f"oci:{tmp_path}/out:bad tag!")
    assert code == 2 and "'bad tag!'" in err
    assert os.listdir(tmp_path) == []


def test_a_directory_with_a_colon_is_written_when_it_ends_with_a_slash(
    closure: BuiltClosure, tmp_path: Path
) -> None:
    code, err = ociforge(closure["busybox"], f"oci:{tmp_path}/a:b/")
    assert code == 0, err
    index = json.loads((tmp_path / "a:b" / "index.json").read_bytes())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == [
        "latest"
    ]


def test_an_added_fifo_is_refused_naming_it(closure: BuiltClosure, tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    os.mkfifo(tmp_path / "etc" / "pipe")
    code, err = ociforge(
        closure["busybox"], f"oci:{tmp_path}/out", "--add", f"{tmp_path}/etc:/etc/app"
    )
    assert code == 2 and f"{tmp_path}/etc/pipe: is a FIFO" in err
    assert not (tmp_path / "out").exists()
