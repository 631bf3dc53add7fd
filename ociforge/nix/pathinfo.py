"""Parse ``nix path-info --json --recursive`` output of every Nix version (pure, no I/O).

Three shapes exist in the wild:

(a) Nix <= 2.18, Lix, Debian's Nix 2.8: a JSON **list** of objects, each with a ``path`` key.
    An invalid path appears as ``{"path": ..., "valid": false}``.
(b) Nix 2.19+ and ``--json-format 1`` (2.33+): an **object** keyed by full store path; an
    invalid path maps to ``null``. Since 2.33 each entry also carries ``storeDir`` and
    ``"version": 1``.
(c) ``--json-format 2`` (Nix 2.33+): ``{"version": 2, "storeDir": ..., "info": {...}}`` where
    ``info`` is keyed by store path *base names* and ``references``/``deriver`` are base names
    too. During 2.33 development ``narHash`` was briefly a structured object
    ``{"algorithm", "format", "hash"}``; we accept it and turn it into an SRI string.

Every shape becomes the same :class:`~ociforge.nix.closure.StorePathInfo` values: full paths,
self-references removed, references sorted. A ``narHash`` string is kept verbatim (its
encoding is whatever nix printed, which ``StorePathInfo`` documents); only structured hashes are
converted, always to SRI (``sha256-<base64>``), so equal input gives equal output.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ociforge.errors import NixError
from ociforge.nix.closure import Closure, StorePathInfo

logger = logging.getLogger(__name__)

DEFAULT_STORE_DIR = "/nix/store"

# The versions of ``--json-format`` whose path fields we understand. Version 3 (in Nix's own
# test data) only restructured ``signatures``, which ociforge does not read.
_STRUCTURED_VERSIONS = frozenset({2, 3})

# The 2.33 release notes say format 1 "now includes storeDir at the top level", while Nix's test
# data puts it (and "version") in every entry: accept both. Store path keys always start with "/".
_METADATA_KEYS = frozenset({"storeDir", "version"})

_HASH_SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64, "blake3": 32}
_NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"


@dataclass(frozen=True)
class PathInfoDocument:
    """Everything ociforge takes from one path-info JSON document.

    ``infos`` maps full store path -> info, sorted by path. ``derivers`` maps a path to the full
    path of its ``.drv`` when nix knew it. ``store_dir`` is the document's own ``storeDir`` when
    it has one, else the directory the caller said.
    """

    store_dir: str
    infos: dict[str, StorePathInfo]
    derivers: dict[str, str] = field(default_factory=dict)


def parse_path_info(
    data: str | bytes | object, *, store_dir: str = DEFAULT_STORE_DIR
) -> dict[str, StorePathInfo]:
    """Full store path -> :class:`StorePathInfo` from any path-info JSON shape.

    ``data`` is the JSON text (``str``/``bytes``) or the already decoded value. Raises
    :class:`NixError` with a one-line message on anything malformed or unknown.
    """
    return load_path_info(data, store_dir=store_dir).infos


def load_path_info(
    data: str | bytes | object, *, store_dir: str = DEFAULT_STORE_DIR
) -> PathInfoDocument:
    """Like :func:`parse_path_info` but also returns the derivers and the store directory."""
    store_dir = store_dir.rstrip("/") or "/"
    doc = _decode(data)
    if isinstance(doc, list):
        entries, store_dir = _entries_of_list(doc), _single_store_dir(doc, store_dir)
    elif isinstance(doc, dict) and "info" in doc:
        entries, store_dir = _entries_of_structured(doc, store_dir)
    elif isinstance(doc, dict):
        entries, store_dir = _entries_of_object(doc, store_dir)
    else:
        raise NixError(
            f"path-info JSON must be a list or an object, not {type(doc).__name__}: "
            "was it produced by 'nix path-info --json'?"
        )
    infos: dict[str, StorePathInfo] = {}
    derivers: dict[str, str] = {}
    for key, raw in entries:
        path = _resolve(key, store_dir)
        if path in infos:
            raise NixError(f"path-info JSON lists {path} twice")
        infos[path], deriver = _entry(path, raw, store_dir)
        if deriver is not None:
            derivers[path] = deriver
    return PathInfoDocument(
        store_dir=store_dir, infos=dict(sorted(infos.items())), derivers=derivers
    )


def closure_from_path_info(
    infos: Mapping[str, StorePathInfo],
    roots: Sequence[str] | None = None,
    system: str | None = None,
    *,
    store_dir: str = DEFAULT_STORE_DIR,
) -> Closure:
    """Check that ``infos`` is closed under references and make a :class:`Closure` of it.

    ``roots`` default to the paths no other path references, sorted. With explicit roots only
    their closure is kept (a saved ``path-info --all`` would otherwise end up in the image).
    """
    if not infos:
        raise NixError("path-info listed no store paths: nothing to put in an image")
    for path, info in infos.items():
        for ref in info.references:
            if ref not in infos:
                raise NixError(
                    f"{path} references {ref}, which is missing from the path-info data "
                    "(was it produced with --recursive?)"
                )
    if roots is None:
        referenced = {ref for info in infos.values() for ref in info.references}
        root_list = sorted(p for p in infos if p not in referenced)
        if not root_list:
            raise NixError("every path is referenced by another (a reference cycle?): give roots")
    else:
        root_list = list(dict.fromkeys(roots))
        if not root_list:
            raise NixError("no roots given for the closure")
        for root in root_list:
            if root not in infos:
                raise NixError(f"root {root} is not in the path-info data")
    keep = _reachable(infos, root_list)
    if len(keep) != len(infos):
        logger.debug("dropping %d paths not reachable from the roots", len(infos) - len(keep))
    paths = {p: infos[p] for p in sorted(keep)}
    return Closure(roots=tuple(root_list), paths=paths, system=system, store_dir=store_dir)


def hash_to_sri(value: object) -> str:
    """A structured hash ``{"algorithm", "format", "hash"}`` (or an SRI string) as SRI.

    ``format`` may be ``base16``, ``base64``, ``nix32`` (alias ``base32``) or ``sri``.
    """
    if isinstance(value, str):
        name, sep, b64 = value.partition("-")
        if not sep or name not in _HASH_SIZES:
            raise NixError(f"not an SRI hash: {value!r}")
        return _to_sri(name, "base64", b64)
    if not isinstance(value, dict):
        raise NixError(f"a hash must be a string or an object, not {type(value).__name__}")
    algorithm, fmt, digest = value.get("algorithm"), value.get("format"), value.get("hash")
    if not (isinstance(algorithm, str) and isinstance(fmt, str) and isinstance(digest, str)):
        raise NixError(f"hash object needs string 'algorithm', 'format' and 'hash': {value!r}")
    return _to_sri(algorithm, fmt, digest)


def nix32_decode(text: str) -> bytes:
    """Decode Nix's base-32 (the ``1b8m03r6...`` in store paths and old hashes)."""
    size = len(text) * 5 // 8
    out = bytearray(size)
    for n, char in enumerate(reversed(text)):
        digit = _NIX32_ALPHABET.find(char)
        if digit < 0:
            raise NixError(f"invalid character {char!r} in Nix base-32 hash {text!r}")
        bit = n * 5
        i, j = divmod(bit, 8)
        out[i] |= (digit << j) & 0xFF
        carry = digit >> (8 - j)
        if i + 1 < size:
            out[i + 1] |= carry
        elif carry:
            raise NixError(f"Nix base-32 hash {text!r} has excess bits")
    return bytes(out)


