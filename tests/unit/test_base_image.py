"""The base image model without I/O: config merging, strict config reading, blob checks, and
the manifest an image on a base gets."""

from __future__ import annotations

import json

import pytest

from ociforge.assemble.base import BaseImage, merged_runtime, verified
from ociforge.digest import Digest
from ociforge.errors import DigestMismatchError, ImageError
from ociforge.image.config import RuntimeConfig
from ociforge.image.documents import Descriptor, ImageConfig, parse_image_config

LAYER = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", Digest.of(b"blob"), 4)


def _config(**container: object) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": container,
            "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(b"tar"))]},
            "history": [{"created_by": "x"}, {"created_by": "y", "empty_layer": True}],
        }
    ).encode()


def test_paths_join_ours_first_and_docker_entrypoint_rules() -> None:
    base = parse_image_config(
        _config(Env=["PATH=/usr/bin:/bin", "A=base"], Entrypoint=["/e"], Cmd=["c"], User="7")
    )
    merged = merged_runtime(base, RuntimeConfig(env={"A": "ours"}), "/bin:/nix/x/bin")
    assert merged.env == {"PATH": "/bin:/nix/x/bin:/usr/bin", "A": "ours"}
    assert (merged.entrypoint, merged.cmd, merged.user) == (("/e",), ("c",), "7")
    ours = merged_runtime(base, RuntimeConfig(entrypoint=("/mine",)), None)
    assert (ours.entrypoint, ours.cmd, ours.env["PATH"]) == (("/mine",), None, "/usr/bin:/bin")
    cmd_only = merged_runtime(base, RuntimeConfig(cmd=("run",)), None)
    assert (cmd_only.entrypoint, cmd_only.cmd) == (("/e",), ("run",))


def test_a_config_is_read_strictly() -> None:
    with pytest.raises(ImageError, match=r"config\.Env"):
        parse_image_config(_config(Env="PATH=/bin"))
    with pytest.raises(ImageError, match=r"history\.0\.empty_layer"):
        data = json.loads(_config())
        data["history"][0]["empty_layer"] = "yes"
        parse_image_config(json.dumps(data).encode())


def test_diff_ids_must_match_the_layers() -> None:
    config = parse_image_config(_config())
    with pytest.raises(ImageError, match=r"1 layers .* its manifest 2"):
        BaseImage("r/b:1", Digest.of(b"m"), (LAYER, LAYER), config, lambda d: iter([b""]))


def test_blobs_are_checked_while_they_stream() -> None:
    assert b"".join(verified([b"bl", b"ob"], LAYER, "base")) == b"blob"
    with pytest.raises(DigestMismatchError, match="does not match its digest"):
        list(verified([b"blub"], LAYER, "base"))
    with pytest.raises(ImageError, match="longer than the 4 bytes"):
        list(verified([b"blob", b"!"], LAYER, "base"))


def test_an_image_config_keeps_history_and_variables_in_order() -> None:
    config = parse_image_config(_config(Env=["B=1", "A=2"]))
    assert isinstance(config, ImageConfig)
    assert config.env == (("B", "1"), ("A", "2"))
    assert [h.get("empty_layer", False) for h in config.history] == [False, True]
