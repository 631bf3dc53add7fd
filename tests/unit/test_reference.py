from __future__ import annotations

import dataclasses

import pytest

from ociforge.digest import Digest
from ociforge.errors import UsageError
from ociforge.reference import Reference, parse_reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("registry.gitlab.com/grp/app", "registry.gitlab.com", "grp/app", None, None),
        (
            "registry.gitlab.com/grp/sub/app:v1.2",
            "registry.gitlab.com",
            "grp/sub/app",
            "v1.2",
            None,
        ),
        ("localhost:5000/app:latest", "localhost:5000", "app", "latest", None),
        ("localhost/app", "localhost", "app", None, None),
        ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b", None, None),
        ("[::1]:5000/app:t", "[::1]:5000", "app", "t", None),
        (f"reg.io/app@{DIGEST}", "reg.io", "app", None, DIGEST),
        (f"reg.io:443/app:v1@{DIGEST}", "reg.io:443", "app", "v1", DIGEST),
        ("Registry.Example.COM/app", "Registry.Example.COM", "app", None, None),
        ("reg.io/a.b_c__d-e--f/x", "reg.io", "a.b_c__d-e--f/x", None, None),
        ("reg.io/app:_Under.score-1", "reg.io", "app", "_Under.score-1", None),
    ],
)
def test_parse_round_trips(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert ref.digest == (Digest.parse(digest) if digest else None)
    assert str(ref) == text
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("alpine", "explicit registry host"),
        ("library/alpine:3", "explicit registry host"),
        ("grp/app", "explicit registry host"),
        ("reg.io/Grp/app", "must be lower-case"),
        ("reg.io/app:", "tag ''"),
        ("reg.io/app:-bad", "tag '-bad'"),
        ("reg.io/app:" + "t" * 129, "1-128"),
        ("reg.io/a..b", "repository component 'a..b'"),
        ("reg.io/a//b", "repository component ''"),
        ("reg.io/app_", "repository component 'app_'"),
        ("reg.io/", "repository path is empty"),
        ("localhost:5000", "repository path after the host is missing"),
        ("reg.io/app@sha256:abc", "digest must be sha256"),
        ("reg.io/app@md5:" + "a" * 32, "digest must be sha256"),
        ("bad_host.io/app", "not a valid host"),
        ("reg.io:port/app", "not a valid host"),
        (" reg.io/app", "whitespace"),
        ("", "empty"),
        ("reg.io/" + "a" * 250, "longer than 255"),
    ],
)
def test_parse_rejects_with_a_reason(text: str, complaint: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_reference(text)
    assert complaint in str(caught.value)
    assert repr(text) in str(caught.value)


def test_name_and_manifest_ref() -> None:
    ref = parse_reference("reg.io:5000/grp/app:v1")
    assert ref.name == "reg.io:5000/grp/app"
    assert ref.manifest_ref == "v1"
    assert parse_reference("reg.io/app").manifest_ref == "latest"
    assert parse_reference(f"reg.io/app:v1@{DIGEST}").manifest_ref == DIGEST


def test_with_tag_replaces_tag_and_drops_digest() -> None:
    ref = parse_reference(f"reg.io/grp/app:v1@{DIGEST}")
    tagged = ref.with_tag("v2")
    assert str(tagged) == "reg.io/grp/app:v2"
    assert str(ref) == f"reg.io/grp/app:v1@{DIGEST}"  # frozen: the original is unchanged
    with pytest.raises(UsageError, match=r"tag '\.bad'"):
        ref.with_tag(".bad")


def test_reference_is_frozen_and_hashable() -> None:
    ref = parse_reference("reg.io/app:v1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "v2"  # type: ignore[misc]
    assert {ref, parse_reference("reg.io/app:v1")} == {ref}
