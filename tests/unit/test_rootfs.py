"""The customisation layer links the roots' top-level trees into /, merging shared directories."""

from __future__ import annotations

from pathlib import Path

from ociforge.assemble.rootfs import default_path, root_links


def make(root: Path, files: list[str]) -> str:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(f)
    return str(root)


def test_single_root_top_dirs_are_real_dirs_with_links_inside(tmp_path: Path) -> None:
    a = make(tmp_path / "a", ["bin/hello", "share/doc/readme"])
    entries = root_links([a])
    assert [(e.name, e.kind, e.target) for e in entries] == [
        ("/bin", "dir", ""),
        ("/bin/hello", "symlink", f"{a}/bin/hello"),
        ("/share", "dir", ""),
        ("/share/doc", "symlink", f"{a}/share/doc"),
    ]


def test_directories_in_several_roots_merge_and_first_root_wins(tmp_path: Path) -> None:
    a = make(tmp_path / "a", ["bin/tool", "share/man/a.1", "etc/conf"])
    b = make(tmp_path / "b", ["bin/tool", "bin/other", "share/man/b.1"])
    got = {e.name: (e.kind, e.target) for e in root_links([a, b])}
    assert got["/bin/tool"] == ("symlink", f"{a}/bin/tool")
    assert got["/bin/other"] == ("symlink", f"{b}/bin/other")
    assert got["/share/man"] == ("dir", "")
    assert got["/share/man/a.1"] == ("symlink", f"{a}/share/man/a.1")
    assert got["/share/man/b.1"] == ("symlink", f"{b}/share/man/b.1")
    assert got["/etc/conf"] == ("symlink", f"{a}/etc/conf")


def test_file_roots_contribute_nothing_and_path_covers_bins(tmp_path: Path) -> None:
    a = make(tmp_path / "a", ["bin/x"])
    f = tmp_path / "plainfile"
    f.write_text("x")
    assert [e.name for e in root_links([str(f), a])] == ["/bin", "/bin/x"]
    assert default_path([a, str(f)]) == f"{a}/bin:/usr/local/bin:/usr/bin:/bin"
