"""The builder of every benchmark store path: turns a small JSON spec into files, inside nix.

This file is copied into the store with ``builtins.toFile`` and run by the host's python3 as the
derivation's builder (``builder = "/usr/bin/python3"``, which works because the sandbox is off).
It must stay standard-library only and self-contained: it runs with an empty environment, and
its text is part of every derivation's hash (editing it rebuilds every benchmark closure).

Environment: ``out`` (the output path), ``deps`` (the dependencies' store paths, space
separated, in the spec's order), ``specPath`` (the spec, passed with ``passAsFile``).

Spec: ``{"entries": [ENTRY, ...]}``, each entry a JSON array:

    ["f", path, kind, size, key, executable, prefix]  generated content (see below)
    ["t", path, text, executable]                      literal text
    ["l", path, target]                                a symlink
    ["g", dir, count, min_size, max_size, key, per_dir]  ``count`` tiny text files under dir
    ["d", path]                                        an empty directory

``text``, ``prefix`` and symlink targets may hold ``@out@`` (this output) and ``@dep:N@`` (the
N-th dependency): that is how store paths, and so Nix references, get into the output.

Content is a pure function of (kind, key, size, prefix): files given the same key in different
store paths are byte-identical (what ``nix-store --optimise`` would hard-link). Randomness comes
from SHAKE-128, never from ``random`` or ``/dev/urandom``, so every machine and Python version
writes the same bytes. Kinds:

- ``bin``: machine-code-like bytes compressing about 2.6x with gzip and 2.9x with zstd, like
  real shared objects: per 64 KiB, 15% random bytes, 75% a stream of short "instructions"
  drawn from a per-file set of 256 snippets (what LZ matching finds in real code), 10% zeros;
- ``c``, ``py``, ``doc``: text from a 256-token vocabulary of the language (3-4x with gzip).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterator

CHUNK = 1 << 16
_RANDOM_SHARE = 0.15
_ZERO_SHARE = 0.10
_PLACEHOLDER = re.compile(r"@(out|dep:[0-9]+)@")

# Space-separated words of each text kind.
_WORDS: dict[str, str] = {
    "c": (
        "int char const static inline struct unsigned size_t void return if else for while"
        " typedef #define #include NULL uint32_t uint64_t extern enum buffer length flags ctx"
        " state error handle config ( ) { } ; * -> == 0 1"
    ),
    "py": (
        "def class self return import from if else elif for in not None True False with as"
        " try except raise value name path data result options kwargs args ( ) : = == , ."
        " [ ] len isinstance str dict list yield"
    ),
    "doc": (
        "the of and to a in is for that with this on library function returns option file"
        " default value see version use may be are by not or an can when which user"
        " configuration example directory program error data set"
    ),
}
_SEPARATORS = (" ", " ", " ", "\n", "\n    ", ", ", "_", "")


@functools.cache
def vocabulary(kind: str) -> tuple[bytes, ...]:
    """256 tokens for a text kind: its words joined with separators, always in the same order."""
    words = _WORDS[kind].split()
    tokens = [(w + _SEPARATORS[i % len(_SEPARATORS)]).encode() for i, w in enumerate(words)]
    i = 0
    while len(tokens) < 256:
        w = words[i % len(words)]
        sep = _SEPARATORS[(i // len(words) + i) % len(_SEPARATORS)]
        tokens.append((w + sep).encode())
        i += 1
    return tuple(tokens)


def _stream(key: str, label: str, size: int) -> bytes:
    return hashlib.shake_128(f"{label}\0{key}".encode()).digest(size)


def text_bytes(kind: str, key: str, size: int) -> bytes:
    """``size`` bytes of ``kind`` text, a pure function of (kind, key, size)."""
    tokens = vocabulary(kind)
    out = b""
    round_ = 0
    while len(out) < size:
        # Tokens average over 4 bytes, so size // 3 + 16 random bytes nearly always suffice.
        picks = _stream(key, f"text-{kind}-{size}-{round_}", size // 3 + 16)
        out += b"".join(map(tokens.__getitem__, picks))
        round_ += 1
    return out[:size]


def _snippets(key: str) -> list[bytes]:
    raw = _stream(key, "snippets", 256 * 16)
    return [raw[i * 16 : i * 16 + 3 + raw[i * 16] % 10] for i in range(256)]


def binary_chunks(key: str, size: int, prefix: bytes = b"") -> Iterator[bytes]:
    """``size`` bytes of machine-code-like content (see the module docstring), in chunks."""
    snippets = _snippets(key)
    n_random = int(CHUNK * _RANDOM_SHARE)
    n_zero = int(CHUNK * _ZERO_SHARE)
    n_code = CHUNK - n_random - n_zero
    written = 0
    if prefix:
        yield prefix[:size]
        written = min(len(prefix), size)
    index = 0
    while written < size:
        rnd = hashlib.shake_128(f"bin\0{key}\0{index}".encode()).digest(n_random + n_code // 4)
        code = b"".join(map(snippets.__getitem__, rnd[n_random:]))[:n_code]
        chunk = (rnd[:n_random] + code + bytes(n_zero + n_code - len(code)))[: size - written]
        yield chunk
        written += len(chunk)
        index += 1


def expand(text: str, out: str, deps: list[str]) -> str:
    """Replace ``@out@`` and ``@dep:N@`` with store paths."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        return out if name == "out" else deps[int(name[4:])]

    return _PLACEHOLDER.sub(one, text)


