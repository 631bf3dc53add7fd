"""What a CI job image needs besides store paths: a shell, /tmp, users, CA certificates, Nix.

GitLab's docker executor runs the job script with ``sh`` as the image's user, so an image of
store paths alone fails before the first line. Like nixpkgs' ``streamNixShellImage`` (binSh,
usrBinEnv, fakeNss, cacert) this module makes customisation-layer entries for:

- ``/bin/sh`` and ``/usr/bin/env``: links to a shell and an ``env`` found in the closure;
- ``/tmp`` and ``/var/tmp``, mode 1777 (sticky, writable by every user);
- ``/etc/passwd``, ``/etc/group``, ``/etc/nsswitch.conf`` with root, nobody and the image user,
  and the user's home directory;
- ``/etc/ssl/certs/ca-bundle.crt`` (+ ``ca-certificates.crt``, the Debian/Go name) and the
  variables that point TLS clients, Nix and git at it;
- with Nix: ``/etc/nix/nix.conf`` and the database registering the closure;
- host files and directories (``--add SRC:DEST``).

Every function returns plain :class:`TarEntry` lists; :func:`merge_entries` combines them with
the root links deterministically (see there for who wins). Searches in the closure go through
:func:`ordered_store_paths`: the roots first, in the user's order, then the other paths by name.
The file system is only read to look into store paths and ``--add`` sources.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ociforge.errors import UsageError
from ociforge.tarstream import TarEntry

logger = logging.getLogger(__name__)

CA_BUNDLE = "/etc/ssl/certs/ca-bundle.crt"
CA_VARIABLES = ("GIT_SSL_CAINFO", "NIX_SSL_CERT_FILE", "SSL_CERT_FILE")
_CA_CANDIDATES = (
    "etc/ssl/certs/ca-bundle.crt",  # nixpkgs' cacert
    "etc/ssl/certs/ca-certificates.crt",
    "etc/pki/tls/certs/ca-bundle.crt",
)
# sandbox: containers rarely allow the namespaces Nix's sandbox needs. build-users-group: the
# image has no nixbld users; single-user Nix builds as the user running it (root in CI).
NIX_CONF = (
    "# Written by ociforge: Nix inside a container, single-user.\n"
    "experimental-features = nix-command flakes\n"
    "sandbox = false\n"
    "build-users-group =\n"
)
_NSSWITCH = b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]*")
_DIR = 0o755


@dataclass(frozen=True)
class ImageUser:
    """Who runs the container: written to ``/etc/passwd`` and used for ``HOME``."""

    name: str
    uid: int
    gid: int
    group: str
    home: str


_WELL_KNOWN_IDS = {"root": 0, "users": 100, "nobody": 65534, "nogroup": 65534}
_WELL_KNOWN_NAMES = {0: "root", 65534: "nobody"}


def parse_user(spec: str | None, *, home: str | None = None) -> ImageUser:
    """``USER[:GROUP]`` as OCI's ``User`` takes it, each a name or a number.

    ``None``/``root`` -> root; a name -> uid 1000 (0, 100 and 65534 for root, users and
    nobody/nogroup); a number -> ``user`` (``root``, ``nobody``); no group -> the user's own.
    """
    text = (spec or "root").strip()
    user_part, colon, group_part = text.partition(":")
    if not (_USER_NAME.fullmatch(user_part) or user_part.isdigit()) or (
        colon and not (_USER_NAME.fullmatch(group_part) or group_part.isdigit())
    ):
        raise UsageError(
            f"invalid --user {spec!r}: use NAME or UID, optionally :GROUP or :GID (ci, 1000:100)"
        )
    if user_part.isdigit():
        uid = int(user_part)
        name = _WELL_KNOWN_NAMES.get(uid, "user")
    else:
        name, uid = user_part, _WELL_KNOWN_IDS.get(user_part, 1000)
    if not colon:
        gid, group = uid, name
    elif group_part.isdigit():
        gid = int(group_part)
        group = _WELL_KNOWN_NAMES.get(gid, name)
    else:
        group, gid = group_part, _WELL_KNOWN_IDS.get(group_part, uid)
    default_home = "/root" if uid == 0 else f"/home/{name}"
    chosen = home or default_home
    if not chosen.startswith("/") or os.path.normpath(chosen) != chosen:
        raise UsageError(f"home directory must be a normalised absolute path: {chosen!r}")
    return ImageUser(name=name, uid=uid, gid=gid, group=group, home=chosen)


def ordered_store_paths(roots: Sequence[str], paths: Iterable[str]) -> list[str]:
    """Roots in the given order, then the rest by (name, path): the search order for links."""
    first = list(dict.fromkeys(roots))
    rest = sorted(set(paths) - set(first), key=lambda p: (p.rsplit("/", 1)[-1][33:], p))
    return first + rest


def find_file(paths: Sequence[str], relpaths: Sequence[str]) -> str | None:
    """The first ``path/relpath`` that is a file (links followed), trying relpaths in order."""
    for rel in relpaths:
        for path in paths:
            candidate = f"{path}/{rel}"
            if os.path.isfile(candidate):
                return candidate
    return None


def find_program(paths: Sequence[str], names: Sequence[str]) -> str | None:
    """The first executable ``path/bin/NAME``, trying names in order (``("sh", "bash")``)."""
    for name in names:
        for path in paths:
            candidate = f"{path}/bin/{name}"
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    return None


_SHELL_LINKS = (
    (
        "/bin/sh",
        ("sh", "bash"),
        "no bin/sh or bin/bash in the closure: GitLab jobs need /bin/sh "
        "(add bash or busybox to the image)",
    ),
    (
        "/usr/bin/env",
        ("env",),
        "no bin/env in the closure: scripts starting with #!/usr/bin/env will not run "
        "(add coreutils or busybox)",
    ),
)


def shell_entries(paths: Sequence[str]) -> tuple[list[TarEntry], list[str]]:
    """``/bin/sh`` and ``/usr/bin/env`` links, and a warning for each that has no program."""
    entries: list[TarEntry] = []
    warnings: list[str] = []
    for link, names, missing in _SHELL_LINKS:
        program = find_program(paths, names)
        if program:
            entries.append(TarEntry(link, "symlink", target=program))
        else:
            warnings.append(missing)
    return entries, warnings


def tmp_entries() -> list[TarEntry]:
    """``/tmp`` and ``/var/tmp``, world-writable with the sticky bit, as on any Linux."""
    return [TarEntry("/tmp", "dir", mode=0o1777), TarEntry("/var/tmp", "dir", mode=0o1777)]  # noqa: S108


def user_entries(user: ImageUser) -> list[TarEntry]:
    """passwd, group and nsswitch.conf with root, ``user`` and nobody; the user's home dir.

    A non-root home is mode 1777: layer entries all belong to root (TarOptions has one
    owner for every entry), and the user must be able to write to its home.
    """
    root_home = user.home if user.uid == 0 else "/root"
    people = {0: ("root", 0, root_home), 65534: ("nobody", 65534, "/var/empty")}
    people[user.uid] = (user.name, user.gid, user.home)
    passwd = "".join(
        f"{name}:x:{uid}:{gid}:{name}:{home}:/bin/sh\n"
        for uid, (name, gid, home) in sorted(people.items())
    )
    # The user's group by the name --user gave (nobody:nogroup names 65534 twice: both stay).
    groups = {(0, "root"), (65534, "nobody"), (user.gid, user.group)}
    group = "".join(f"{name}:x:{gid}:\n" for gid, name in sorted(groups))
    entries = [
        TarEntry("/etc/passwd", "file", mode=0o644, data=passwd.encode()),
        TarEntry("/etc/group", "file", mode=0o644, data=group.encode()),
        TarEntry("/etc/nsswitch.conf", "file", mode=0o644, data=_NSSWITCH),
    ]
    if user.home != "/":
        mode = 0o700 if user.uid == 0 else 0o1777
        entries.append(TarEntry(user.home, "dir", mode=mode))
    return entries


def ca_entries(
    paths: Sequence[str], *, bundle: str | None = None
) -> tuple[list[TarEntry], dict[str, str], list[str]]:
    """The CA bundle at :data:`CA_BUNDLE`, the variables naming it, and warnings.

    ``bundle`` (``--ca-bundle``) inside a closure path becomes a link to it; any other file is
    copied into the layer. Without ``bundle`` the closure is searched (nixpkgs' ``cacert``).
    """
    if bundle is not None:
        inside = any(bundle.startswith(f"{p}/") for p in paths)
        if inside and os.path.isfile(bundle):
            main = TarEntry(CA_BUNDLE, "symlink", target=bundle)
        else:
            main = TarEntry(
                CA_BUNDLE, "file", mode=0o644, data=_read_host_file(bundle, "--ca-bundle")
            )
    else:
        found = find_file(paths, _CA_CANDIDATES)
        if found is None:
            warning = (
                "no CA bundle in the closure (etc/ssl/certs/ca-bundle.crt): HTTPS clients cannot "
                "verify servers; add cacert to the image or pass --ca-bundle FILE"
            )
            return [], {}, [warning]
        main = TarEntry(CA_BUNDLE, "symlink", target=found)
    alias = TarEntry("/etc/ssl/certs/ca-certificates.crt", "symlink", target="ca-bundle.crt")
    return [main, alias], dict.fromkeys(CA_VARIABLES, CA_BUNDLE), []


class NixDbFiles(Protocol):
    """What :class:`ociforge.nix.nixdb.NixDatabase` provides."""

    @property
    def sqlite(self) -> bytes: ...
    @property
    def schema(self) -> bytes: ...


def nix_entries(db: NixDbFiles | None, *, conf: str = NIX_CONF) -> list[TarEntry]:
    """``/etc/nix/nix.conf``, and with ``db`` the files of ``/nix/var/nix`` a Nix needs."""
    entries = [TarEntry("/etc/nix/nix.conf", "file", mode=0o644, data=conf.encode())]
    if db is not None:
        entries += [
            TarEntry("/nix/var/nix/db/db.sqlite", "file", mode=0o644, data=db.sqlite),
            TarEntry("/nix/var/nix/db/schema", "file", mode=0o644, data=db.schema),
            TarEntry("/nix/var/nix/gcroots", "dir", mode=_DIR),
            TarEntry("/nix/var/nix/profiles", "dir", mode=_DIR),
        ]
    return entries


def parse_add(spec: str) -> tuple[str, str]:
    """``SRC:DEST`` -> (SRC, DEST); DEST is absolute, so the split is at the last ``:/``."""
    cut = spec.rfind(":/")
    if cut <= 0:
        raise UsageError(f"invalid --add {spec!r}: expected SRC:DEST with an absolute DEST")
    return spec[:cut], spec[cut + 1 :]


def host_entries(src: str, dest: str) -> list[TarEntry]:
    """``src`` (file, directory tree or symlink of this machine) as entries at ``dest``.

    Owner and mtime come from the tar options like every entry; modes are normalised to 0644,
    or 0755 when any execute bit is set (directories 0755), so a layer does not depend on the
    runner's umask or checkout; symlinks are kept as they are. Files are read into memory:
    this is for configuration, not for large trees (make those a Nix package).
    """
    norm = os.path.normpath(dest)
    if not dest.startswith("/") or norm.startswith("//"):
        raise UsageError(f"--add destination must be an absolute path: {dest!r}")
    try:
        st = os.lstat(src)
    except OSError as exc:
        raise UsageError(f"--add {src}: {exc.strerror or exc}") from None
    return _host_tree(src, norm, st)


def _host_tree(src: str, dest: str, st: os.stat_result) -> list[TarEntry]:
    if stat.S_ISLNK(st.st_mode):
        return [TarEntry(dest, "symlink", target=os.readlink(src))]
    if stat.S_ISREG(st.st_mode):
        mode = 0o755 if st.st_mode & 0o111 else 0o644
        return [TarEntry(dest, "file", mode=mode, data=_read_added_file(src))]
    if not stat.S_ISDIR(st.st_mode):
        raise _not_addable(src, st.st_mode)
    entries = [] if dest == "/" else [TarEntry(dest, "dir", mode=_DIR)]
    try:
        with os.scandir(src) as it:
            children = sorted((e.name, e.path, e.stat(follow_symlinks=False)) for e in it)
    except OSError as exc:
        raise UsageError(f"--add {src}: {exc.strerror or exc}") from None
    for name, path, child_st in children:
        entries += _host_tree(path, os.path.join(dest, name), child_st)
    return entries


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device file"),
    (stat.S_ISBLK, "a device file"),
)


def _not_addable(src: str, mode: int) -> UsageError:
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a regular file")
    return UsageError(f"--add {src}: is {kind}; only files, directories and symlinks can be added")


def _read_added_file(path: str) -> bytes:
    """The bytes of a file that ``lstat`` called regular, if it still is one.

    Opened without blocking and without following a link, then checked again: a file replaced
    by a FIFO after it was listed would otherwise block the build forever in ``open``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"--add {path}: {exc.strerror or exc}") from None
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_addable(path, mode)
        try:
            return f.read()
        except OSError as exc:
            raise UsageError(f"--add {path}: {exc.strerror or exc}") from None


