"""Essentials of a CI job image: shell links, /tmp, users, CA bundle, Nix files, --add, merging."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from ociforge.assemble.essentials import (
    CA_BUNDLE,
    EssentialsOptions,
    ca_entries,
    essentials,
    find_program,
    host_entries,
    merge_entries,
    nix_entries,
    ordered_store_paths,
    parse_add,
    parse_user,
    shell_entries,
    tmp_entries,
    user_entries,
)
from ociforge.assemble.rootfs import root_links
from ociforge.errors import UsageError
from ociforge.nix.nixdb import NixDatabase
from ociforge.tarstream import TarEntry, entries_tar_chunks


def package(store: Path, letter: str, name: str, files: dict[str, str | None]) -> str:
    """A fake store path: ``files`` maps relpath -> content, or None for an executable."""
    root = store / f"{letter * 32}-{name}"
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/"):
            path.mkdir(exist_ok=True)
            continue
        path.write_text(content if content is not None else "#!/bin/false\n")
        path.chmod(0o555 if content is None else 0o444)
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


def busybox(store: Path, letter: str = "b") -> str:
    root = package(store, letter, "busybox", {"bin/busybox": None})
    for applet in ("sh", "env", "ls"):
        os.symlink("busybox", f"{root}/bin/{applet}")
    return root


def untar(entries: Sequence[TarEntry]) -> dict[str, tarfile.TarInfo]:
    data = b"".join(entries_tar_chunks(entries))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def by_name(entries: Sequence[TarEntry]) -> dict[str, TarEntry]:
    return {e.name: e for e in entries}


# --- finding programs --------------------------------------------------------------------


def test_roots_are_searched_first_then_the_rest_by_name(tmp_path: Path) -> None:
    zlib = package(tmp_path, "a", "zlib-1.3", {})
    bash = package(tmp_path, "c", "bash-5.2", {"bin/bash": None, "bin/sh": None})
    box = busybox(tmp_path)
    assert ordered_store_paths([box], [zlib, bash, box]) == [box, bash, zlib]
    assert find_program(ordered_store_paths([], [zlib, bash, box]), ["sh"]) == f"{bash}/bin/sh"
    assert find_program(ordered_store_paths([box], [zlib, bash, box]), ["sh"]) == f"{box}/bin/sh"


def test_a_file_that_is_not_executable_is_no_program(tmp_path: Path) -> None:
    docs = package(tmp_path, "d", "docs", {"bin/sh": "not a program"})
    assert find_program([docs], ["sh"]) is None


def test_shell_links_point_into_the_closure(tmp_path: Path) -> None:
    box = busybox(tmp_path)
    entries, warnings = shell_entries([box])
    assert warnings == []
    links = {e.name: e.target for e in entries}
    assert links == {"/bin/sh": f"{box}/bin/sh", "/usr/bin/env": f"{box}/bin/env"}


def test_bash_serves_as_sh_when_there_is_no_sh(tmp_path: Path) -> None:
    bash = package(tmp_path, "c", "bash-5.2", {"bin/bash": None})
    entries, warnings = shell_entries([bash])
    assert by_name(entries)["/bin/sh"].target == f"{bash}/bin/bash"
    assert len(warnings) == 1 and "bin/env" in warnings[0]


def test_a_closure_without_shell_gets_warnings_not_links(tmp_path: Path) -> None:
    entries, warnings = shell_entries([package(tmp_path, "a", "zlib", {"lib/libz.so": "x"})])
    assert entries == []
    assert any("/bin/sh" in w for w in warnings)
    assert any("/usr/bin/env" in w for w in warnings)


# --- /tmp and users ----------------------------------------------------------------------


def test_tmp_dirs_are_sticky_and_world_writable_in_the_tar() -> None:
    members = untar(merge_entries([], tmp_entries()))
    assert members["/tmp"].mode == 0o1777
    assert members["/var/tmp"].mode == 0o1777
    assert members["/var"].mode == 0o755 and members["/var"].isdir()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, ("root", 0, 0, "root", "/root")),
        ("root", ("root", 0, 0, "root", "/root")),
        ("0:0", ("root", 0, 0, "root", "/root")),
        ("ci", ("ci", 1000, 1000, "ci", "/home/ci")),
        ("1001", ("user", 1001, 1001, "user", "/home/user")),
        ("1001:100", ("user", 1001, 100, "user", "/home/user")),
        ("nobody", ("nobody", 65534, 65534, "nobody", "/home/nobody")),
        ("ci:ci", ("ci", 1000, 1000, "ci", "/home/ci")),
        ("app:users", ("app", 1000, 100, "users", "/home/app")),
        ("nobody:nogroup", ("nobody", 65534, 65534, "nogroup", "/home/nobody")),
        ("1000:users", ("user", 1000, 100, "users", "/home/user")),
    ],
)
def test_parse_user(spec: str | None, expected: tuple[str, int, int, str, str]) -> None:
    user = parse_user(spec)
    assert (user.name, user.uid, user.gid, user.group, user.home) == expected


@pytest.mark.parametrize("spec", ["Bad Name", "1000:", "-1", "ci:a b", ":100"])
def test_parse_user_rejects_what_it_cannot_write_to_passwd(spec: str) -> None:
    with pytest.raises(UsageError, match="--user"):
        parse_user(spec)


def test_parse_user_rejects_a_relative_home() -> None:
    with pytest.raises(UsageError, match="home directory"):
        parse_user("ci", home="home/ci")


def test_root_only_passwd_and_group() -> None:
    files = by_name(user_entries(parse_user(None)))
    assert files["/etc/passwd"].data == (
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/var/empty:/bin/sh\n"
    )
    assert files["/etc/group"].data == b"root:x:0:\nnobody:x:65534:\n"
    assert b"hosts: files dns" in files["/etc/nsswitch.conf"].data
    assert files["/root"].kind == "dir" and files["/root"].mode == 0o700


def test_a_named_user_gets_its_line_group_and_a_writable_home() -> None:
    files = by_name(user_entries(parse_user("ci")))
    assert files["/etc/passwd"].data.splitlines()[1] == b"ci:x:1000:1000:ci:/home/ci:/bin/sh"
    assert b"ci:x:1000:\n" in files["/etc/group"].data
    # Entries all belong to root, so the user's home must be writable by everyone.
    assert files["/home/ci"].mode == 0o1777
    assert "/root" not in files


# --- CA bundle ---------------------------------------------------------------------------


def test_a_ca_bundle_in_the_closure_is_linked_and_named_by_the_variables(tmp_path: Path) -> None:
    cacert = package(tmp_path, "e", "nss-cacert-3.98", {"etc/ssl/certs/ca-bundle.crt": "PEM"})
    entries, env, warnings = ca_entries([cacert])
    assert warnings == []
    files = by_name(entries)
    assert files[CA_BUNDLE].target == f"{cacert}/etc/ssl/certs/ca-bundle.crt"
    assert files["/etc/ssl/certs/ca-certificates.crt"].target == "ca-bundle.crt"
    assert env == {
        "GIT_SSL_CAINFO": CA_BUNDLE,
        "NIX_SSL_CERT_FILE": CA_BUNDLE,
        "SSL_CERT_FILE": CA_BUNDLE,
    }


def test_a_host_ca_bundle_is_copied_into_the_layer(tmp_path: Path) -> None:
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    entries, env, _ = ca_entries([], bundle=str(bundle))
    main = by_name(entries)[CA_BUNDLE]
    assert main.kind == "file" and main.data == b"-----BEGIN CERTIFICATE-----\n"
    assert env["SSL_CERT_FILE"] == CA_BUNDLE


def test_a_missing_ca_bundle_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--ca-bundle .*missing\.pem"):
        ca_entries([], bundle=str(tmp_path / "missing.pem"))


def test_no_ca_bundle_anywhere_is_a_warning_and_no_variables(tmp_path: Path) -> None:
    entries, env, warnings = ca_entries([busybox(tmp_path)])
    assert entries == [] and env == {}
    assert len(warnings) == 1 and "--ca-bundle" in warnings[0]


# --- Nix ---------------------------------------------------------------------------------


def test_nix_conf_enables_flakes_for_a_single_user_nix() -> None:
    conf = by_name(nix_entries(None))["/etc/nix/nix.conf"].data.decode()
    assert "experimental-features = nix-command flakes" in conf.splitlines()
    assert "sandbox = false" in conf.splitlines()
    assert "build-users-group =" in conf.splitlines()


def test_nix_db_files_land_in_nix_var() -> None:
    db = NixDatabase(sqlite=b"SQLite format 3\x00", schema=b"10", paths=())
    members = untar(merge_entries([], nix_entries(db)))
    assert members["/nix/var/nix/db/schema"].size == 2
    assert members["/nix/var/nix/db/db.sqlite"].isfile()
    assert members["/nix/var/nix/gcroots"].isdir() and members["/nix/var/nix/profiles"].isdir()
    assert members["/nix/var/nix"].isdir()  # parents are added by merge_entries


# --- --add -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ci/config.toml:/etc/app/config.toml", ("ci/config.toml", "/etc/app/config.toml")),
        ("C:/x:/opt/x", ("C:/x", "/opt/x")),
        ("a:b:/dest", ("a:b", "/dest")),
    ],
)
def test_parse_add(spec: str, expected: tuple[str, str]) -> None:
    assert parse_add(spec) == expected


@pytest.mark.parametrize("spec", ["only-source", "src:relative/dest", ":/dest"])
def test_parse_add_needs_a_source_and_an_absolute_destination(spec: str) -> None:
    with pytest.raises(UsageError, match="--add"):
        parse_add(spec)


def test_host_files_get_normalised_modes_and_keep_their_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "tool").write_text("#!/bin/sh\n")
    (src / "tool").chmod(0o700)
    (src / "sub" / "conf").write_text("x = 1\n")
    (src / "sub" / "conf").chmod(0o664)
    (src / "link").symlink_to("sub/conf")
    entries = by_name(host_entries(str(src), "/opt/app"))
    assert entries["/opt/app"].kind == "dir" and entries["/opt/app"].mode == 0o755
    assert entries["/opt/app/tool"].mode == 0o755
    assert entries["/opt/app/sub/conf"].mode == 0o644
    assert entries["/opt/app/sub/conf"].data == b"x = 1\n"
    assert entries["/opt/app/link"].kind == "symlink"
    assert entries["/opt/app/link"].target == "sub/conf"


def test_a_missing_add_source_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--add .*nope"):
        host_entries(str(tmp_path / "nope"), "/nope")


def test_a_directory_added_at_the_root_spreads_into_it(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "motd").write_text("hi\n")
    assert sorted(by_name(host_entries(str(tmp_path), "/"))) == ["/etc", "/etc/motd"]


# --- merging -----------------------------------------------------------------------------


def names(entries: Sequence[TarEntry]) -> list[str]:
    return [e.name for e in entries]


def test_merge_sorts_by_component_and_adds_parents() -> None:
    merged = merge_entries([], [TarEntry("/a-b", "dir"), TarEntry("/a/b/c", "file", data=b"x")])
    assert names(merged) == ["/a", "/a/b", "/a/b/c", "/a-b"]


def test_a_later_entry_replaces_an_earlier_one_with_the_same_name() -> None:
    base = [TarEntry("/bin", "dir"), TarEntry("/bin/sh", "symlink", target="/nix/store/x-dash")]
    extra = [TarEntry("/bin/sh", "symlink", target="/nix/store/y-bash/bin/bash")]
    merged = by_name(merge_entries(base, extra))
    assert merged["/bin/sh"].target == "/nix/store/y-bash/bin/bash"


def test_a_directory_over_a_directory_keeps_the_contents_and_takes_the_mode() -> None:
    base = [TarEntry("/tmp", "dir", mode=0o755), TarEntry("/tmp/x", "file", data=b"")]
    merged = by_name(merge_entries(base, [TarEntry("/tmp", "dir", mode=0o1777)]))
    assert merged["/tmp"].mode == 0o1777 and "/tmp/x" in merged


def test_a_file_over_a_directory_removes_the_directorys_contents() -> None:
    base = [TarEntry("/etc", "dir"), TarEntry("/etc/passwd", "file", data=b"x")]
    merged = merge_entries(base, [TarEntry("/etc", "file", data=b"oops")])
    assert names(merged) == ["/etc"]


def test_an_entry_below_a_root_link_turns_the_link_into_a_directory_of_links(
    tmp_path: Path,
) -> None:
    app = package(tmp_path, "a", "app", {"etc/app.conf": "a", "etc/ssl/openssl.cnf": "s"})
    base = root_links([app])  # /etc is a real dir, /etc/ssl a link into the store
    assert by_name(base)["/etc/ssl"].kind == "symlink"
    extra = [TarEntry(CA_BUNDLE, "file", data=b"PEM")]
    merged = by_name(merge_entries(base, extra))
    assert merged["/etc/ssl"].kind == "dir"
    assert merged["/etc/ssl/openssl.cnf"].target == f"{app}/etc/ssl/openssl.cnf"
    assert merged["/etc/ssl/certs"].kind == "dir"
    assert merged[CA_BUNDLE].data == b"PEM"
    assert merged["/etc/app.conf"].target == f"{app}/etc/app.conf"


def test_a_directory_entry_over_a_root_link_keeps_what_the_link_showed(tmp_path: Path) -> None:
    app = package(tmp_path, "a", "app", {"share/doc/README": "r"})
    merged = by_name(merge_entries(root_links([app]), [TarEntry("/share/doc", "dir")]))
    assert merged["/share/doc"].kind == "dir"
    assert merged["/share/doc/README"].target == f"{app}/share/doc/README"


def test_merge_is_independent_of_base_order_and_gives_a_valid_tar(tmp_path: Path) -> None:
    box = busybox(tmp_path)
    extra = [*tmp_entries(), *user_entries(parse_user(None)), *shell_entries([box])[0]]
    one = merge_entries(root_links([box]), extra)
    two = merge_entries(list(reversed(root_links([box]))), extra)
    assert one == two
    members = untar(one)  # entries_tar_chunks rejects duplicates: there are none
    assert members["/bin/sh"].linkname == f"{box}/bin/sh"
    assert members["/bin"].isdir()


# --- all together ------------------------------------------------------------------------


def test_essentials_of_a_busybox_closure(tmp_path: Path) -> None:
    box = busybox(tmp_path)
    cacert = package(tmp_path, "e", "nss-cacert", {"etc/ssl/certs/ca-bundle.crt": "PEM"})
    motd = tmp_path / "motd"
    motd.write_text("welcome\n")
    options = EssentialsOptions(user="ci", adds=(f"{motd}:/etc/motd",), with_nix=True)
    result = essentials([cacert, box], options, roots=[box])
    files = by_name(result.entries)
    assert files["/bin/sh"].target == f"{box}/bin/sh"
    assert files["/tmp"].mode == 0o1777
    assert files["/home/ci"].kind == "dir"
    assert files["/etc/motd"].data == b"welcome\n"
    assert "/etc/nix/nix.conf" in files
    assert result.env["SSL_CERT_FILE"] == CA_BUNDLE
    assert result.user is not None and result.user.home == "/home/ci"
    assert result.warnings == ("--with-nix: no bin/nix in the closure; add nix to the image",)
    assert names(result.entries) == sorted(names(result.entries), key=lambda n: n.split("/"))


def test_adds_win_over_the_essentials(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/:/bin/false\n")
    result = essentials([], EssentialsOptions(adds=(f"{passwd}:/etc/passwd",)))
    assert by_name(result.entries)["/etc/passwd"].data == b"root:x:0:0::/:/bin/false\n"


def test_everything_can_be_switched_off() -> None:
    off = EssentialsOptions(shell=False, tmp=False, users=False, ca=False)
    assert essentials([], off) == essentials([], off)
    assert essentials([], off).entries == ()
    assert essentials([], off).warnings == ()


def test_a_group_named_by_user_is_in_etc_group_even_when_its_gid_has_a_name() -> None:
    """--user nobody:nogroup: the runtime looks the group up by name."""
    group = by_name(user_entries(parse_user("nobody:nogroup")))["/etc/group"].data
    assert group == b"root:x:0:\nnobody:x:65534:\nnogroup:x:65534:\n"
