"""A Nix database registering a closure, for images that run Nix themselves.

A Nix inside the image only trusts store paths its database lists: without one, ``nix build``
in a CI job re-fetches or rebuilds everything and ``nix-store --verify-path`` fails. The
database is made by Nix itself, then canonicalised:

1. ``nix-store --dump-db PATHS`` on the host prints each path's registration (NAR hash, size,
   deriver, references incl. self-references) from the host's own database;
2. ``nix-store --store local?root=TMP --load-db`` registers them in a throw-away store, so the
   tables and the schema are exactly what this Nix writes (schema version 10 since Nix 2.0;
   later changes are named migrations a newer Nix applies itself on first open, as root);
3. Python's sqlite3 makes the file depend only on the closure: ``registrationTime`` (the load
   time) is set to a fixed value, row ids are renumbered in path order (the ids Nix assigns
   follow its insertion order, which differs between versions), and ``VACUUM INTO`` writes a
   fresh, compact file whose header counters start from scratch. The result is in rollback
   journal mode, so it is one self-contained file; Nix switches it to WAL when it opens it.

Determinism: the same closure, Nix schema and SQLite library give the same bytes (SQLite
records its own version number in the header, so another Python build may differ). Signatures
and content-address claims are not carried (``--dump-db`` does not print them); they only
matter when copying paths to a store that requires signatures.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ociforge.errors import NixError, UsageError
from ociforge.nix.runner import summarize_nix_stderr

__all__ = ["DB_DIR", "NixDatabase", "make_nix_db"]

logger = logging.getLogger(__name__)

DB_DIR = "/nix/var/nix/db"  # where the files go in the image (for the default store dir)
_KNOWN_TABLES = frozenset({"ValidPaths", "Refs", "DerivationOutputs", "sqlite_sequence"})


@dataclass(frozen=True)
class NixDatabase:
    """The two files of ``/nix/var/nix/db`` a Nix needs to see a closure as valid."""

    sqlite: bytes  # db.sqlite
    schema: bytes  # the schema version file as this Nix writes it (b"10", no newline)
    paths: tuple[str, ...]  # the registered store paths, sorted


def make_nix_db(
    paths: Sequence[str],
    *,
    nix: str = "nix",
    registration_time: int = 1,
    extra_args: Sequence[str] = (),
) -> NixDatabase:
    """A database registering ``paths`` (a whole closure: every reference must be listed).

    The paths must be valid in the host's store (they are when ociforge built the closure
    with nix; a closure read from ``--closure-json`` alone is not enough). ``registration_time``
    replaces the load time (seconds since the epoch; default 1, like the tar mtime).
    """
    if isinstance(paths, str) or not paths:
        raise UsageError("a Nix database needs a non-empty list of store paths")
    if isinstance(registration_time, bool) or registration_time < 0:
        raise UsageError(f"registration time must be >= 0, got {registration_time!r}")
    ordered = sorted(set(paths))
    argv0 = _nix_store(nix)
    dump = _run(argv0, ["--dump-db", *extra_args, *ordered], b"", "nix-store --dump-db")
    with tempfile.TemporaryDirectory(prefix="ociforge-nixdb-") as tmp:
        store = ["--store", f"local?root={tmp}", *extra_args]
        _run(argv0, [*store, "--load-db"], dump, "nix-store --load-db")
        db_dir = Path(tmp, DB_DIR.lstrip("/"))
        try:
            schema = (db_dir / "schema").read_bytes()
        except OSError as exc:
            raise NixError(f"nix-store --load-db wrote no schema file: {exc.strerror}") from None
        out = Path(tmp, "canonical.sqlite")
        _canonicalise(db_dir / "db.sqlite", out, registration_time, len(ordered))
        data = out.read_bytes()
    logger.debug("nix database: %d paths, %d bytes", len(ordered), len(data))
    return NixDatabase(sqlite=data, schema=schema, paths=tuple(ordered))


def _nix_store(nix: str) -> tuple[str, str]:
    """(executable, argv[0]) for nix-store: Nix is one binary that dispatches on argv[0]."""
    found = shutil.which(nix)
    if found is None:
        raise NixError(f"{nix} not found: install Nix (https://nixos.org/download)")
    sibling = os.path.join(os.path.dirname(found), "nix-store")
    if os.access(sibling, os.X_OK):
        return sibling, sibling
    return found, "nix-store"


def _run(argv0: tuple[str, str], args: Sequence[str], stdin: bytes, what: str) -> bytes:
    executable, name = argv0
    try:
        proc = subprocess.run(
            [name, *args], executable=executable, input=stdin, capture_output=True, check=False
        )
    except OSError as exc:
        raise NixError(f"cannot run {executable}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace")
        raise NixError(f"{what} failed: {summarize_nix_stderr(stderr)}")
    return proc.stdout


def _canonicalise(source: Path, dest: Path, registration_time: int, expected: int) -> None:
    try:
        con = sqlite3.connect(source, isolation_level=None)
    except sqlite3.Error as exc:
        raise NixError(f"cannot open the Nix database nix-store wrote: {exc}") from None
    try:
        count = con.execute("SELECT count(*) FROM ValidPaths").fetchone()[0]
        if count != expected:
            raise NixError(f"nix-store --load-db registered {count} paths, not {expected}")
        con.execute("BEGIN")
        con.execute("UPDATE ValidPaths SET registrationTime = ?", (registration_time,))
        if _only_known_tables(con):
            _renumber(con)
        con.execute("COMMIT")
        con.execute("VACUUM INTO ?", (str(dest),))
    except sqlite3.Error as exc:
        raise NixError(f"cannot canonicalise the Nix database: {exc}") from None
    finally:
        con.close()


def _only_known_tables(con: sqlite3.Connection) -> bool:
    """Renumbering is safe only when no other table refers to ValidPaths ids."""
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for name in names:
        if name in _KNOWN_TABLES:
            continue
        if con.execute(f'SELECT 1 FROM "{name}" LIMIT 1').fetchone() is not None:  # noqa: S608
            logger.info("Nix database table %s has rows: keeping Nix's own row ids", name)
            return False
    return True


def _renumber(con: sqlite3.Connection) -> None:
    """Give ValidPaths ids 1..n in path order and rewrite every column that holds one.

    Negative ids first so no intermediate state collides with an existing id or key.
    """
    rows = con.execute("SELECT id FROM ValidPaths ORDER BY path").fetchall()
    new_ids = {old: n for n, (old,) in enumerate(rows, start=1)}
    con.executemany("UPDATE ValidPaths SET id = ? WHERE id = ?", _negated(new_ids))
    con.executemany("UPDATE Refs SET referrer = ? WHERE referrer = ?", _negated(new_ids))
    con.executemany("UPDATE Refs SET reference = ? WHERE reference = ?", _negated(new_ids))
    con.executemany("UPDATE DerivationOutputs SET drv = ? WHERE drv = ?", _negated(new_ids))
    con.execute("UPDATE ValidPaths SET id = -id")
    con.execute("UPDATE Refs SET referrer = -referrer, reference = -reference")
    con.execute("UPDATE DerivationOutputs SET drv = -drv")
    con.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'ValidPaths'", (len(rows),))


def _negated(new_ids: dict[int, int]) -> list[tuple[int, int]]:
    return [(-new, old) for old, new in new_ids.items()]
