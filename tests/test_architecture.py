"""The dependency rules of docs/architecture.md, pinned: imports only go downward."""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import ociforge

PACKAGE = Path(ociforge.__file__).parent

# Every module or package of ociforge -> the only ones it may import. The flow is one line,
# source -> closure (nix) -> layer plans (layering, assemble) -> image -> sink (sinks, publish),
# and imports only go down it. A new module must be placed here: the test fails until it is.
_LEAVES = {"errors", "events"}
_VALUES = _LEAVES | {"digest", "spec", "threads"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "events": set(),
    "digest": {"errors"},
    "spec": {"errors"},
    "threads": {"errors"},
    "reference": {"errors", "digest", "spec"},
    "tarheader": {"errors"},
    "tarstream": {"errors", "tarheader"},
    "compress": {"errors", "threads"},
    "layering": {"errors"},
    "nix": {"errors"},
    "image": _VALUES,
    "source": _VALUES | {"nix"},
    "trust": _VALUES,
    "supply": _VALUES | {"nix", "image"},
    "assemble": _VALUES
    | {"nix", "source", "layering", "tarstream", "compress", "image", "trust", "reference"},
    "sinks": _VALUES | {"source", "assemble", "image", "supply"},
    "registry": _VALUES,
    "publish": _VALUES
    | {"source", "assemble", "image", "sinks", "registry", "reference", "trust", "supply"},
    # images.toml (model: pydantic) and push-all over one PushSession per registry
    "batch": _VALUES
    | {
        "source",
        "assemble",
        "image",
        "layering",
        "compress",
        "publish",
        "reference",
        "registry",
        "ci_gitlab",
    },
    "api": _VALUES
    | {
        "source",
        "nix",
        "assemble",
        "image",
        "sinks",
        "publish",
        "registry",
        "reference",
        "compress",
        "layering",
        "tarstream",
        "trust",
        "supply",
        "supplyapi",
        "batch",
        "ci_gitlab",
    },
    "ci_gitlab": {"errors"},
    "supplyapi": _VALUES
    | {"source", "nix", "assemble", "publish", "registry", "reference", "sinks", "supply"},
    "progress": {"events", "errors"},
    "cli": {"api", "errors", "progress"},
    "__main__": {"cli"},
}


def ociforge_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ociforge"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "ociforge" and len(parts) > 1:
                    found.add(parts[1])
    return found


def owner(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_imports_only_go_downward() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = owner(path)
        if mod == "__init__":  # the public API: its imports are lazy, see test_public_api
            continue
        assert mod in ALLOWED, f"{mod} is not placed in the architecture table"
        for imported in ociforge_imports(path) - {mod}:
            if imported not in ALLOWED[mod]:
                violations.append(f"{path.relative_to(PACKAGE)} imports ociforge.{imported}")
    assert violations == []


def test_the_table_has_no_stale_entries() -> None:
    owners = {owner(p) for p in PACKAGE.rglob("*.py")}
    assert set(ALLOWED) - owners == set()


def test_only_registry_imports_httpx() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if owner(path) == "registry":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "httpx" for n in names):
                offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []


PUBLIC_API = {
    "AuthError",
    "BlobFinished",
    "BlobProgress",
    "BlobRetry",
    "BlobStarted",
    "BuildResult",
    "BuiltImage",
    "Closure",
    "Compression",
    "CompressionOptions",
    "Credentials",
    "Digest",
    "DigestMismatchError",
    "EssentialsOptions",
    "Event",
    "ImageError",
    "ImageOptions",
    "ImageSource",
    "InputProgress",
    "LayerPlan",
    "LayerPreview",
    "Message",
    "NixError",
    "OciforgeError",
    "PlanReady",
    "ProgressCallback",
    "PushPreview",
    "PushResult",
    "PushSession",
    "PushedBlob",
    "Reference",
    "RegistryError",
    "RegistryOptions",
    "RuntimeConfig",
    "STRATEGIES",
    "SourceSpec",
    "StorePathInfo",
    "SupplyOptions",
    "VerifyReport",
    "TarOptions",
    "TrustKeys",
    "UsageError",
    "build",
    "generate_cosign_key",
    "resolve_images",
    "push_many",
    "push_index",
    "ResolvedImage",
    "IndexResult",
    "ImageResult",
    "BatchResult",
    "generate_key",
    "load_cosign_key",
    "load_trust",
    "ci_annotations",
    "host_system",
    "load_closure",
    "load_source",
    "parse_reference",
    "parse_source",
    "plan_layers",
    "preview",
    "push",
    "read_closure",
    "sbom",
    "verify",
    # promotion and inspection (publish/promote.py)
    "CopyResult",
    "Inspection",
    "TagResult",
    "copy_image",
    "inspect_image",
    "tag_image",
    # GitLab CI scale-out (ci_gitlab.py)
    "GitlabOptions",
    "ImageJob",
    "IndexJob",
    "gitlab_pipeline",
    "gitlab_pipeline_for",
    "read_jobs_file",
}


def test_public_api_is_pinned() -> None:
    """Changing the public API is a decision: update this set with it."""
    assert set(ociforge.__all__) == PUBLIC_API
    assert len(ociforge.__all__) == len(PUBLIC_API)
    for name in ociforge.__all__:
        assert hasattr(ociforge, name), name
    assert set(ociforge._EXPORTS) == PUBLIC_API  # the lazy imports serve exactly __all__


def test_no_public_name_is_also_a_module_name() -> None:
    """Importing ``ociforge.X`` binds X on the package: it would hide a lazy name ``X``."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.parent.name for p in PACKAGE.glob("*/__init__.py")
    }
    assert PUBLIC_API & modules == set()


def test_the_public_functions_type_hints_resolve() -> None:
    """Tools that read hints at run time (sphinx-autodoc-typehints, typer, pydantic's
    validate_call) need every name a public function's signature uses importable, not only
    under TYPE_CHECKING."""
    functions = [getattr(ociforge, n) for n in sorted(PUBLIC_API)]
    functions = [f for f in functions if inspect.isfunction(f)]
    assert len(functions) >= 5
    for function in functions:
        typing.get_type_hints(function)
