"""Config assembly: platform mapping, option parsing, and the config bytes they give."""

from __future__ import annotations

import json

import pytest

from ociforge.digest import Digest
from ociforge.errors import UsageError
from ociforge.image.config import (
    RuntimeConfig,
    config_document,
    parse_env_items,
    parse_label_items,
    parse_port_items,
    platform_for_system,
)
from ociforge.image.documents import canonical_bytes

L1 = Digest.of(b"layer one")
L2 = Digest.of(b"layer two")


@pytest.mark.parametrize(
    ("system", "platform"),
    [
        ("x86_64-linux", ("amd64", "linux", None)),
        ("aarch64-linux", ("arm64", "linux", "v8")),
        ("i686-linux", ("386", "linux", None)),
        ("armv7l-linux", ("arm", "linux", "v7")),
        ("armv6l-linux", ("arm", "linux", "v6")),
        ("riscv64-linux", ("riscv64", "linux", None)),
        ("powerpc64le-linux", ("ppc64le", "linux", None)),
        ("s390x-linux", ("s390x", "linux", None)),
        ("aarch64-darwin", ("arm64", "darwin", "v8")),
    ],
)
def test_platform_for_system(system: str, platform: tuple[str, str, str | None]) -> None:
    assert platform_for_system(system) == platform


@pytest.mark.parametrize("system", ["sparc64-linux", "x86_64-plan9", "x86_64", ""])
def test_unknown_system_tells_to_pass_arch_and_os(system: str) -> None:
    with pytest.raises(UsageError, match="--arch and --os"):
        platform_for_system(system)


def test_parse_env_items() -> None:
    assert parse_env_items(["A=1", "B=x=y", "C=", "A=2"]) == {"A": "2", "B": "x=y", "C": ""}


@pytest.mark.parametrize("item", ["NOVALUE", "=value", "HAS SPACE=1", ""])
def test_parse_env_items_names_the_bad_item(item: str) -> None:
    with pytest.raises(UsageError, match="--env") as info:
        parse_env_items(["OK=1", item])
    assert repr(item) in str(info.value)


def test_label_errors_name_the_label_option() -> None:
    assert parse_label_items(["org.opencontainers.image.source=https://x/y"]) == {
        "org.opencontainers.image.source": "https://x/y"
    }
    with pytest.raises(UsageError, match="--label value 'nolabel'"):
        parse_label_items(["nolabel"])


def test_parse_port_items() -> None:
    assert parse_port_items(["80", "53/udp", "8080/TCP", "80/tcp", "9/sctp"]) == (
        "80/tcp",
        "53/udp",
        "8080/tcp",
        "9/sctp",
    )


@pytest.mark.parametrize("item", ["0", "65536", "http", "80/icmp", "80-90", ""])
def test_parse_port_items_refuses(item: str) -> None:
    with pytest.raises(UsageError, match="--expose"):
        parse_port_items([item])


def config_json(runtime: RuntimeConfig, **kwargs: object) -> dict[str, object]:
    options: dict[str, object] = {
        "runtime": runtime,
        "architecture": "amd64",
        "os": "linux",
        "variant": None,
        "diff_ids": [L1, L2],
        "history_comments": ["store paths: a", "customisation"],
        "default_path": "/nix/store/x-hello/bin:/bin",
    }
    options.update(kwargs)
    config = config_document(**options)  # type: ignore[arg-type]
    result: dict[str, object] = json.loads(canonical_bytes(config))
    return result


