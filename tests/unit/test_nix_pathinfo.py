"""Reading ``nix path-info --json`` in every shape, and the pure helpers of the nix runner."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from ociforge.errors import NixError, UsageError
from ociforge.nix import (
    Nix,
    StorePathInfo,
    classify_installable,
    closure_from_json_file,
    closure_from_path_info,
    hash_to_sri,
    load_path_info,
    parse_nix_version,
    parse_path_info,
    read_closure,
)
from ociforge.nix.pathinfo import nix32_decode
from ociforge.nix.runner import summarize_nix_stderr

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "pathinfo"
SHAPES = [
    "nix-2.8-list.json",
    "nix-2.19-object.json",
    "nix-2.33-format1.json",
    "nix-2.33-format2.json",
    "nix-2.33-format2-structured-hash.json",
]

S = "/nix/store"
APP = f"{S}/j35r8hbiqbbwphds3y8j19rl9ll7g9a0-app-1.2.3"
LIB_A = f"{S}/5fgmlwbd4lhxnk1wnmq3wyd30sx0xd8x-lib-a-2.1"
LIB_B = f"{S}/73jam3la14x8k2rxb5j485yjdra6afk9-lib-b-0.3"
BASE = f"{S}/gnsb6i1dmhyw2c5lm7aw3k6d76wbmqah-base-1.0"

# What the recorded Nix 2.8 sample says, written out by hand: app's self-reference is gone.
EXPECTED = {
    LIB_A: StorePathInfo(
        LIB_A, "sha256-fV+zOcpfBzcMnk7y4AfuqUj6WqjMh4sY10/mZttBBus=", 928, (BASE,)
    ),
    LIB_B: StorePathInfo(
        LIB_B, "sha256-ksuKubgpARl/L4IbqwvVcbwmIJ4sJDdY9J8FJDWKRxo=", 928, (BASE,)
    ),
    BASE: StorePathInfo(BASE, "sha256-YD5jDy9nvkZl7Tf31sDF/JXS4RYrp8t5y3p9/zkp8Qo=", 456, ()),
    APP: StorePathInfo(
        APP, "sha256-eR4zVHwKSClLdxLYt4q3wbxxqK77NE568cG7EBt9NAM=", 1032, (LIB_A, LIB_B)
    ),
}
APP_DRV = f"{S}/ff15vb14904hy5q2a3g7c91scf3148y1-app-1.2.3.drv"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def entry(**overrides: Any) -> dict[str, Any]:
    """One well-formed list-shaped entry, with some fields replaced."""
    base: dict[str, Any] = {
        "path": BASE,
        "narHash": "sha256-YD5jDy9nvkZl7Tf31sDF/JXS4RYrp8t5y3p9/zkp8Qo=",
        "narSize": 456,
        "references": [],
    }
    base.update(overrides)
    return base


def nix_error(data: object) -> str:
    with pytest.raises(NixError) as info:
        parse_path_info(data)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the three shapes -----------------------------------------------------------------------


@pytest.mark.parametrize("name", SHAPES)
def test_every_shape_reads_to_the_same_infos(name: str) -> None:
    infos = parse_path_info(fixture_text(name))
    assert infos == EXPECTED
    assert list(infos) == sorted(EXPECTED)


@pytest.mark.parametrize("name", SHAPES)
def test_every_shape_gives_full_deriver_paths(name: str) -> None:
    doc = load_path_info(fixture_text(name))
    assert doc.store_dir == S
    assert doc.derivers[APP] == APP_DRV
    assert set(doc.derivers) == set(EXPECTED)


def test_bytes_and_decoded_values_are_accepted() -> None:
    text = fixture_text("nix-2.19-object.json")
    assert parse_path_info(text.encode()) == EXPECTED
    assert parse_path_info(json.loads(text)) == EXPECTED


def test_format2_resolves_base_names_against_its_own_store_dir() -> None:
    doc = {
        "version": 2,
        "storeDir": "/opt/store",
        "info": {
            "aaaa-top": {
                "narHash": "sha256-x",
                "narSize": 1,
                "references": ["aaaa-top", "bbbb-dep"],
            },
            "bbbb-dep": {"narHash": "sha256-y", "narSize": 2, "references": []},
        },
    }
    loaded = load_path_info(doc)
    assert loaded.store_dir == "/opt/store"
    assert loaded.infos["/opt/store/aaaa-top"].references == ("/opt/store/bbbb-dep",)
    closure = closure_from_path_info(loaded.infos, store_dir=loaded.store_dir)
    assert closure.roots == ("/opt/store/aaaa-top",)
    assert closure.store_dir == "/opt/store"


def test_references_are_sorted_and_deduplicated() -> None:
    infos = parse_path_info(
        [
            entry(path=APP, references=[LIB_B, APP, LIB_A, LIB_B]),
            entry(path=LIB_A),
            entry(path=LIB_B),
        ]
    )
    assert infos[APP].references == (LIB_A, LIB_B)


def test_format1_store_dir_of_nix_2_33_entries_is_used() -> None:
    data = {"/gnu/store/aaaa-x": {"narHash": "sha256-x", "narSize": 1, "storeDir": "/gnu/store"}}
    assert load_path_info(data).store_dir == "/gnu/store"


def test_format1_top_level_store_dir_is_accepted() -> None:
    text = fixture_text("nix-2.19-object.json")
    data = {**json.loads(text), "storeDir": S, "version": 1}
    assert parse_path_info(data) == EXPECTED
    relocated = {
        "storeDir": "/gnu/store",
        "/gnu/store/aaaa-x": {"narHash": "sha256-x", "narSize": 1},
    }
    assert load_path_info(relocated).store_dir == "/gnu/store"


# --- malformed input ------------------------------------------------------------------------


def test_invalid_path_in_object_shape_is_named() -> None:
    message = nix_error({APP: None, BASE: entry()})
    assert APP in message
    assert "not a valid store path" in message


def test_invalid_path_in_format2_is_named() -> None:
    message = nix_error({"version": 2, "storeDir": S, "info": {"zzzz-gone": None}})
    assert "zzzz-gone" in message


def test_invalid_path_in_list_shape_is_named() -> None:
    assert APP in nix_error([{"path": APP, "valid": False}])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("not json at all", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        ("42", "must be a list or an object"),
        ([{"narHash": "sha256-x"}], "item 0"),
        ([entry(narHash=None)], "narHash"),
        ([entry(narHash="")], "narHash"),
        ([entry(narSize="456")], "narSize"),
        ([entry(narSize=-1)], "narSize"),
        ([entry(narSize=True)], "narSize"),
        ([entry(references="none")], "references"),
        ([entry(references=[1])], "references"),
        ([entry(references=["/tmp/elsewhere"])], "/tmp/elsewhere"),
        ([entry(references=["../escape"])], "base name"),
        ([entry(path="/nix/store/x/sub")], "directly under /nix/store"),
        ([entry(deriver=5)], "deriver"),
        ([entry(), entry()], "twice"),
        ({APP: "text"}, "not an object"),
        ({"version": 99, "storeDir": S, "info": {}}, "version 99"),
        ({"version": 2, "storeDir": S, "info": []}, "'info' is not an object"),
        ({"version": 2, "storeDir": "relative", "info": {}}, "storeDir"),
        (
            {"version": 2, "info": {"a-x": {"narHash": {"algorithm": "sha256"}, "narSize": 1}}},
            "hash",
        ),
    ],
)
def test_malformed_input_gives_a_one_line_nix_error(data: object, expected: str) -> None:
    assert expected in nix_error(data)


def test_inconsistent_store_dirs_are_refused() -> None:
    data = {
        "/a/store/aaaa-x": {"narHash": "sha256-x", "narSize": 1, "storeDir": "/a/store"},
        "/b/store/bbbb-y": {"narHash": "sha256-x", "narSize": 1, "storeDir": "/b/store"},
    }
    assert "inconsistent storeDir" in nix_error(data)


# --- structured hashes ----------------------------------------------------------------------

# Nix's own test data: json-2/empty_impure.json (base16) vs json-1/impure.json (SRI).
NIX_TEST_HEX = "15e3c560894cbb27085cf65b5a2ecb18488c999497f4531b6907a7581ce6d527"
NIX_TEST_SRI = "sha256-FePFYIlMuycIXPZbWi7LGEiMmZSX9FMbaQenWBzm1Sc="


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"algorithm": "sha256", "format": "base16", "hash": NIX_TEST_HEX}, NIX_TEST_SRI),
        ({"algorithm": "sha256", "format": "base64", "hash": NIX_TEST_SRI[7:]}, NIX_TEST_SRI),
        ({"algorithm": "sha256", "format": "sri", "hash": NIX_TEST_SRI}, NIX_TEST_SRI),
        # `nix-store --add` of "hello\n": its ca hash (nix32) equals its narHash (SRI).
        (
            {
                "algorithm": "sha256",
                "format": "nix32",
                "hash": "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
            },
            "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=",
        ),
    ],
)
def test_structured_hashes_become_sri(value: dict[str, str], expected: str) -> None:
    assert hash_to_sri(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"algorithm": "sha999", "format": "base16", "hash": "00"}, "unknown hash algorithm"),
        ({"algorithm": "sha256", "format": "base16", "hash": "abcd"}, "expected 32"),
        ({"algorithm": "sha256", "format": "base16", "hash": "zz" * 32}, "not valid base16"),
        ({"algorithm": "sha256", "format": "rot13", "hash": "x"}, "unknown hash format"),
        ({"algorithm": "sha256", "format": "nix32", "hash": "e" * 52}, "invalid character"),
        ("md5-not/base64!", "not valid base64"),
        ("sha256:abc", "not an SRI hash"),
        (17, "string or an object"),
    ],
)
def test_bad_hashes_are_refused(value: object, expected: str) -> None:
    with pytest.raises(NixError, match=expected):
        hash_to_sri(value)


def test_nix32_decoding_matches_nix() -> None:
    # `nix-hash --type sha256 --to-base32 <NIX_TEST_HEX>` on Nix 2.8.
    decoded = nix32_decode("09ymwqf5i9q7d4dm7x4pjjcqqj0qrcp5lnznbh42gfsci5hcbqqm")
    assert decoded.hex() == NIX_TEST_HEX


# --- closures -------------------------------------------------------------------------------


def test_closure_roots_default_to_unreferenced_paths() -> None:
    closure = closure_from_path_info(EXPECTED, system="x86_64-linux")
    assert closure.roots == (APP,)
    assert closure.system == "x86_64-linux"
    assert closure.nar_size == 928 + 928 + 456 + 1032
    assert closure.graph[APP] == (LIB_A, LIB_B)


def test_several_unreferenced_paths_are_sorted_roots() -> None:
    infos = parse_path_info([entry(path=LIB_B), entry(path=LIB_A), entry()])
    assert closure_from_path_info(infos).roots == (LIB_A, LIB_B, BASE)


def test_explicit_roots_keep_their_order_and_only_their_closure() -> None:
    closure = closure_from_path_info(EXPECTED, [LIB_B, LIB_A, LIB_B])
    assert closure.roots == (LIB_B, LIB_A)
    assert set(closure.paths) == {LIB_A, LIB_B, BASE}


def test_missing_reference_is_named() -> None:
    infos = parse_path_info([entry(path=APP, references=[LIB_A])])
    with pytest.raises(NixError, match=f"{APP} references {LIB_A}, which is missing"):
        closure_from_path_info(infos)


def test_unknown_root_is_named() -> None:
    with pytest.raises(NixError, match=f"root {S}/nope is not in the path-info data"):
        closure_from_path_info(EXPECTED, [f"{S}/nope"])


def test_reference_cycle_without_roots_is_refused() -> None:
    infos = parse_path_info(
        [entry(path=LIB_A, references=[LIB_B]), entry(path=LIB_B, references=[LIB_A])]
    )
    with pytest.raises(NixError, match="reference cycle"):
        closure_from_path_info(infos)


def test_empty_path_info_is_refused() -> None:
    with pytest.raises(NixError, match="no store paths"):
        closure_from_path_info(parse_path_info("[]"))


def test_closure_from_json_file(tmp_path: Path) -> None:
    closure = closure_from_json_file(FIXTURES / "nix-2.33-format2.json")
    assert closure.roots == (APP,)
    assert dict(closure.paths) == EXPECTED
    assert closure.system is None
    only_lib = closure_from_json_file(
        FIXTURES / "nix-2.8-list.json", [LIB_A], system="aarch64-linux"
    )
    assert set(only_lib.paths) == {LIB_A, BASE}
    assert only_lib.system == "aarch64-linux"


def test_closure_from_json_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read closure JSON"):
        closure_from_json_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(UsageError, match=f"{bad}: path-info output is not valid JSON"):
        closure_from_json_file(bad)


# --- runner helpers that need no nix --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "flavour", "compat", "drv_syntax", "derivation_show"),
    [
        ("nix (Nix) 2.8.0\n", "nix", (2, 8), False, False),
        ("nix (Nix) 2.13.3", "nix", (2, 13), True, False),
        ("nix (Nix) 2.19.2", "nix", (2, 19), True, True),
        ("nix (Nix) 2.33.0pre20251201_abcdef", "nix", (2, 33), True, True),
        ("nix (Lix, like Nix) 2.91.1", "lix", (2, 18), True, True),
        ("nix (Determinate Nix 3.6.2) 2.29.0", "determinate", (2, 29), True, True),
    ],
)
def test_nix_version_parsing(
    text: str,
    flavour: str,
    compat: tuple[int, int],
    drv_syntax: bool,
    derivation_show: bool,
) -> None:
    version = parse_nix_version(text)
    assert (version.flavour, version.compat) == (flavour, compat)
    assert version.has_drv_outputs_syntax is drv_syntax
    assert version.has_derivation_show is derivation_show


def test_unreadable_nix_version_is_an_error() -> None:
    with pytest.raises(NixError, match="cannot read the nix version"):
        parse_nix_version("something else entirely")


# Recorded from Nix 2.8 (`nix build .#bad` of a builder that prints "oops" and exits 3).
NIX_28_BUILD_FAILURE = """\
warning: Git tree '/tmp/fl' is dirty
building '/nix/store/8c2v9w0a9aijgi8p7jrmh7npq443byhp-bad.drv'...
error: builder for '/nix/store/8c2v9w0a9aijgi8p7jrmh7npq443byhp-bad.drv' failed with exit code 3;
       last 1 log lines:
       > oops
       For full logs, run 'nix log /nix/store/8c2v9w0a9aijgi8p7jrmh7npq443byhp-bad.drv'.
