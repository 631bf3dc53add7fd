"""The SBOM of a closure: Nix's name/version split, narHash in hex, same closure same bytes."""

from __future__ import annotations

import base64
import json

import pytest

from ociforge.nix import Closure, StorePathInfo
from ociforge.supply.sbom import Subject, make_sbom, nar_hash_hex, parse_drv_name

HELLO = "/nix/store/" + "a" * 32 + "-hello-2.12"
GLIBC = "/nix/store/" + "b" * 32 + "-glibc-2.39-52"
HEX = bytes(range(32)).hex()


def closure(hello_hash: str = "sha256-" + base64.b64encode(bytes(range(32))).decode()) -> Closure:
    return Closure(
        roots=(HELLO,),
        paths={
            HELLO: StorePathInfo(HELLO, hello_hash, 10, (GLIBC,)),
            GLIBC: StorePathInfo(GLIBC, "sha256:" + HEX, 5, ()),
        },
    )


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("hello-2.12", ("hello", "2.12")),
        ("glibc-2.39-52", ("glibc", "2.39-52")),
        ("perl5.38.2-URI-5.21", ("perl5.38.2-URI", "5.21")),
        ("source", ("source", None)),
        ("nix-shell-env", ("nix-shell-env", None)),
    ],
)
def test_names_split_as_nix_parses_them(name: str, split: tuple[str, str | None]) -> None:
    assert parse_drv_name(name) == split


def test_nar_hashes_of_every_shape_become_hex() -> None:
    assert nar_hash_hex("sha256-" + base64.b64encode(bytes(range(32))).decode()) == HEX
    assert nar_hash_hex("sha256:" + HEX) == HEX


@pytest.mark.parametrize("fmt", ["cyclonedx", "spdx"])
def test_the_same_closure_gives_the_same_bytes(fmt: str) -> None:
    subject = Subject("registry.example/app", "sha256:" + "1" * 64)
    first = make_sbom(closure(), subject, fmt)
    assert make_sbom(closure(), subject, fmt) == first
    other = make_sbom(closure("sha256:" + "f" * 64), subject, fmt)
    assert other != first  # the content decides the bytes (and the serial number)


def test_cyclonedx_lists_every_path_with_its_hash_and_dependencies() -> None:
    doc = json.loads(make_sbom(closure(), Subject("app", "sha256:" + "1" * 64)))
    components = {c["bom-ref"]: c for c in doc["components"]}
    assert components[HELLO]["name"] == "hello" and components[HELLO]["version"] == "2.12"
    assert components[GLIBC]["hashes"] == [{"alg": "SHA-256", "content": HEX}]
    deps = {d["ref"]: d.get("dependsOn", []) for d in doc["dependencies"]}
    assert deps[HELLO] == [GLIBC]
    assert deps["sha256:" + "1" * 64] == [HELLO]
    assert doc["serialNumber"].startswith("urn:uuid:")