def test_config_document_full() -> None:
    runtime = RuntimeConfig(
        entrypoint=("/bin/hello",),
        cmd=("--greeting", "hi"),
        env={"LANG": "C.UTF-8"},
        workdir="/data",
        user="1000:1000",
        labels={"org.opencontainers.image.title": "hello"},
        exposed_ports=("80", "53/udp"),
        volumes=("/data",),
    )
    assert config_json(runtime, variant="v8", architecture="arm64") == {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
        "created": "1970-01-01T00:00:01Z",
        "config": {
            "Entrypoint": ["/bin/hello"],
            "Cmd": ["--greeting", "hi"],
            "Env": ["PATH=/nix/store/x-hello/bin:/bin", "LANG=C.UTF-8"],
            "WorkingDir": "/data",
            "User": "1000:1000",
            "Labels": {"org.opencontainers.image.title": "hello"},
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
            "Volumes": {"/data": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": [str(L1), str(L2)]},
        "history": [
            {
                "created": "1970-01-01T00:00:01Z",
                "created_by": "ociforge",
                "comment": "store paths: a",
            },
            {
                "created": "1970-01-01T00:00:01Z",
                "created_by": "ociforge",
                "comment": "customisation",
            },
        ],
    }


def test_user_path_wins_over_default_path() -> None:
    config = config_json(RuntimeConfig(env={"PATH": "/mine", "X": "1"}))
    assert config["config"] == {"Env": ["PATH=/mine", "X=1"]}


def test_no_default_path_and_no_env_gives_no_env() -> None:
    assert config_json(RuntimeConfig(), default_path=None)["config"] == {}


def test_explicitly_empty_cmd_is_kept() -> None:
    config = config_json(RuntimeConfig(entrypoint=("/bin/sh",), cmd=()), default_path=None)
    assert config["config"] == {"Entrypoint": ["/bin/sh"], "Cmd": []}


def test_one_history_entry_per_layer_even_without_comments() -> None:
    history = config_json(RuntimeConfig(), history_comments=[])["history"]
    assert [h["comment"] for h in history] == ["layer 1", "layer 2"]  # type: ignore[attr-defined]


def test_created_is_used_everywhere_and_validated() -> None:
    config = config_json(RuntimeConfig(), created="2024-05-01T12:30:00.5+02:00")
    assert config["created"] == "2024-05-01T12:30:00.5+02:00"
    assert {h["created"] for h in config["history"]} == {"2024-05-01T12:30:00.5+02:00"}  # type: ignore[attr-defined]
    for bad in ["2024-05-01", "2024-02-30T00:00:00Z", "yesterday", "2024-05-01 12:00:00Z"]:
        with pytest.raises(UsageError, match="RFC 3339"):
            config_json(RuntimeConfig(), created=bad)


def test_same_inputs_give_same_bytes() -> None:
    runtime = RuntimeConfig(env={"B": "2", "A": "1"}, labels={"z": "1", "a": "2"})
    first = canonical_bytes(
        config_document(
            runtime=runtime,
            architecture="amd64",
            os="linux",
            variant=None,
            diff_ids=[L1],
            history_comments=["x"],
            default_path=None,
        )
    )
    second = canonical_bytes(
        config_document(
            runtime=runtime,
            architecture="amd64",
            os="linux",
            variant=None,
            diff_ids=[L1],
            history_comments=["x"],
            default_path=None,
        )
    )
    assert first == second
    # The env order is the user's order (it is a list), labels are a map and come out sorted.
    assert b'"Env":["B=2","A=1"]' in first
    assert b'"Labels":{"a":"2","z":"1"}' in first


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        (RuntimeConfig(workdir="data"), "working directory must be an absolute path"),
        (RuntimeConfig(volumes=("/ok", "rel")), "volume must be an absolute path"),
        (RuntimeConfig(env={"A B": "1"}), "environment variable name"),
        (RuntimeConfig(exposed_ports=("http",)), "'http'"),
        # From the API, past mypy: the config is plain JSON, so these would reach the image.
        (RuntimeConfig(user=1000), "user must be text"),  # type: ignore[arg-type]
        (RuntimeConfig(stop_signal=9), "stop signal must be text"),  # type: ignore[arg-type]
        (RuntimeConfig(entrypoint=("a", 1)), "entrypoint: every item"),  # type: ignore[arg-type]
        (RuntimeConfig(cmd="echo hi"), "cmd must be a list"),  # type: ignore[arg-type]
        (RuntimeConfig(labels={"v": 2}), "--label 'v'"),  # type: ignore[dict-item]
        (RuntimeConfig(env={"A": None}), "--env 'A'"),  # type: ignore[dict-item]
    ],
)
def test_bad_runtime_options_are_usage_errors(runtime: RuntimeConfig, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        config_json(runtime)


def test_history_comments_must_match_layers() -> None:
    with pytest.raises(UsageError, match="1 history comments for 2 layers"):
        config_json(RuntimeConfig(), history_comments=["only one"])
    with pytest.raises(UsageError, match="--arch"):
        config_json(RuntimeConfig(), architecture="")
