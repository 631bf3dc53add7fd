"""The deterministic tar of store paths and synthetic entries.

The reference for the format is Python's tarfile driven the way nixpkgs' stream_layered_image.py
drives it (PAX format, pathlib sort, forced metadata, hard links as regular files): our bytes must
equal its bytes. Tests use a fake store dir under tmp_path, so no nix is needed.
"""

from __future__ import annotations

import io
import itertools
import os
import pathlib
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence

import pytest

from ociforge import tarstream
from ociforge.errors import ImageError, UsageError
from ociforge.tarstream import (
    TarEntry,
    TarOptions,
    entries_tar_chunks,
    store_tar_chunks,
    store_tar_size,
)

LONG_DIR = "l" * 90
LONG_FILE = "m" * 120
LONG_TARGET = "/elsewhere/" + "t" * 200
DEFAULTS = TarOptions()


def _tarfile_writes_empty_device_fields() -> bool:
    # Current CPython tarfile (like GNU tar) leaves devmajor/devminor empty for entries
    # that are not devices; older releases wrote "0000000". We write the newer form.
    block = tarfile.TarInfo("x").tobuf(tarfile.PAX_FORMAT)
    return block[329:345] == bytes(16)


needs_current_tarfile = pytest.mark.skipif(
    not _tarfile_writes_empty_device_fields(),
    reason="this Python's tarfile writes '0000000' device fields; ours follow current tarfile",
)


def _write(path: str | bytes | pathlib.Path, data: bytes, mode: int = 0o444) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> tuple[str, list[str]]:
    """A fake store: long names, symlinks, empty and exec files, nesting, unicode, hard links."""
    store_dir = tmp_path / "store"
    app = store_dir / "aaaa-hello-1.0"
    for sub in ("bin", "share/a/b", "share/a-b", f"share/{LONG_DIR}"):
        (app / sub).mkdir(parents=True)
    _write(app / "bin" / "hello", b"#!/bin/sh\necho hi\n", 0o555)
    _write(app / "empty", b"")
    _write(app / "share" / "a" / "b" / "x", b"x" * 1000)
    _write(app / "share" / "a-b" / "y", b"y")
    _write(app / "share" / LONG_DIR / LONG_FILE, b"long name")
    _write(app / "share" / "ünïcode-ñ", "ü".encode())
    _write(os.fsencode(app / "share") + b"/not-utf8-\xff", b"raw name")
    os.link(app / "share" / "a-b" / "y", app / "share" / "hard-link")
    os.symlink("../bin/hello", app / "share" / "link")
    os.symlink(LONG_TARGET, app / "share" / "long-link")
    os.chmod(app / "share" / "a", 0o555)
    lone_file = store_dir / "bbbb-script.sh"
    _write(lone_file, b"z" * 3000, 0o555)
    lone_link = store_dir / "cccc-alias"
    os.symlink(str(app), lone_link)
    return str(store_dir), [str(app), str(lone_file), str(lone_link)]


