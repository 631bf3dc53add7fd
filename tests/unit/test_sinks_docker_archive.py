"""Docker archive writer: tar structure, deterministic headers, refusals before a bad archive."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from ociforge.digest import Digest
from ociforge.errors import ImageError, UsageError
from ociforge.image.config import RuntimeConfig, config_document
from ociforge.image.documents import canonical_bytes
from ociforge.sinks.docker_archive import DockerArchiveWriter, check_repo_tag


def tiny_layer(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def config_for(*layers: bytes) -> bytes:
    config = config_document(
        runtime=RuntimeConfig(cmd=("/hello",)),
        architecture="amd64",
        os="linux",
        variant=None,
        diff_ids=[Digest.of(layer) for layer in layers],
        history_comments=[],
        default_path=None,
    )
    return canonical_bytes(config)


class PipeLike:
    """A write-only, non-seekable sink, like stdout piped into ``podman load``."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)


class RawPipeLike(PipeLike):
    """An unbuffered sink that takes at most 100 bytes per write, as raw pipes may."""

    def write(self, chunk: bytes) -> int:
        return super().write(chunk[:100])


def write_archive(layers: list[bytes], tags: list[str], sink: PipeLike | None = None) -> bytes:
    sink = sink or PipeLike()
    writer = DockerArchiveWriter(sink)
    for layer in layers:
        # chunked at odd sizes so members never line up with the chunks
        writer.add_layer((layer[i : i + 333] for i in range(0, len(layer), 333)), len(layer))
    writer.finish(config_for(*layers), tags)
    return bytes(sink.data)


def test_archive_has_layers_config_manifest_and_repositories() -> None:
    one, two = tiny_layer("a.txt", b"a"), tiny_layer("b.txt", b"bb")
    data = write_archive([one, two], ["localhost/app:1.0", "localhost/app:latest"])
    config = config_for(one, two)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        members = {n: tar.extractfile(n).read() for n in names}  # type: ignore[union-attr]
    config_name = f"{Digest.of(config).hex}.json"
    assert names == [
        "layer-0001.tar",
        "layer-0002.tar",
        config_name,
        "manifest.json",
        "repositories",
    ]
    assert members["layer-0001.tar"] == one
    assert members["layer-0002.tar"] == two
    assert members[config_name] == config
    assert json.loads(members["manifest.json"]) == [
        {
            "Config": config_name,
            "RepoTags": ["localhost/app:1.0", "localhost/app:latest"],
            "Layers": ["layer-0001.tar", "layer-0002.tar"],
        }
    ]
    top = Digest.of(two).hex
    assert json.loads(members["repositories"]) == {"localhost/app": {"1.0": top, "latest": top}}
    assert len(data) % 10240 == 0


def test_headers_are_deterministic() -> None:
    layer = tiny_layer("x", b"x")
    first = write_archive([layer], ["app:1"])
    assert first == write_archive([layer], ["app:1"])
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        for member in tar.getmembers():
            assert (member.mtime, member.uid, member.gid, member.mode) == (0, 0, 0, 0o644)
            assert (member.uname, member.gname) == ("", "")
            assert member.isreg()


def test_partial_writes_are_completed() -> None:
    layer = tiny_layer("x", b"x" * 5000)
    assert write_archive([layer], ["app:1"], RawPipeLike()) == write_archive([layer], ["app:1"])


def test_add_layer_returns_the_diff_id() -> None:
    layer = tiny_layer("x", b"payload")
    writer = DockerArchiveWriter(PipeLike())
    assert writer.add_layer([layer], len(layer)) == Digest.of(layer)


def test_a_stream_that_hashes_itself_is_not_hashed_again() -> None:
    layer = tiny_layer("y", b"payload")
    told = Digest.of(b"what the stream computed")
    writer = DockerArchiveWriter(PipeLike())
    assert writer.add_layer([layer], len(layer), hashed=lambda: told) == told


@pytest.mark.parametrize(
    ("delta", "message"),
    [(1, "longer than the"), (-1, r"store changed.*\(\d+ bytes, \d+ measured\)")],
)
def test_announced_size_must_match(delta: int, message: str) -> None:
    layer = tiny_layer("x", b"x")
    writer = DockerArchiveWriter(PipeLike())
    with pytest.raises(ImageError, match=message):
        writer.add_layer([layer], len(layer) - delta)
    # the archive is now incomplete: nothing more may be added to it
    with pytest.raises(ImageError, match="incomplete"):
        writer.add_layer([layer], len(layer))


def test_compressed_layers_are_refused() -> None:
    gz = gzip.compress(tiny_layer("x", b"x"))
    writer = DockerArchiveWriter(PipeLike())
    with pytest.raises(ImageError, match="must be uncompressed"):
        writer.add_layer([gz[:1], gz[1:]], len(gz))


def test_config_must_list_the_layers_written() -> None:
    one, two = tiny_layer("a", b"a"), tiny_layer("b", b"b")
    writer = DockerArchiveWriter(PipeLike())
    writer.add_layer([one], len(one))
    with pytest.raises(ImageError, match="diff_ids"):
        writer.finish(config_for(one, two), ["app:1"])


def test_bad_repo_tag_is_refused_before_anything_is_written() -> None:
    layer = tiny_layer("a", b"a")
    sink = PipeLike()
    writer = DockerArchiveWriter(sink)
    writer.add_layer([layer], len(layer))
    before = len(sink.data)
    with pytest.raises(UsageError, match="lower-case"):
        writer.finish(config_for(layer), ["Localhost/App:1"])
    assert len(sink.data) == before
    writer.finish(config_for(layer), ["localhost/app:1"])  # still usable after a usage error


def test_finish_twice_is_an_error() -> None:
    writer = DockerArchiveWriter(PipeLike())
    writer.finish(config_for(), [])
    with pytest.raises(ImageError, match="already finished"):
        writer.finish(config_for(), [])


@pytest.mark.parametrize(
    "ref",
    [
        "app:latest",
        "group/app:1.0",
        "localhost/app:v1",
        "localhost:5000/group/sub/app:1.0-rc_1",
        "Registry.Example.COM:443/group/app:x",  # only the host part may have capitals
        "ab__c-d/e.f:T",
    ],
)
def test_valid_repo_tags(ref: str) -> None:
    assert check_repo_tag(ref) == ref


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("app", "needs a tag: use app:latest"),
        ("localhost:5000/app", "needs a tag"),
        ("App:1", "lower-case"),
        ("app:-x", "invalid tag"),
        ("app:" + "x" * 129, "invalid tag"),
        ("app@sha256:" + "a" * 64, "invalid"),
        (":1", "needs a tag"),
        ("bad_host:5000x/app:1", "invalid"),
        ("app/:1", "invalid repository name"),
        ("registry.gitlab.com/Group/app:1", "lower-case"),
        ("a.b__c/e:1", "invalid registry host"),
    ],
)
def test_invalid_repo_tags(ref: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_repo_tag(ref)
