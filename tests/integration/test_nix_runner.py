"""The nix runner and the store helper against the real nix of this machine (never the network)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from ociforge.errors import NixError
from ociforge.nix import Nix, closure_from_json_file, read_closure
from tests.support.nixstore import (
    OCIFORGE_PRELUDE,
    OFFLINE_NIX_ARGS,
    BuiltClosure,
    Dir,
    File,
    Package,
    Symlink,
    build_derivations,
    busybox_package,
    make_closure,
    offline_env,
)

pytestmark = pytest.mark.integration

NIX = ("nix", "--extra-experimental-features", "nix-command flakes")
LONG_DIR = "/".join(["a-rather-long-directory-name-for-tar-headers"] * 3)


@pytest.fixture(autouse=True)
def _offline_nix(monkeypatch: pytest.MonkeyPatch) -> None:
    """No substituters for any nix this module starts, whatever the suite-wide conftest does."""
    monkeypatch.setenv("NIX_CONFIG", offline_env()["NIX_CONFIG"])


def host_system() -> str:
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--expr", "builtins.currentSystem"],
        capture_output=True,
        text=True,
        check=True,
        env=offline_env(),
    )
    return str(json.loads(out.stdout))


def path_info_json(path: str) -> bytes:
    return subprocess.run(
        [*NIX, "path-info", "--json", "--recursive", *OFFLINE_NIX_ARGS, path],
        capture_output=True,
        check=True,
        env=offline_env(),
    ).stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltClosure:
    return make_closure(
        tmp_path_factory.mktemp("closure"),
        [
            Package("runner-base", {"share/base.txt": "base\n"}),
            Package("runner-lib", {"lib/lib.txt": "uses @runner-base@\n"}, deps=["runner-base"]),
            Package(
                "runner-app",
                {"bin/app": File("#!/bin/sh\nexec @out@/bin/app\n", executable=True)},
                deps=["runner-lib", "runner-base"],
            ),
        ],
    )


@pytest.fixture
def logging_nix(tmp_path: Path) -> tuple[str, Path]:
    """A `nix` wrapper that records each command line, then runs the real nix."""
    real = subprocess.run(["which", "nix"], capture_output=True, text=True, check=True)
    log = tmp_path / "nix-calls.log"
    wrapper = tmp_path / "bin" / "nix"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {real.stdout.strip()} "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper), log


@pytest.fixture(scope="module")
def flake_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flake without inputs in a git repo (flakes only see tracked files)."""
    repo = tmp_path_factory.mktemp("flake")
    drv = (
        'builtins.derivation {{ name = "{name}"; system = "{system}"; builder = "/bin/sh"; '
        'PATH = "/usr/bin:/bin"; args = [ "-c" {script} ]; }}'
    )
    system = host_system()
    dep = drv.format(name="flake-dep", system=system, script='"echo dep > $out"')
    main = drv.format(
        name="flake-main", system=system, script='"mkdir $out; echo ${dep} > $out/dep-path"'
    )
    bad = drv.format(
        name="flake-bad", system=system, script='"echo oops-from-the-builder >&2; exit 3"'
    )
    (repo / "flake.nix").write_text(
        "{\n  outputs = { self }: let dep = "
        + dep
        + "; in {\n"
        + f"    packages.{system}.default = {main};\n"
        + f"    packages.{system}.bad = {bad};\n"
        + "  };\n}\n"
    )
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "flake.nix"], check=True)
    return repo


# --- store paths ----------------------------------------------------------------------------


def test_store_path_closure_is_read_without_building(
    built: BuiltClosure, logging_nix: tuple[str, Path]
) -> None:
    nix, log = logging_nix
    closure = read_closure(built["runner-app"], nix=nix, extra_args=OFFLINE_NIX_ARGS)
    assert closure.roots == (built["runner-app"],)
    assert set(closure.paths) == set(built.paths.values())
    assert closure.paths[built["runner-app"]].references == tuple(
        sorted([built["runner-lib"], built["runner-base"]])
    )
    assert closure.paths[built["runner-lib"]].references == (built["runner-base"],)
    assert closure.system == host_system()
    calls = log.read_text().splitlines()
    assert not any(" build " in f" {c} " for c in calls), calls
    assert any("path-info" in c and "--option substituters" in c for c in calls), calls


def test_a_path_inside_a_store_path_and_a_result_link_name_the_store_path(
    built: BuiltClosure, tmp_path: Path
) -> None:
    link = tmp_path / "result"
    link.symlink_to(built["runner-app"])
    assert read_closure(f"{built['runner-app']}/bin/app").roots == (built["runner-app"],)
    assert read_closure(str(link)).roots == (built["runner-app"],)


def test_missing_store_path_is_a_nix_error() -> None:
    missing = "/nix/store/00000000000000000000000000000000-not-there"
    with pytest.raises(NixError, match=f"{missing}.*not valid"):
        read_closure(missing, extra_args=OFFLINE_NIX_ARGS)


def test_closure_json_file_matches_what_nix_reads(built: BuiltClosure, tmp_path: Path) -> None:
    saved = tmp_path / "closure.json"
    saved.write_bytes(path_info_json(built["runner-app"]))
    offline = closure_from_json_file(saved)
    live = read_closure(built["runner-app"])
    assert offline.roots == live.roots
    assert dict(offline.paths) == dict(live.paths)


# --- flakes and derivations -----------------------------------------------------------------


def check_flake_closure(root_paths: tuple[str, ...], paths: set[str]) -> None:
    (root,) = root_paths
    assert root.endswith("-flake-main")
    dep = Path(root, "dep-path").read_text().strip()
    assert dep.endswith("-flake-dep")
    assert paths == {root, dep}


