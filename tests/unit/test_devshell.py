"""A dev shell's environment: parsing print-dev-env's JSON, the image Env, the entrypoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ociforge.assemble.devshell import (
    DROPPED_VARIABLES,
    ENTRYPOINT,
    entrypoint_entry,
    entrypoint_script,
    image_env,
)
from ociforge.errors import NixError, UsageError
from ociforge.nix.devenv import DevEnv, parse_dev_env

BUSYBOX = "/nix/store/2l5w1s1m8c9fbm9w0rr3kicm6gxh1155-busybox-test"
TOOLS = "/nix/store/086ymk86f2ymiqlipg9p8y03h82iv6dj-greet-1.0"
ENV_OUT = "/nix/store/vmpyp5mczxbcbj7rmd6gyj0adp5qccna-devshell-env"
GONE = "/nix/store/00000000000000000000000000000000-not-built"
TOP = "/tmp/nix-build-devshell-env.drv-0"


def exported(value: str) -> dict[str, str]:
    return {"type": "exported", "value": value}


def var(value: str) -> dict[str, str]:
    return {"type": "var", "value": value}


# The shape Nix 2.8 prints for a builder = "/bin/bash", outputs = [ "out" ] derivation (recorded
# on Debian's nix-bin, shortened), plus an array, a map and a function as stdenv shells have.
NIX_28_JSON = {
    "bashFunctions": {"greet": ' \n    echo "hi $1"\n'},
    "variables": {
        "BASH": var("/usr/bin/bash"),
        "BASHOPTS": {"type": "unknown"},
        "EPOCHREALTIME": var("1795805555.307916"),
        "EUID": var("0"),
        "GREETING": exported("hello from devshell"),
        "HOME": exported("/homeless-shelter"),
        "IN_NIX_SHELL": exported("impure"),
        "NIX_BUILD_CORES": exported("2"),
        "NIX_BUILD_TOP": exported(TOP),
        "NIX_ENFORCE_PURITY": exported("1"),
        "NIX_LOG_FD": exported("2"),
        "NIX_STORE": exported("/nix/store"),
        "OLDPWD": exported(""),
        "PATH": exported(f"{TOOLS}/bin:{BUSYBOX}/bin"),
        "SSL_CERT_FILE": exported("/no-cert-file.crt"),
        "TEMP": exported(TOP),
        "TEMPDIR": exported(TOP),
        "TERM": exported("xterm-256color"),
        "TMP": exported(TOP),
        "TMPDIR": exported(TOP),
        "buildInputs": exported(f"{BUSYBOX} {GONE}"),
        "builder": exported("/bin/bash"),
        "myArr": {"type": "array", "value": ["a", "b c"]},
        "myMap": {"type": "associative", "value": {"k": "it's"}},
        "name": exported("devshell"),
        "out": exported(ENV_OUT),
        "outputs": exported("out"),
        "plainVar": var("plain"),
        "scratch": exported(f"{TOP}/scratch"),
        "shellHook": exported("greet world; export HOOKED=yes"),
        "system": exported("x86_64-linux"),
    },
}


def parse(doc: object = NIX_28_JSON) -> DevEnv:
    exists = {BUSYBOX, TOOLS, ENV_OUT}
    return parse_dev_env(
        json.dumps(doc), ".#devShells.x86_64-linux.default", path_exists=exists.__contains__
    )


# --- parse_dev_env -----------------------------------------------------------------------


def test_exported_variables_are_separated_from_the_hook_and_shell_state() -> None:
    env = parse()
    assert env.variables["GREETING"] == "hello from devshell"
    assert "shellHook" not in env.variables
    assert env.shell_hook == "greet world; export HOOKED=yes"
    assert "BASH" not in env.variables and env.shell_variables["BASH"] == "/usr/bin/bash"
    assert "BASHOPTS" not in env.shell_variables  # "unknown" carries no value
    assert env.arrays == {"myArr": ("a", "b c")}
    assert env.associative == {"myMap": {"k": "it's"}}
    assert env.bash_functions == {"greet": ' \n    echo "hi $1"\n'}
    assert env.name == "devshell"
    assert env.build_top == TOP


def test_store_paths_are_the_existing_inputs_not_print_dev_envs_own_output() -> None:
    env = parse()
    # PATH and buildInputs name them; GONE does not exist here; ENV_OUT is `out`.
    assert env.store_paths == tuple(sorted([BUSYBOX, TOOLS]))


def test_store_paths_named_only_by_the_hook_count_too() -> None:
    doc = json.loads(json.dumps(NIX_28_JSON))
    doc["variables"]["PATH"] = exported("/usr/bin:/bin")
    doc["variables"]["buildInputs"] = exported("")
    doc["variables"]["shellHook"] = exported(f"source {TOOLS}/share/setup.sh")
    assert parse(doc).store_paths == (TOOLS,)


def test_structured_attrs_outputs_are_read_from_the_associative_array() -> None:
    doc = json.loads(json.dumps(NIX_28_JSON))
    del doc["variables"]["outputs"], doc["variables"]["out"]
    doc["variables"]["outputs"] = {"type": "associative", "value": {"out": ENV_OUT, "dev": GONE}}
    env = parse(doc)
    assert env.output_names == ("dev", "out")
    assert ENV_OUT not in env.store_paths


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"warning: something\n", "printed no JSON"),
        (b'{"bashFunctions": {}}', "without 'variables'"),
        (b'{"variables": {"X": "plain string"}}', "variable X is not an object"),
        (b'{"variables": {}, "bashFunctions": {"f": 1}}', "'bashFunctions' is not a string map"),
    ],
)
def test_unexpected_output_is_a_nix_error_naming_the_installable(data: bytes, message: str) -> None:
    with pytest.raises(NixError, match=message) as info:
        parse_dev_env(data, ".#shell")
    assert ".#shell" in str(info.value)


# --- image_env ---------------------------------------------------------------------------


def test_image_env_keeps_what_a_job_uses_and_replaces_the_sandbox_paths() -> None:
    env = image_env(parse(), home="/root")
    assert env["GREETING"] == "hello from devshell"
    assert env["IN_NIX_SHELL"] == "impure"
    assert env["NIX_STORE"] == "/nix/store"
    assert env["PATH"] == f"{TOOLS}/bin:{BUSYBOX}/bin:/bin:/usr/bin"
    assert env["HOME"] == "/root"
    assert env["TMPDIR"] == "/tmp"
    assert env["NIX_BUILD_TOP"] == "/tmp"
    for gone in ("TEMP", "TMP", "TEMPDIR", "TERM", "NIX_LOG_FD", "NIX_ENFORCE_PURITY", "out"):
        assert gone not in env, gone
    assert "outputs" not in env and "builder" not in env and "OLDPWD" not in env
    assert "shellHook" not in env
    assert "scratch" not in env  # its value is inside the capture's temporary build dir
    assert "SSL_CERT_FILE" not in env  # /no-cert-file.crt
    assert list(env) == sorted(env)


def test_no_value_of_the_image_env_points_into_the_temporary_build_dir() -> None:
    env = image_env(parse(), home="/home/ci", user="ci")
    assert not [k for k, v in env.items() if TOP in v]
    assert env["USER"] == "ci"


def test_a_sandboxed_capture_drops_only_whole_paths_under_its_build_dir() -> None:
    doc = json.loads(json.dumps(NIX_28_JSON))
    doc["variables"]["NIX_BUILD_TOP"] = exported("/build")  # what a sandboxed build sees
    doc["variables"]["PATH"] = exported(f"{TOOLS}/build-tools/bin:{BUSYBOX}/bin")
    doc["variables"]["src"] = exported("/build/source")
    doc["variables"]["flags"] = exported("-O2 -I /build/include")
    env = image_env(parse(doc), home="/root")
    assert env["PATH"].startswith(f"{TOOLS}/build-tools/bin:")
    assert "src" not in env and "flags" not in env


def test_a_numeric_user_sets_no_user_variable() -> None:
    assert "USER" not in image_env(parse(), home="/home/user", user="1000:1000")


def test_every_dropped_variable_has_a_reason() -> None:
    assert all(reason.strip() for reason in DROPPED_VARIABLES.values())
    assert {"HOME", "NIX_BUILD_TOP", "TMPDIR", "out", "PWD", "SHLVL"} <= set(DROPPED_VARIABLES)


def test_a_certificate_variable_pointing_into_the_store_is_kept() -> None:
    doc = json.loads(json.dumps(NIX_28_JSON))
    bundle = f"{TOOLS}/etc/ssl/certs/ca-bundle.crt"
    doc["variables"]["SSL_CERT_FILE"] = exported(bundle)
    assert image_env(parse(doc), home="/root")["SSL_CERT_FILE"] == bundle


def test_path_gets_bin_and_usr_bin_once() -> None:
    doc = json.loads(json.dumps(NIX_28_JSON))
    doc["variables"]["PATH"] = exported("/usr/bin:/bin")
    assert image_env(parse(doc), home="/root")["PATH"] == "/usr/bin:/bin"
    del doc["variables"]["PATH"]
    assert image_env(parse(doc), home="/root")["PATH"] == "/bin:/usr/bin"


# --- entrypoint --------------------------------------------------------------------------

BASH = shutil.which("bash") or "/bin/bash"


def write_entrypoint(tmp_path: Path, env: DevEnv) -> Path:
    script = tmp_path / "entrypoint"
    script.write_bytes(entrypoint_script(env, bash=BASH))
    script.chmod(0o755)
    return script


def run(script: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": os.environ["PATH"]},
        timeout=20,
    )


def test_the_entrypoint_runs_the_hook_then_the_command_with_its_exports(tmp_path: Path) -> None:
    done = run(write_entrypoint(tmp_path, parse()), "sh", "-c", 'echo "hooked=$HOOKED"')
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hooked=yes\n"  # the command's stdout is its own
    assert "hi world" in done.stderr  # the hook used the shell's function; output on stderr
    assert "readonly" not in done.stderr  # bash's own variables (EUID...) are not assigned


def test_the_hook_does_not_eat_the_job_script_on_stdin(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(NIX_28_JSON))
    doc["variables"]["shellHook"] = exported('read -r line; export GOT="$line"')
    done = run(
        write_entrypoint(tmp_path, parse(doc)),
        "sh",
        "-c",
        'echo "got=$GOT"; cat',
        stdin="echo job\n",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "got=\necho job\n"


def test_the_hook_sees_arrays_maps_and_shell_variables(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(NIX_28_JSON))
    hook = 'export A="${myArr[1]}" M="${myMap[k]}" P="$plainVar"'
    doc["variables"]["shellHook"] = exported(hook)
    done = run(write_entrypoint(tmp_path, parse(doc)), "sh", "-c", 'echo "$A|$M|$P"')
    assert done.stdout == "b c|it's|plain\n", done.stderr


def test_without_a_command_the_entrypoint_starts_bash(tmp_path: Path) -> None:
    done = run(write_entrypoint(tmp_path, parse()), stdin='echo "in bash $HOOKED"\n')
    assert done.returncode == 0, done.stderr
    assert done.stdout == "in bash yes\n"


def test_a_shell_without_hook_still_execs_the_command(tmp_path: Path) -> None:
    doc = json.loads(json.dumps(NIX_28_JSON))
    del doc["variables"]["shellHook"]
    script = entrypoint_script(parse(doc), bash=BASH)
    assert b"eval" not in script
    path = tmp_path / "entrypoint"
    path.write_bytes(script)
    path.chmod(0o755)
    assert run(path, "echo", "plain").stdout == "plain\n"


def test_the_entrypoint_needs_bash_from_the_closure() -> None:
    with pytest.raises(UsageError, match="no bin/bash"):
        entrypoint_script(parse(), bash=None)


def test_the_entrypoint_entry_is_an_executable_file_with_bash_as_interpreter() -> None:
    entry = entrypoint_entry(parse(), bash="/nix/store/abc-bash-5.2/bin/bash")
    assert entry.name == ENTRYPOINT == "/bin/ociforge-devshell-entrypoint"
    assert entry.kind == "file" and entry.mode == 0o555
    assert entry.data.startswith(b"#!/nix/store/abc-bash-5.2/bin/bash\n")
    assert entry.data == entrypoint_entry(parse(), bash="/nix/store/abc-bash-5.2/bin/bash").data