"""

# The layout newer Nix prints for evaluation errors, with colours.
NEW_NIX_EVAL_FAILURE = (
    "\x1b[31;1merror:\x1b[0m\n"
    "       … while evaluating the attribute 'packages.x86_64-linux.nope'\n"
    "\n"
    "       (stack trace truncated; use '--show-trace' to show the full trace)\n"
    "\n"
    "       error: attribute '\x1b[35;1mnope\x1b[0m' missing\n"
)


def test_stderr_summary_of_a_failed_build() -> None:
    summary = summarize_nix_stderr(NIX_28_BUILD_FAILURE)
    assert summary == (
        "builder for '/nix/store/8c2v9w0a9aijgi8p7jrmh7npq443byhp-bad.drv' failed with exit "
        "code 3 (last log line: oops)"
    )


def test_stderr_summary_strips_colours_and_finds_the_message_after_a_trace() -> None:
    assert summarize_nix_stderr(NEW_NIX_EVAL_FAILURE) == "attribute 'nope' missing"


def test_stderr_summary_without_error_lines() -> None:
    assert summarize_nix_stderr("warning: x\nsomething broke\n") == "something broke"
    assert summarize_nix_stderr("") == "no error message"


def test_classify_installable(tmp_path: Path) -> None:
    link = tmp_path / "result"
    link.symlink_to(f"{APP}/bin")
    assert classify_installable(APP) == ("store-path", APP)
    assert classify_installable(f"{APP}/bin/app") == ("store-path", APP)
    assert classify_installable(str(link)) == ("store-path", APP)
    assert classify_installable(APP_DRV) == ("drv", APP_DRV)
    for ref in [".#default", "path:/x#a", "github:o/r#a", f"{APP_DRV}^*", "flake:nixpkgs", "."]:
        assert classify_installable(ref) == ("installable", ref)


# --- the runner against a fake nix: the version-dependent command lines ---------------------

FAKE_NIX = """\
#!{python}
import json, sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
if "--version" in args:
    print({version!r})