def _read_host_file(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from None


def merge_entries(base: Iterable[TarEntry], extra: Iterable[TarEntry]) -> list[TarEntry]:
    """``base`` then ``extra`` entry by entry, as one tree; sorted by path component.

    Rules, applied in order (so a later entry wins, deterministically):

    - a missing parent directory is added (0755);
    - a parent that is a symlink to a directory (a root link such as ``/etc -> /nix/store/
      ...-pkg/etc``) becomes a real directory holding one link per entry of the target, so the
      new entry sits beside what the link showed; a parent that is a file becomes a directory;
    - a directory over a directory (or over a symlink to one) merges: the later mode wins and
      the contents stay;
    - anything else over an existing name replaces it, and a replaced directory's contents go.
    """
    merged: dict[str, TarEntry] = {}
    for entry in [*base, *extra]:
        _put(merged, entry)
    return sorted(merged.values(), key=lambda e: e.name.split("/"))


def _put(merged: dict[str, TarEntry], entry: TarEntry) -> None:
    parts = entry.name.split("/")[1:]
    for depth in range(1, len(parts)):
        _ensure_dir(merged, "/" + "/".join(parts[:depth]), None)
    existing = merged.get(entry.name)
    if entry.kind == "dir" and existing is not None and existing.kind != "file":
        _ensure_dir(merged, entry.name, entry.mode)
        return
    if existing is not None and existing.kind == "dir":
        prefix = entry.name + "/"
        for name in [n for n in merged if n.startswith(prefix)]:
            del merged[name]
    merged[entry.name] = entry


def _ensure_dir(merged: dict[str, TarEntry], name: str, mode: int | None) -> None:
    current = merged.get(name)
    if current is not None and current.kind == "dir":
        if mode is not None:
            merged[name] = TarEntry(name, "dir", mode=mode)
        return
    if current is not None and current.kind == "symlink":
        _explode(merged, current)
    elif current is not None:
        logger.info("%s: a file replaced by a directory for the entries below it", name)
    merged[name] = TarEntry(name, "dir", mode=_DIR if mode is None else mode)


def _explode(merged: dict[str, TarEntry], link: TarEntry) -> None:
    target = link.target
    if not (target.startswith("/") and os.path.isdir(target)):
        logger.warning(
            "%s -> %s becomes an empty directory: the target is no directory here",
            link.name,
            target,
        )
        return
    for child in sorted(os.listdir(target)):
        name = f"{link.name}/{child}"
        merged[name] = TarEntry(name, "symlink", target=f"{target}/{child}")


@dataclass(frozen=True)
class EssentialsOptions:
    """Which essentials to add; the CLI's flags map one to one (see :func:`essentials`)."""

    shell: bool = True  # /bin/sh, /usr/bin/env
    tmp: bool = True  # /tmp, /var/tmp
    users: bool = True  # /etc/passwd, group, nsswitch.conf, home
    ca: bool = True  # CA bundle and its variables
    user: str | None = None  # --user
    home: str | None = None  # --home (default /root or /home/NAME)
    ca_bundle: str | None = None  # --ca-bundle FILE
    with_nix: bool = False  # --with-nix: nix.conf (+ the database given to essentials())
    adds: tuple[str, ...] = ()  # --add SRC:DEST, in order

    def __post_init__(self) -> None:
        # Checked here, before nix builds anything: a typo must not cost a build.
        parse_user(self.user, home=self.home)
        for spec in self.adds:
            parse_add(spec)

    @classmethod
    def only(
        cls,
        *,
        user: str | None = None,
        home: str | None = None,
        ca_bundle: str | None = None,
        with_nix: bool = False,
        adds: tuple[str, ...] = (),
    ) -> EssentialsOptions:
        """Nothing but what the arguments ask for (``--no-essentials`` with other options).

        ``ca_bundle`` turns the CA files and variables on (the bundle was asked for by name);
        ``user`` and ``home`` only name who runs the image, without writing ``/etc/passwd``.
        """
        return cls(
            shell=False,
            tmp=False,
            users=False,
            ca=ca_bundle is not None,
            user=user,
            home=home,
            ca_bundle=ca_bundle,
            with_nix=with_nix,
            adds=adds,
        )


@dataclass(frozen=True)
class Essentials:
    """Entries (merged, sorted), variables for ``Env`` and warnings for the user."""

    entries: tuple[TarEntry, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    user: ImageUser | None = None


def essentials(
    paths: Iterable[str],
    options: EssentialsOptions,
    *,
    roots: Sequence[str] = (),
    nix_db: NixDbFiles | None = None,
) -> Essentials:
    """Everything ``options`` asks for, for a closure of ``paths`` whose roots are ``roots``.

    ``--add`` entries come last, so they win over the essentials (and over root links when the
    result is merged after them: ``merge_entries(root_links(roots), result.entries)``).
    """
    ordered = ordered_store_paths(roots, paths)
    entries: list[TarEntry] = []
    env: dict[str, str] = {}
    warnings: list[str] = []
    user = parse_user(options.user, home=options.home)
    if options.shell:
        found, missing = shell_entries(ordered)
        entries += found
        warnings += missing
    if options.tmp:
        entries += tmp_entries()
    if options.users:
        entries += user_entries(user)
        env["HOME"] = user.home
    if options.ca:
        ca, ca_env, ca_warnings = ca_entries(ordered, bundle=options.ca_bundle)
        entries += ca
        env.update(ca_env)
        warnings += ca_warnings
    if options.with_nix:
        entries += nix_entries(nix_db)
        if find_program(ordered, ("nix",)) is None:
            warnings.append("--with-nix: no bin/nix in the closure; add nix to the image")
    for spec in options.adds:
        entries += host_entries(*parse_add(spec))
    merged = tuple(merge_entries([], entries))
    return Essentials(merged, dict(sorted(env.items())), tuple(warnings), user)