def tarfile_reference(
    paths: Sequence[str], store_dir: str, options: TarOptions = DEFAULTS
) -> bytes:
    """What nixpkgs' archive_paths_to writes, with tarfile in PAX format."""
    buf = io.BytesIO()

    def forced(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid = options.mtime, options.uid, options.gid
        info.uname, info.gname = options.uname, options.gname
        info.name = info.name if options.relative_names else "/" + info.name
        return info

    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        prefix = ""
        for component in store_dir.strip("/").split("/"):
            prefix += "/" + component
            info = tarfile.TarInfo(prefix.lstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(forced(info))
        for path in map(pathlib.Path, paths):
            files = [path] if path.is_symlink() else itertools.chain([path], path.rglob("*"))
            for file in sorted(files):
                info = forced(tar.gettarinfo(file))
                if info.islnk():
                    info.type, info.linkname, info.size = tarfile.REGTYPE, "", file.stat().st_size
                if info.isfile():
                    with open(file, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def ours(paths: Sequence[str], store_dir: str, **kwargs: object) -> bytes:
    return b"".join(store_tar_chunks(paths, store_dir=store_dir, **kwargs))  # type: ignore[arg-type]


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


# --- byte equality with tarfile ---------------------------------------------------------------


@needs_current_tarfile
@pytest.mark.parametrize("chunk_size", [1 << 20, 10240, 1000, 512, 7])
def test_bytes_equal_tarfile_whatever_the_chunk_size(
    store: tuple[str, list[str]], chunk_size: int
) -> None:
    store_dir, paths = store
    assert ours(paths, store_dir, chunk_size=chunk_size) == tarfile_reference(paths, store_dir)


@needs_current_tarfile
@pytest.mark.parametrize(
    "options",
    [
        TarOptions(relative_names=True),
        TarOptions(mtime=1700000000, uid=1000, gid=100, uname="user", gname="users"),
        # Values that do not fit ustar fields go to PAX records, in tarfile's key order.
        TarOptions(uid=8**7, gid=2**30, uname="u" * 40, gname="grüppe", mtime=8**11 + 5),
    ],
    ids=["relative", "custom-owner", "pax-owner-and-mtime"],
)
def test_bytes_equal_tarfile_with_other_options(
    store: tuple[str, list[str]], options: TarOptions
) -> None:
    store_dir, paths = store
    assert ours(paths, store_dir, options=options) == tarfile_reference(paths, store_dir, options)


def _forced_info(name: str, mode: int, size: int = 0, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, 1
    info.uname = info.gname = "root"
    return info.tobuf(tarfile.PAX_FORMAT)


@needs_current_tarfile
def test_file_over_8_gib_gets_a_pax_size_like_tarfile(tmp_path: pathlib.Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    huge = store_dir / "dddd-huge"
    with open(huge, "wb") as handle:
        handle.truncate(9 << 30)  # sparse: only the first chunk is read below
    os.chmod(huge, 0o444)
    components = str(store_dir).strip("/").split("/")
    headers = b"".join(
        _forced_info("/" + "/".join(components[: i + 1]), 0o755, kind=tarfile.DIRTYPE)
        for i in range(len(components))
    ) + _forced_info(str(huge), 0o444, 9 << 30)
    assert b"size=9663676416" in headers
    chunks = store_tar_chunks([str(huge)], store_dir=str(store_dir), chunk_size=1 << 16)
    first = next(chunks)
    chunks.close()  # type: ignore[attr-defined]
    assert first == headers + bytes((1 << 16) - len(headers))
    end = len(headers) + (9 << 30) + 1024
    assert store_tar_size([str(huge)], store_dir=str(store_dir)) == end + -end % 10240


# --- what a reader of the tar sees ------------------------------------------------------------


def test_read_back_with_tarfile(store: tuple[str, list[str]]) -> None:
    store_dir, paths = store
    data = ours(paths, store_dir)
    by_name = {m.name: m for m in members(data)}
    app = paths[0]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for name, content, mode in [
            (f"{app}/bin/hello", b"#!/bin/sh\necho hi\n", 0o555),
            (f"{app}/empty", b"", 0o444),
            (f"{app}/share/{LONG_DIR}/{LONG_FILE}", b"long name", 0o444),
            (f"{app}/share/ünïcode-ñ", "ü".encode(), 0o444),
            (os.fsdecode(os.fsencode(f"{app}/share/not-utf8-") + b"\xff"), b"raw name", 0o444),
            (f"{app}/share/hard-link", b"y", 0o444),  # a regular file, not a hard link entry
            (paths[1], b"z" * 3000, 0o555),
        ]:
            member = by_name[name]
            assert member.isreg(), name
            assert member.mode == mode, name
            extracted = tar.extractfile(member)
            assert extracted is not None
            assert extracted.read() == content, name
    assert by_name[f"{app}/share/link"].issym()
    assert by_name[f"{app}/share/link"].linkname == "../bin/hello"
    assert by_name[f"{app}/share/long-link"].linkname == LONG_TARGET
    assert by_name[paths[2]].linkname == app
    assert by_name[f"{app}/share/a"].isdir()
    assert by_name[f"{app}/share/a"].mode == 0o555
    for member in by_name.values():
        assert (member.mtime, member.uid, member.gid) == (1, 0, 0)
        assert (member.uname, member.gname) == ("root", "root")


def test_store_dir_components_first_then_paths_in_given_order(
    store: tuple[str, list[str]],
) -> None:
    store_dir, paths = store
    names = [m.name for m in members(ours(list(reversed(paths)), store_dir))]
    components = store_dir.strip("/").split("/")
    expected_prefix = ["/" + "/".join(components[: i + 1]) for i in range(len(components))]
    assert names[: len(components)] == expected_prefix
    assert all(m.mode == 0o755 for m in members(ours([], store_dir)))
    rest = names[len(components) :]
    assert rest[0] == paths[2] and rest[1] == paths[1] and rest[2] == paths[0]


def test_contents_sorted_by_path_component_not_string(store: tuple[str, list[str]]) -> None:
    store_dir, paths = store
    names = [m.name for m in members(ours(paths[:1], store_dir))]
    app = paths[0]
    # "/" sorts after "-" as a character, but a directory's contents come before its siblings.
    assert names.index(f"{app}/share/a/b/x") < names.index(f"{app}/share/a-b")
    assert names.index(f"{app}/bin/hello") < names.index(f"{app}/empty")


def test_relative_names(store: tuple[str, list[str]]) -> None:
    store_dir, paths = store
    names = [
        m.name for m in members(ours(paths, store_dir, options=TarOptions(relative_names=True)))
    ]
    assert names[0] == store_dir.strip("/").split("/")[0]
    assert not any(name.startswith("/") for name in names)
    assert paths[1].lstrip("/") in names


def test_end_of_archive_padding(store: tuple[str, list[str]]) -> None:
    store_dir, paths = store
    data = ours(paths, store_dir)
    assert len(data) % 10240 == 0
    assert data[-1024:] == bytes(1024)


# --- determinism, size, chunking ---------------------------------------------------------------


def _build_tree(root: pathlib.Path, order: Sequence[str]) -> None:
    root.mkdir(parents=True)
    for name in order:
        _write(root / name, name.encode())


def test_identical_input_gives_identical_bytes_whatever_the_creation_order(
    tmp_path: pathlib.Path,
) -> None:
    store_dir = tmp_path / "store"
    app = store_dir / "eeee-app"
    names = [f"f{i:03d}" for i in range(200)]
    _build_tree(app, names)
    first = ours([str(app)], str(store_dir))
    assert ours([str(app)], str(store_dir)) == first
    for name in names:
        os.unlink(app / name)
    app.rmdir()
    _build_tree(app, list(reversed(names)))  # another directory order on disk
    assert ours([str(app)], str(store_dir)) == first


def test_size_from_metadata_equals_stream_length(store: tuple[str, list[str]]) -> None:
    store_dir, paths = store
    for options in (TarOptions(), TarOptions(relative_names=True, uid=8**8)):
        expected = len(ours(paths, store_dir, options=options))
        assert store_tar_size(paths, store_dir=store_dir, options=options) == expected
    assert store_tar_size([], store_dir=store_dir) == 10240


def test_chunks_are_coalesced_and_exactly_sized(tmp_path: pathlib.Path) -> None:
    store_dir = tmp_path / "store"
    app = store_dir / "ffff-many"
    _build_tree(app, [f"small-{i}" for i in range(300)])
    _write(app / "zbig", os.urandom(300_000))
    chunks = list(store_tar_chunks([str(app)], store_dir=str(store_dir), chunk_size=65536))
    assert all(len(chunk) == 65536 for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= 65536
    total = sum(map(len, chunks))
    assert len(chunks) == -(-total // 65536)  # 300 tiny files do not make 300 chunks


def test_arguments_are_checked_before_iteration(tmp_path: pathlib.Path) -> None:
    store_dir = str(tmp_path / "store")
    with pytest.raises(UsageError, match="directly inside"):
        store_tar_chunks([f"{store_dir}/aaaa-x/sub"], store_dir=store_dir)
    with pytest.raises(UsageError, match="directly inside"):
        store_tar_chunks(["/elsewhere/aaaa-x"], store_dir=store_dir)
    with pytest.raises(UsageError, match="twice"):
        store_tar_chunks([f"{store_dir}/a", f"{store_dir}/a"], store_dir=store_dir)
    for bad_store_dir in ("relative/store", "/", "//nix", "/nix/store/"):
        with pytest.raises(UsageError, match="store dir"):
            store_tar_chunks([], store_dir=bad_store_dir)
    with pytest.raises(UsageError, match="one string"):
        store_tar_chunks(f"{store_dir}/a", store_dir=store_dir)
    with pytest.raises(UsageError, match="chunk size"):
        store_tar_chunks([], store_dir=store_dir, chunk_size=0)
    with pytest.raises(UsageError, match="uid"):
        TarOptions(uid=-1)


# --- errors ------------------------------------------------------------------------------------


def test_fifo_is_an_error_naming_it(tmp_path: pathlib.Path) -> None:
    store_dir = tmp_path / "store"
    app = store_dir / "gggg-odd"
    app.mkdir(parents=True)
    os.mkfifo(app / "pipe")
    with pytest.raises(ImageError, match=r"gggg-odd/pipe: is a fifo"):
        ours([str(app)], str(store_dir))
    with pytest.raises(ImageError, match=r"gggg-odd/pipe: is a fifo"):
        store_tar_size([str(app)], store_dir=str(store_dir))


def test_missing_store_path_is_an_image_error(tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "store" / "hhhh-gone")
    with pytest.raises(ImageError, match="hhhh-gone"):
        ours([missing], str(tmp_path / "store"))


def _stream_until_header_of(name: str, chunks: Iterator[bytes]) -> None:
    for chunk in chunks:
        if name.encode() in chunk:
            return
    raise AssertionError(f"{name} never appeared")


@pytest.mark.parametrize("change", [b"grown", None], ids=["grows", "shrinks"])
def test_file_changing_size_while_archived_is_an_error(
    tmp_path: pathlib.Path, change: bytes | None
) -> None:
    store_dir = tmp_path / "store"
    app = store_dir / "iiii-app"
    app.mkdir(parents=True)
    victim = app / "victim"
    _write(victim, b"v" * 5000, 0o644)
    # 512-byte chunks: the header is handed out (after lstat) before the content is read.
    chunks = store_tar_chunks([str(app)], store_dir=str(store_dir), chunk_size=512)
    _stream_until_header_of("iiii-app/victim", chunks)
    with open(victim, "ab" if change else "r+b") as handle:
        if change:
            handle.write(change)
        else:
            handle.truncate(100)
    with pytest.raises(ImageError, match="victim: file changed size"):
        list(chunks)


def _fstat_then(
    victim: pathlib.Path, action: Callable[[], object]
) -> Callable[[int], os.stat_result]:
    """An os.fstat that runs ``action`` right after it has looked at ``victim``."""
    real_fstat = os.fstat
    victim_inode = victim.stat().st_ino

    def fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if st.st_ino == victim_inode:
            action()
        return st

    return fstat


@pytest.mark.parametrize("size", [100, 5000])
@pytest.mark.parametrize("change", [b"grown", None], ids=["grows", "shrinks"])
def test_small_file_changing_size_after_stat_is_an_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, change: bytes | None, size: int
) -> None:
    store_dir = tmp_path / "store"
    app = store_dir / "jjjj-app"
    app.mkdir(parents=True)
    victim = app / "victim"
    _write(victim, b"v" * size, 0o644)
    after = b"v" * size + change if change else b"v"
    monkeypatch.setattr(os, "fstat", _fstat_then(victim, lambda: victim.write_bytes(after)))
    # The default chunk size: the whole entry fits in the chunk buffer (the hot path).
    with pytest.raises(ImageError, match=f"jjjj-app/victim: file changed size.*{size} bytes"):
        ours([str(app)], str(store_dir))


def test_file_replaced_by_a_directory_is_an_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir = tmp_path / "store"
    app = store_dir / "jjjj-app"
    app.mkdir(parents=True)
    victim = app / "victim"
    _write(victim, b"v", 0o644)
    real_fstat = os.fstat
    inode = victim.stat().st_ino
    # The listing said "file"; what is opened turns out to be a directory.
    monkeypatch.setattr(
        os, "fstat", lambda fd: os.stat(app) if real_fstat(fd).st_ino == inode else real_fstat(fd)
    )
    with pytest.raises(ImageError, match="jjjj-app/victim: changed type while being archived"):
        ours([str(app)], str(store_dir))


# --- the fast path's edges: every entry must still equal tarfile's -----------------------------

BOUNDARY_SIZES = [0, 1, 511, 512, 513, 1024, 4095, 65024, 65535, 65536, 65537, 70000]


@needs_current_tarfile
@pytest.mark.parametrize("chunk_size", [1 << 20, 66560, 1536, 513])
def test_sizes_at_block_and_packing_boundaries(tmp_path: pathlib.Path, chunk_size: int) -> None:
    store_dir = tmp_path / "store"
    app = store_dir / "kkkk-sizes"
    app.mkdir(parents=True)
    for size in BOUNDARY_SIZES:
        _write(app / f"f{size:06d}", os.urandom(size), 0o444 if size % 2 else 0o555)
    data = ours([str(app)], str(store_dir), chunk_size=chunk_size)
    assert data == tarfile_reference([str(app)], str(store_dir))
    assert store_tar_size([str(app)], store_dir=str(store_dir)) == len(data)


@needs_current_tarfile
@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_names_at_the_ustar_limit(tmp_path: pathlib.Path, relative: bool) -> None:
    store_dir = tmp_path / "s"
    app = store_dir / "kk-a"
    for length in (99, 100, 101):  # the name of each directory's longest entry, in the tar
        files, dirs = app / f"f{length}", app / f"d{length}"
        files.mkdir(parents=True)
        dirs.mkdir()
        room = length - (len(str(files)) + 1 - relative)  # names start with "<files>/"
        assert room > 5, "tmp_path too long for this test"
        _write(files / ("f" * room), b"at the limit")
        _write(files / "short", b"")
        (dirs / ("d" * (room - 1))).mkdir()  # its slash makes it `length` long
    options = TarOptions(relative_names=relative)
    data = ours([str(app)], str(store_dir), options=options)
    assert data == tarfile_reference([str(app)], str(store_dir), options)
    assert data.count(b"././@PaxHeader") == 2  # the file and the directory of 101 bytes
    assert store_tar_size([str(app)], store_dir=str(store_dir), options=options) == len(data)


@needs_current_tarfile
def test_non_utf8_names_sort_as_text_like_tarfile(tmp_path: pathlib.Path) -> None:
    store_dir = tmp_path / "store"
    app = store_dir / "kkkk-names"
    app.mkdir(parents=True)
    # As bytes 0xEE < 0xF0 < 0xFF; as text U+DCFF (the escaped 0xFF) < U+E000 < U+10000.
    for name in (b"\xff", "\ue000".encode(), "\U00010000".encode(), b"a", b"\xffdir"):
        _write(os.fsencode(app) + b"/" + name, name)
    data = ours([str(app)], str(store_dir))
    assert data == tarfile_reference([str(app)], str(store_dir))
    assert store_tar_size([str(app)], store_dir=str(store_dir)) == len(data)


def _deep_tree(app: pathlib.Path, depth: int) -> None:
    app.mkdir(parents=True)
    level = app
    for i in range(depth):
        _write(level / "file", b"level %d" % i)
        os.symlink("file", level / "link")
        level = level / f"d{i}"
        level.mkdir(parents=True)
    _write(level / "bottom", b"bottom")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@needs_current_tarfile
def test_trees_deeper_than_the_open_fd_limit(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_dir = tmp_path / "store"
    app = store_dir / "kkkk-deep"
    _deep_tree(app, 10)
    expected = tarfile_reference([str(app)], str(store_dir))
    assert ours([str(app)], str(store_dir)) == expected
    # Below 2 levels, entries are opened by full path: at most 2 directory fds stay open.
    monkeypatch.setattr(tarstream, "MAX_OPEN_DIRS", 2)
    before = _open_fds()
    peak = before
    real_fstat = os.fstat

    def fstat(fd: int) -> os.stat_result:
        nonlocal peak
        peak = max(peak, _open_fds())
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", fstat)
    assert ours([str(app)], str(store_dir)) == expected
    assert _open_fds() == before
    assert peak <= before + 3  # 2 directories and the file being read


def test_no_file_left_open_when_the_stream_is_abandoned(tmp_path: pathlib.Path) -> None:
    store_dir = tmp_path / "store"
    app = store_dir / "kkkk-deep"
    _deep_tree(app, 8)
    _write(app / "d0" / "big", os.urandom(5000))
    before = _open_fds()
    for taken in range(1, 30):
        chunks = store_tar_chunks([str(app)], store_dir=str(store_dir), chunk_size=512)
        list(itertools.islice(chunks, taken))
        chunks.close()  # type: ignore[attr-defined]
        assert _open_fds() == before, taken


# --- synthetic entries -------------------------------------------------------------------------

ENTRIES = [
    TarEntry("/tmp", "dir", 0o1777),
    TarEntry("/etc/passwd", "file", 0o644, b"root:x:0:0::/root:/bin/sh\n"),
    TarEntry("/bin", "dir"),
    TarEntry("/bin/sh", "symlink", target="/nix/store/aaaa-busybox/bin/busybox"),
    TarEntry("/etc", "dir"),
    TarEntry("/usr/share/" + "n" * 120, "file", data=b"long"),
    TarEntry("/etc/nix/nix.conf", "file", 0o444, b"experimental-features = nix-command\n" * 40),
    TarEntry("/etc-x", "file", data=b""),
]


def entries_reference(entries: Sequence[TarEntry], options: TarOptions = DEFAULTS) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: pathlib.PurePosixPath(e.name)):
            info = tarfile.TarInfo(entry.name.lstrip("/") if options.relative_names else entry.name)
            info.mtime, info.uid, info.gid = options.mtime, options.uid, options.gid
            info.uname, info.gname = options.uname, options.gname
            info.mode = entry.mode
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif entry.kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.target, 0o777
            else:
                info.size = len(entry.data)
            tar.addfile(info, io.BytesIO(entry.data) if entry.kind == "file" else None)
    return buf.getvalue()


@needs_current_tarfile
@pytest.mark.parametrize("options", [TarOptions(), TarOptions(relative_names=True, mtime=7)])
def test_entries_bytes_equal_tarfile(options: TarOptions) -> None:
    data = b"".join(entries_tar_chunks(ENTRIES, options=options))
    assert data == entries_reference(ENTRIES, options)


def test_entries_sorted_parents_first_and_independent_of_given_order() -> None:
    forward = b"".join(entries_tar_chunks(ENTRIES))
    assert b"".join(entries_tar_chunks(list(reversed(ENTRIES)))) == forward
    names = [m.name for m in members(forward)]
    assert names[:3] == ["/bin", "/bin/sh", "/etc"]
    assert names.index("/etc/passwd") < names.index("/etc-x")
    by_name = {m.name: m for m in members(forward)}
    assert by_name["/tmp"].mode == 0o1777
    assert by_name["/bin/sh"].linkname == "/nix/store/aaaa-busybox/bin/busybox"


def test_entries_duplicates_rejected() -> None:
    with pytest.raises(UsageError, match="twice: /bin"):
        entries_tar_chunks([TarEntry("/bin", "dir"), TarEntry("/bin", "symlink", target="/x")])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "bin", "kind": "dir"}, "absolute"),
        ({"name": "/bin/../etc", "kind": "dir"}, "absolute"),
        ({"name": "/bin/", "kind": "dir"}, "absolute"),
        ({"name": "/", "kind": "dir"}, "'/'"),
        ({"name": "/x", "kind": "fifo"}, "kind"),
        ({"name": "/x", "kind": "file", "mode": 0o17777}, "mode"),
        ({"name": "/x", "kind": "dir", "data": b"d"}, "data"),
        ({"name": "/x", "kind": "symlink"}, "target"),
        ({"name": "/x", "kind": "file", "target": "/y"}, "target"),
        ({"name": "/x\ud800", "kind": "dir"}, "encoded"),
    ],
)
def test_invalid_entries_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        TarEntry(**kwargs)  # type: ignore[arg-type]


def test_symlink_entries_are_written_0777() -> None:
    data = b"".join(entries_tar_chunks([TarEntry("/sh", "symlink", 0o755, target="/bin/x")]))
    (member,) = members(data)
    assert member.issym()
    assert stat.S_IMODE(member.mode) == 0o777
