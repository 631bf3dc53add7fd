"""The GitLab child pipeline generator, fed its typed input directly: what GitLab will read
(parsed back with PyYAML), and the inputs it refuses. The pipeline also runs for real, with
gitlab-ci-local, in tests/integration/test_ci_gitlab.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import ociforge
from ociforge import GitlabOptions, ImageJob, IndexJob, UsageError, gitlab_pipeline
from ociforge.ci_gitlab import RETRY_WHEN, read_jobs_file

IMAGES = [
    ImageJob("app", "x86_64-linux", ('ociforge push .#app "$CI_REGISTRY_IMAGE/app:amd64"',)),
    ImageJob("app", "aarch64-linux", ("ociforge push .#app-arm $CI_REGISTRY_IMAGE/app:arm64",)),
    ImageJob("tools", "x86_64-linux", ("ociforge push .#tools $CI_REGISTRY_IMAGE/tools",)),
]
INDEXES = [IndexJob("app", ("x86_64-linux", "aarch64-linux"), ("ociforge index ...",))]


def pipeline(options: GitlabOptions | None = None) -> dict[str, Any]:
    parsed: dict[str, Any] = yaml.safe_load(gitlab_pipeline(IMAGES, INDEXES, options))
    return parsed


def test_one_job_per_image_and_platform_on_its_architecture() -> None:
    doc = pipeline()
    assert list(doc) == [
        "stages",
        "app:x86_64-linux",
        "app:aarch64-linux",
        "tools:x86_64-linux",
        "app:index",
    ]
    arm = doc["app:aarch64-linux"]
    assert arm["tags"] == ["saas-linux-small-arm64"]
    assert doc["app:x86_64-linux"]["tags"] == ["saas-linux-small-amd64"]
    assert arm["needs"] == []  # starts at once, not after a stage
    assert arm["image"] == "$OCIFORGE_IMAGE"
    assert arm["variables"] == {"OCIFORGE_IMAGE_NAME": "app", "OCIFORGE_PLATFORM": "aarch64-linux"}
    assert doc["app:x86_64-linux"]["script"] == [IMAGES[0].script[0]]  # quotes kept as written


def test_index_jobs_wait_only_for_their_own_children() -> None:
    index = pipeline()["app:index"]
    assert index["stage"] == "indexes"
    assert index["needs"] == ["app:x86_64-linux", "app:aarch64-linux"]
    assert "tools:x86_64-linux" not in index["needs"]


def test_retries_only_runner_failures() -> None:
    doc = pipeline()
    for name in ("app:x86_64-linux", "app:index"):
        assert doc[name]["retry"] == {"max": 2, "when": list(RETRY_WHEN)}
    assert "script_failure" not in RETRY_WHEN
    assert "retry" not in pipeline(GitlabOptions(retries=0))["app:index"]


def test_options_leave_the_image_out_and_set_runner_tags() -> None:
    options = GitlabOptions(
        job_image=None, runner_tags={"aarch64-linux": ("arm", "big")}, index_tags=("small",)
    )
    doc = pipeline(options)
    assert all("image" not in doc[name] for name in doc if name != "stages")
    assert doc["app:aarch64-linux"]["tags"] == ["arm", "big"]
    assert "tags" not in doc["app:x86_64-linux"]
    assert doc["app:index"]["tags"] == ["small"]


def test_the_same_input_gives_the_same_bytes() -> None:
    assert gitlab_pipeline(IMAGES, INDEXES) == gitlab_pipeline(list(IMAGES), list(INDEXES))


@pytest.mark.parametrize(
    ("images", "indexes", "message"),
    [
        ([], [], "no image jobs"),
        ([ImageJob("app", "x86_64", ("x",))], [], "not a Nix system"),
        ([ImageJob("app", "x86_64-linux", ())], [], "script must be"),
        ([IMAGES[0], IMAGES[0]], [], "two jobs for x86_64-linux"),
        ([IMAGES[0]], [IndexJob("app", ("aarch64-linux",), ("x",))], "aarch64-linux"),
        ([ImageJob("a b", "x86_64-linux", ("x",))], [], "not an image name"),
    ],
)
def test_bad_input_is_refused_naming_the_job(
    images: list[ImageJob], indexes: list[IndexJob], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        gitlab_pipeline(images, indexes)


def test_retries_are_gitlabs_0_to_2() -> None:
    with pytest.raises(UsageError, match="0, 1 or 2"):
        GitlabOptions(retries=3)


def test_jobs_file_is_the_same_input(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"image": j.image, "platform": j.platform, "script": list(j.script)}
                    for j in IMAGES
                ],
                "indexes": [
                    {
                        "image": "app",
                        "platforms": ["x86_64-linux", "aarch64-linux"],
                        "script": ["ociforge index ..."],
                    }
                ],
            }
        )
    )
    images, indexes = read_jobs_file(str(path))
    assert gitlab_pipeline(images, indexes) == gitlab_pipeline(IMAGES, INDEXES)


def test_a_bad_jobs_file_names_the_file_and_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"images": [{"image": "app", "platform": 1, "script": []}]}))
    with pytest.raises(UsageError, match=r"jobs.json: images\[0\].platform must be a string"):
        read_jobs_file(str(path))


def test_the_scale_out_example_triggers_what_its_generate_job_writes() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "image-repo" / "scale-out"
    parent = yaml.safe_load((example / ".gitlab-ci.yml").read_text())
    generate = parent["generate-images"]
    assert generate["script"] == ["ociforge ci gitlab images.toml > images.yml"]
    assert generate["artifacts"]["paths"] == ["images.yml"]
    include = parent["images"]["trigger"]["include"]
    assert include == [{"artifact": "images.yml", "job": "generate-images"}]
    env = {"CI_REGISTRY_IMAGE": "registry.example.com/group/images", "CI_COMMIT_SHORT_SHA": "abc"}
    child = yaml.safe_load(ociforge.gitlab_pipeline_for(example.parent / "images.toml", env=env))
    assert sorted(child["tools:index"]["needs"]) == ["tools:aarch64-linux", "tools:x86_64-linux"]
    assert child["builder:x86_64-linux"]["image"] == "$OCIFORGE_IMAGE"


def test_an_images_toml_gives_platform_jobs_and_an_index_job(tmp_path: Path) -> None:
    from ociforge.batch.ci import gitlab_jobs, nix_system
    from ociforge.image.documents import Platform

    repo = tmp_path / "images.toml"
    repo.write_text(
        '[defaults]\nregistry = "r.test/g"\n[images.tools]\nsource = "/nix/store/x"\n'
        '[images.app.platforms]\nx86_64-linux = ".#a"\n"linux/arm64" = ".#b"\n'
    )
    images = ociforge.resolve_images(repo, env={})
    jobs, indexes = gitlab_jobs(images, "images.toml")
    assert sorted((j.name, j.script) for j in jobs) == sorted(
        [
            ("tools:x86_64-linux", ("ociforge push-all images.toml --only tools",)),
            (
                "app:x86_64-linux",
                ("ociforge push-all images.toml --only app --platform x86_64-linux",),
            ),
            (
                "app:aarch64-linux",
                ("ociforge push-all images.toml --only app --platform aarch64-linux",),
            ),
        ]
    )
    assert [(i.name, sorted(i.platforms)) for i in indexes] == [
        ("app:index", ["aarch64-linux", "x86_64-linux"])
    ]
    assert nix_system(Platform("arm", "linux", "v7")) == "armv7l-linux"
    pipeline = ociforge.gitlab_pipeline_for(repo, env={"OCIFORGE_DATE": "2026-01-02"})
    assert 'OCIFORGE_DATE: "2026-01-02"' in pipeline
