"""The Nix database of an image: Nix itself reads it, and it is the same bytes every time."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from ociforge.errors import NixError, UsageError
from ociforge.nix.nixdb import make_nix_db
from tests.support.nixstore import BuiltClosure, Package, busybox_package, make_closure

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def closure(tmp_path_factory: pytest.TempPathFactory) -> BuiltClosure:
    tmp = tmp_path_factory.mktemp("nixdb")
    return make_closure(
        tmp,
        [
            busybox_package(),
            # References busybox and itself (its script names its own store path).
            Package(
                "greeter",
                {"bin/greet": "#!@busybox@/bin/sh\necho hi from @out@\n"},
                deps=("busybox",),
            ),
        ],
    )


def nix_store(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nix-store", *args], capture_output=True, text=True, check=False, timeout=60
    )


def image_root(tmp_path: Path, sqlite: bytes, schema: bytes, paths: list[str]) -> Path:
    """What the image's /nix looks like: the store paths and the two database files."""
    root = tmp_path / "image"
    db = root / "nix/var/nix/db"
    db.mkdir(parents=True)
    (db / "db.sqlite").write_bytes(sqlite)
    (db / "schema").write_bytes(schema)
    for path in paths:
        shutil.copytree(path, root / path.lstrip("/"), symlinks=True)
    return root


def test_the_same_closure_gives_the_same_bytes_whatever_the_order(closure: BuiltClosure) -> None:
    paths = list(closure.paths.values())
    first = make_nix_db(paths)
    second = make_nix_db(list(reversed(paths)))
    assert first.sqlite == second.sqlite
    assert first.schema == b"10"
    assert first.paths == tuple(sorted(paths))
    assert first.sqlite.startswith(b"SQLite format 3\x00")


def test_times_are_fixed_and_ids_follow_the_path_order(
    closure: BuiltClosure, tmp_path: Path
) -> None:
    db = make_nix_db(list(closure.paths.values()), registration_time=42)
    file = tmp_path / "db.sqlite"
    file.write_bytes(db.sqlite)
    con = sqlite3.connect(file)
    try:
        times = {row[0] for row in con.execute("SELECT registrationTime FROM ValidPaths")}
        rows = con.execute("SELECT id, path FROM ValidPaths ORDER BY id").fetchall()
        journal = con.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        con.close()
    assert times == {42}
    assert [path for _, path in rows] == sorted(closure.paths.values())
    assert [i for i, _ in rows] == list(range(1, len(rows) + 1))
    assert journal == "delete"  # one self-contained file, no -wal beside it


def test_nix_reads_the_database_in_an_image_root(closure: BuiltClosure, tmp_path: Path) -> None:
    paths = list(closure.paths.values())
    db = make_nix_db(paths)
    root = image_root(tmp_path, db.sqlite, db.schema, paths)
    store = f"local?root={root}"
    greeter = closure["greeter"]
    refs = nix_store("--store", store, "-q", "--references", greeter)
    assert refs.returncode == 0, refs.stderr
    host_refs = nix_store("-q", "--references", greeter)
    assert sorted(refs.stdout.split()) == sorted(host_refs.stdout.split())
    assert closure["busybox"] in refs.stdout.split()
    for path in paths:
        verified = nix_store("--store", store, "--verify-path", path)
        assert verified.returncode == 0, verified.stderr


def test_a_modified_path_fails_verification(closure: BuiltClosure, tmp_path: Path) -> None:
    greeter = closure["greeter"]
    db = make_nix_db(list(closure.paths.values()))
    root = image_root(tmp_path, db.sqlite, db.schema, [greeter])
    script = root / greeter.lstrip("/") / "bin" / "greet"
    script.chmod(0o644)
    script.write_text("#!/bin/sh\necho tampered\n")
    verified = nix_store("--store", f"local?root={root}", "--verify-path", greeter)
    assert verified.returncode != 0
    assert "was modified" in verified.stderr


def test_a_path_missing_from_the_host_store_is_a_nix_error() -> None:
    with pytest.raises(NixError, match="nix-store --dump-db failed"):
        make_nix_db(["/nix/store/00000000000000000000000000000000-not-there"])


def test_an_empty_path_list_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="non-empty"):
        make_nix_db([])
