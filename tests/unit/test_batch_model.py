"""images.toml: validation errors name file, entry and field; tags fill in CI variables and
the date; platforms map to OCI's names."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from ociforge.batch.model import load_image_repo
from ociforge.errors import UsageError

CI = {"CI_REGISTRY_IMAGE": "registry.example.com/g/p"}
NOW = datetime.datetime(2026, 12, 3, 2, 0, tzinfo=datetime.timezone.utc)


def repo_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "images.toml"
    path.write_text('[defaults]\nregistry = "$CI_REGISTRY_IMAGE"\n' + text)
    return path


def test_tags_use_ci_variables_and_the_date(tmp_path: Path) -> None:
    path = repo_file(
        tmp_path,
        'tags = ["latest", "nightly-{date}", "${CI_COMMIT_SHORT_SHA}", "d{date:%Y%m%d}"]\n'
        '[images.tools]\nsource = ".#tools"\n',
    )
    [image] = load_image_repo(path).resolve({"CI_COMMIT_SHORT_SHA": "abc12345", **CI}, NOW)
    assert image.destinations() == (
        "registry.example.com/g/p/tools:latest",
        "registry.example.com/g/p/tools:nightly-2026-12-03",
        "registry.example.com/g/p/tools:abc12345",
        "registry.example.com/g/p/tools:d20261203",
    )


def test_an_unset_variable_is_an_error_naming_the_image(tmp_path: Path) -> None:
    path = repo_file(tmp_path, 'tags = ["$CI_PIPELINE_IID"]\n[images.tools]\nsource = "x"\n')
    with pytest.raises(UsageError, match=r"images.tools: .* uses \$CI_PIPELINE_IID"):
        load_image_repo(path).resolve(CI, NOW)


def test_platforms_become_oci_platforms_and_tag_suffixes(tmp_path: Path) -> None:
    path = repo_file(
        tmp_path,
        '[images.b.platforms]\nx86_64-linux = "a"\naarch64-linux = "b"\n"linux/arm/v7" = "c"\n',
    )
    [image] = load_image_repo(path).resolve(CI, NOW)
    assert image.multi_platform
    got = {(c.platform.architecture, c.suffix(), c.source) for c in image.children if c.platform}
    assert got == {("amd64", "amd64", "a"), ("arm64", "arm64", "b"), ("arm", "armv7", "c")}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[images.a]\nsource = "x"\nplatforms = {x86_64-linux = "y"}\n', "images.a: "),
        ('[images.a]\nsource = "x"\ntags = "latest"\n', "images.a.tags: "),
        ('[images.a.platforms]\nmips-plan9 = "x"\n', "images.a: "),
        ('[images.A]\nsource = "x"\n', "images: "),
        ("[images]\n", "images: "),
        ('[images.a]\nsource = "x"\n[images.a]\n', "not valid TOML"),
    ],
)
def test_mistakes_name_the_file_and_the_entry(tmp_path: Path, text: str, where: str) -> None:
    path = repo_file(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        load_image_repo(path)
    assert str(caught.value).startswith(f"{path}: {where}"), caught.value