def _open(root: str, rel: str) -> str:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def _write(path: str, chunks: Iterator[bytes] | list[bytes], executable: bool) -> None:
    with open(path, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    os.chmod(path, 0o555 if executable else 0o444)


def _generated(kind: str, key: str, size: int, prefix: bytes) -> Iterator[bytes]:
    if kind == "bin":
        yield from binary_chunks(key, size, prefix)
    else:
        yield (prefix + text_bytes(kind, key, max(0, size - len(prefix))))[:size]


def _group(root: str, entry: list[object]) -> None:
    """Many tiny text files, named and sized from the key alone (keeps specs small)."""
    rel, key = str(entry[1]), str(entry[5])
    count, lo, hi, per_dir = (int(str(v)) for v in (entry[2], entry[3], entry[4], entry[6]))
    sizes = _stream(key, "group-sizes", 2 * count)
    for i in range(count):
        size = lo + int.from_bytes(sizes[2 * i : 2 * i + 2], "little") % (hi - lo + 1)
        name = f"d{i // per_dir:04d}/f{i:06d}.txt"
        content = text_bytes("doc", f"{key}/{i}", size)
        _write(_open(root, f"{rel}/{name}"), [content], executable=False)


def materialise(spec: dict[str, list[list[object]]], out: str, deps: list[str]) -> None:
    """Create every entry of ``spec`` under ``out``."""
    os.makedirs(out, exist_ok=True)
    for entry in spec["entries"]:
        tag, rel = entry[0], str(entry[1])
        if tag == "f":
            kind, size, key, executable, prefix = entry[2:7]
            data = expand(str(prefix), out, deps).encode()
            chunks = _generated(str(kind), str(key), int(str(size)), data)
            _write(_open(out, rel), chunks, bool(executable))
        elif tag == "t":
            text = expand(str(entry[2]), out, deps).encode()
            _write(_open(out, rel), [text], bool(entry[3]))
        elif tag == "l":
            os.symlink(expand(str(entry[2]), out, deps), _open(out, rel))
        elif tag == "g":
            _group(out, entry)
        elif tag == "d":
            os.makedirs(os.path.join(out, rel), exist_ok=True)
        else:
            raise ValueError(f"unknown spec entry {entry!r}")


def main() -> None:
    # Lower-case names: nix exports derivation attributes under their own names.
    env = os.environ
    with open(env["specPath"], encoding="utf-8") as f:
        spec = json.load(f)
    materialise(spec, env["out"], env.get("deps", "").split())


if __name__ == "__main__":
    main()