# --- shapes -------------------------------------------------------------------------------


def _decode(data: str | bytes | object) -> object:
    if not isinstance(data, (str, bytes, bytearray)):
        return data
    try:
        # Nix writes UTF-8; a BOM can only come from an editor, so it is tolerated.
        text = data if isinstance(data, str) else bytes(data).decode("utf-8-sig")
        return json.loads(text)
    except UnicodeDecodeError as e:
        raise NixError(f"path-info output is not UTF-8: {e}") from None
    except json.JSONDecodeError as e:
        raise NixError(f"path-info output is not valid JSON: {e}") from None


def _entries_of_list(doc: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    entries = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise NixError(f"path-info list item {i} is not an object with a 'path' string")
        if item.get("valid") is False:
            raise NixError(f"{item['path']} is not a valid store path (not built or not present)")
        entries.append((item["path"], item))
    return entries


def _entries_of_object(
    doc: dict[str, Any], store_dir: str
) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    entries = []
    for key, value in doc.items():
        if key in _METADATA_KEYS and not isinstance(value, dict):
            continue  # read by _single_store_dir / ignored
        if value is None:
            raise NixError(f"{key} is not a valid store path (not built or not present)")
        if not isinstance(value, dict):
            raise NixError(f"path-info entry {key} is not an object")
        entries.append((key, value))
    items: list[object] = [v for k, v in doc.items() if k not in _METADATA_KEYS]
    if isinstance(doc.get("storeDir"), str):
        items.append({"storeDir": doc["storeDir"]})
    return entries, _single_store_dir(items, store_dir)


def _entries_of_structured(
    doc: dict[str, Any], store_dir: str
) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    version = doc.get("version")
    if version not in _STRUCTURED_VERSIONS:
        raise NixError(
            f"unsupported path-info JSON version {version!r} (ociforge reads --json-format 1 and 2)"
        )
    doc_store_dir = doc.get("storeDir", store_dir)
    if not isinstance(doc_store_dir, str) or not doc_store_dir.startswith("/"):
        raise NixError(f"path-info JSON has an invalid storeDir {doc_store_dir!r}")
    info = doc["info"]
    if not isinstance(info, dict):
        raise NixError("path-info JSON 'info' is not an object")
    entries, _ = _entries_of_object(info, doc_store_dir)
    return entries, doc_store_dir.rstrip("/") or "/"


def _single_store_dir(items: Sequence[object], default: str) -> str:
    # Nix 2.33 writes storeDir into every entry of format 1; older versions never do.
    dirs = {item["storeDir"] for item in items if isinstance(item, dict) and "storeDir" in item}
    if not dirs:
        return default
    if len(dirs) > 1 or not all(isinstance(d, str) and d.startswith("/") for d in dirs):
        raise NixError(f"path-info JSON has inconsistent storeDir values: {sorted(map(str, dirs))}")
    return str(dirs.pop()).rstrip("/") or "/"


# --- entries ------------------------------------------------------------------------------


def _entry(path: str, raw: dict[str, Any], store_dir: str) -> tuple[StorePathInfo, str | None]:
    raw_hash = raw.get("narHash")
    if isinstance(raw_hash, dict):
        nar_hash = hash_to_sri(raw_hash)
    elif isinstance(raw_hash, str) and raw_hash:
        nar_hash = raw_hash
    else:
        raise NixError(f"path-info entry {path} has no narHash string")
    nar_size = raw.get("narSize")
    if isinstance(nar_size, bool) or not isinstance(nar_size, int) or nar_size < 0:
        raise NixError(f"path-info entry {path} has no valid narSize: {nar_size!r}")
    refs = raw.get("references", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise NixError(f"path-info entry {path} has 'references' that is not a list of strings")
    references = tuple(sorted({_resolve(r, store_dir) for r in refs} - {path}))
    deriver = raw.get("deriver")
    if deriver is not None and not isinstance(deriver, str):
        raise NixError(f"path-info entry {path} has a deriver that is not a string")
    info = StorePathInfo(path=path, nar_hash=nar_hash, nar_size=nar_size, references=references)
    return info, _resolve(deriver, store_dir) if deriver else None


def _resolve(name: str, store_dir: str) -> str:
    """Full store path of ``name`` (a full path or a base name, as format 2 writes them)."""
    if name.startswith("/"):
        parent, _, base = name.rpartition("/")
        if (parent or "/") != store_dir or not base:
            raise NixError(f"{name} is not a store path directly under {store_dir}")
        return name
    if not name or "/" in name or name in {".", ".."}:
        raise NixError(f"{name!r} is not a store path base name")
    return f"{store_dir.rstrip('/')}/{name}"


def _reachable(infos: Mapping[str, StorePathInfo], roots: Sequence[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        path = stack.pop()
        if path not in seen:
            seen.add(path)
            stack.extend(infos[path].references)
    return seen


# --- hashes -------------------------------------------------------------------------------


def _to_sri(algorithm: str, fmt: str, digest: str) -> str:
    size = _HASH_SIZES.get(algorithm)
    if size is None:
        raise NixError(f"unknown hash algorithm {algorithm!r}")
    try:
        if fmt == "base16":
            raw = bytes.fromhex(digest)
        elif fmt in {"nix32", "base32"}:
            raw = nix32_decode(digest)
        elif fmt == "base64":
            raw = base64.b64decode(digest, validate=True)
        elif fmt == "sri":
            return hash_to_sri(digest)
        else:
            raise NixError(f"unknown hash format {fmt!r}")
    except (ValueError, binascii.Error):
        raise NixError(f"{algorithm} hash {digest!r} is not valid {fmt}") from None
    if len(raw) != size:
        raise NixError(f"{algorithm} hash {digest!r} has {len(raw)} bytes, expected {size}")
    return f"{algorithm}-{base64.b64encode(raw).decode('ascii')}"