elif any(a.endswith("#fail") for a in args):
    sys.stderr.write("\\x1b[31;1merror:\\x1b[0m something \\x1b[1mbad\\x1b[0m\\n")
    sys.exit(1)
elif "build" in args:
    print(json.dumps([{{"drvPath": {drv!r}, "outputs": {{"out": {out!r}}}}}]))
elif "path-info" in args and "2.99" in {version!r} and "--json-format" not in args:
    sys.stderr.write("error: '--json' needs '--json-format'\\n")
    sys.exit(1)
elif "path-info" in args:
    sys.stdout.write(open({path_info!r}).read())
else:
    drv = {{{drv_base!r}: {{"system": "aarch64-linux"}}}}
    print(json.dumps({{"version": 4, "derivations": drv}}))
"""


def fake_nix(tmp_path: Path, version: str) -> tuple[str, Path]:
    log = tmp_path / "calls.jsonl"
    script = tmp_path / "nix"
    script.write_text(
        FAKE_NIX.format(
            python=sys.executable,
            log=str(log),
            version=version,
            drv=APP_DRV,
            drv_base=APP_DRV.rsplit("/", 1)[1],
            out=APP,
            path_info=str(FIXTURES / "nix-2.33-format1.json"),
        )
    )
    script.chmod(0o755)
    return str(script), log


def calls(log: Path) -> dict[str, list[str]]:
    """First argument after the feature flags -> the whole command line."""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return {argv[2]: argv for argv in lines}


@pytest.mark.parametrize(
    ("version", "build_target", "show"),
    [
        ("nix (Nix) 2.8.0", APP_DRV, "show-derivation"),
        ("nix (Nix) 2.33.1", f"{APP_DRV}^*", "derivation"),
        ("nix (Lix, like Nix) 2.91.1", f"{APP_DRV}^*", "derivation"),
    ],
)
def test_runner_adapts_its_command_lines_to_the_nix_version(
    tmp_path: Path,
    version: str,
    build_target: str,
    show: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The .drv may exist in this machine's store (other tests build it): make the runner fall
    # back to asking nix, the path under test here.
    import ociforge.nix.runner as runner

    def no_drv_file(*args: object, **kw: object) -> object:
        raise OSError("not in this test")

    monkeypatch.setattr(runner, "open", no_drv_file, raising=False)
    nix, log = fake_nix(tmp_path, version)
    closure = read_closure(APP_DRV, nix=nix, extra_args=["--option", "substituters", ""])
    assert closure.roots == (APP,)
    assert dict(closure.paths) == EXPECTED
    assert closure.system == "aarch64-linux"
    seen = calls(log)
    assert seen["--version"][:2] == ["--extra-experimental-features", "nix-command flakes"]
    assert seen["build"][-1] == build_target
    assert "--json-format" not in seen["path-info"]
    assert seen["path-info"][-1] == APP
    assert "--option" in seen["build"] and "--option" in seen["path-info"]
    assert seen[show][-1] == APP_DRV


@pytest.fixture
def served_drv(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deriver's system is read from its .drv file (no nix call, so no version probe).
    The fixture's .drv is in no real store: serve it, so tests do not depend on this machine."""
    import io

    import ociforge.nix.runner as runner

    real_open = open

    def drv_file(path: str, *args: object, **kw: object) -> object:
        if path == APP_DRV:
            return io.BytesIO(b'Derive([],[],[],"aarch64-linux","/bin/sh",[],[])')
        return real_open(path, *args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(runner, "open", drv_file, raising=False)


@pytest.mark.parametrize("installable", [APP, ".#default"])
def test_store_paths_and_flakes_need_no_version_probe(
    tmp_path: Path, installable: str, served_drv: None
) -> None:
    nix, log = fake_nix(tmp_path, "nix (Nix) 2.33.1")
    assert read_closure(installable, nix=nix).roots == (APP,)
    assert "--version" not in calls(log)


def test_a_nix_that_refuses_the_bare_json_flag_is_asked_again(
    tmp_path: Path, served_drv: None
) -> None:
    nix, log = fake_nix(tmp_path, "nix (Nix) 2.99.0")
    assert dict(read_closure(APP, nix=nix).paths) == EXPECTED
    tried = [json.loads(line) for line in log.read_text().splitlines()]
    assert [("--json-format" in argv) for argv in tried] == [False, True]


def test_runner_turns_nix_failure_into_one_line(tmp_path: Path) -> None:
    nix, _ = fake_nix(tmp_path, "nix (Nix) 2.8.0")
    with pytest.raises(NixError, match=r"^nix build \.#fail failed: something bad$"):
        read_closure(".#fail", nix=nix)
    assert Nix(nix).version().text == "nix (Nix) 2.8.0"