def test_flake_reference_in_a_git_repo(flake_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closure = read_closure(f"{flake_repo}#default", extra_args=OFFLINE_NIX_ARGS)
    check_flake_closure(closure.roots, set(closure.paths))
    assert closure.system == host_system()
    monkeypatch.chdir(flake_repo)
    assert read_closure(".#default").roots == closure.roots
    assert read_closure(f"path:{flake_repo}#default").roots == closure.roots


def test_explicit_system_is_passed_to_nix(flake_repo: Path, logging_nix: tuple[str, Path]) -> None:
    nix, log = logging_nix
    system = host_system()
    closure = read_closure(f"{flake_repo}#default", nix=nix, system=system)
    assert closure.system == system
    assert any(f"--system {system}" in c for c in log.read_text().splitlines())


def test_drv_path_builds_every_output(tmp_path: Path) -> None:
    expr = tmp_path / "multi.nix"
    expr.write_text(
        'builtins.derivation { name = "runner-multi"; system = builtins.currentSystem;'
        ' builder = "/bin/sh"; PATH = "/usr/bin:/bin"; outputs = [ "out" "dev" ];'
        ' args = [ "-c" "echo lib > $out; echo $out > $dev" ]; }\n'
    )
    drv = subprocess.run(
        ["nix-instantiate", str(expr)], capture_output=True, text=True, check=True
    ).stdout.strip()
    closure = read_closure(drv, extra_args=OFFLINE_NIX_ARGS)
    out, dev = closure.roots
    assert out.endswith("-runner-multi") and dev.endswith("-runner-multi-dev")
    assert closure.paths[dev].references == (out,)
    assert closure.system == host_system()


def test_failing_build_reports_the_builder_error(flake_repo: Path) -> None:
    with pytest.raises(NixError) as info:
        read_closure(f"{flake_repo}#bad", extra_args=OFFLINE_NIX_ARGS)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"nix build {flake_repo}#bad failed: ")
    assert "exit code 3" in message
    assert "oops-from-the-builder" in message


def test_unknown_attribute_reports_nix_error(flake_repo: Path) -> None:
    with pytest.raises(NixError) as info:
        read_closure(f"{flake_repo}#nope", extra_args=OFFLINE_NIX_ARGS)
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message
    assert "does not provide attribute" in message
    assert "nope" in message


# --- nix itself -----------------------------------------------------------------------------


def test_nix_missing_from_path(
    built: BuiltClosure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(NixError, match=r"^nix not found on PATH: install Nix"):
        read_closure(built["runner-app"])


def test_nix_given_as_a_missing_file(built: BuiltClosure, tmp_path: Path) -> None:
    with pytest.raises(NixError, match=r"not found at .*install Nix"):
        read_closure(built["runner-app"], nix=str(tmp_path / "no-nix"))


def test_version_and_path_info_of_the_installed_nix(built: BuiltClosure) -> None:
    nix = Nix(extra_args=OFFLINE_NIX_ARGS)
    assert nix.version().compat >= (2, 4)
    doc = nix.path_info([built["runner-lib"]])
    assert set(doc.infos) == {built["runner-lib"], built["runner-base"]}
    assert doc.derivers[built["runner-lib"]].endswith("-runner-lib.drv")
    assert nix.derivation_system(doc.derivers[built["runner-lib"]]) == host_system()


# --- the store helper -----------------------------------------------------------------------


def test_make_closure_builds_every_kind_of_entry(tmp_path: Path) -> None:
    built = make_closure(
        tmp_path,
        [
            busybox_package("helper-busybox"),
            Package(
                "helper-files",
                {
                    "etc/conf": "self=@out@ sh=@helper-busybox@/bin/sh keep=@other@\n",
                    "bin/tool": File("#!/bin/sh\necho tool\n", executable=True),
                    "data/blob": b"\x00\x01binary\xff",
                    "data/empty": Dir(),
                    f"{LONG_DIR}/file.txt": "deep\n",
                    "links/rel": Symlink("../etc/conf"),
                    "links/abs": Symlink("@helper-busybox@/bin/busybox"),
                },
                deps=["helper-busybox"],
            ),
        ],
    )
    files, busybox = Path(built["helper-files"]), Path(built["helper-busybox"])
    assert built.roots == (str(files),)
    conf = (files / "etc/conf").read_text()
    assert conf == f"self={files} sh={busybox}/bin/sh keep=@other@\n"
    assert (files / "bin/tool").stat().st_mode & stat.S_IXUSR
    assert not (files / "etc/conf").stat().st_mode & stat.S_IXUSR
    assert (files / "data/blob").read_bytes() == b"\x00\x01binary\xff"
    assert (files / "data/empty").is_dir() and not any((files / "data/empty").iterdir())
    assert len(f"{files}/{LONG_DIR}/file.txt") > 100
    assert (files / LONG_DIR / "file.txt").read_text() == "deep\n"
    assert os.readlink(files / "links/rel") == "../etc/conf"
    assert os.readlink(files / "links/abs") == f"{busybox}/bin/busybox"
    assert (files / "nix-support/deps").read_text() == f"{busybox}\n"
    ran = subprocess.run(
        [str(busybox / "bin/sh"), "-c", "echo from busybox"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout == "from busybox\n"
    closure = read_closure(str(files))
    assert closure.paths[str(files)].references == (str(busybox),)


def test_build_derivations_returns_paths_in_order(tmp_path: Path) -> None:
    expr = OCIFORGE_PRELUDE + '[ (mk_derivation "order-zz" "echo zz > $out")\n'
    expr += '  (mk_derivation "order-aa" "echo aa > $out") ]\n'
    paths = build_derivations(expr, tmp_path)
    assert [Path(p).read_text() for p in paths] == ["zz\n", "aa\n"]
    assert [p.rsplit("-", 1)[1] for p in paths] == ["zz", "aa"]
