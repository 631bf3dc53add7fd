"""Closure reading: the only place that runs ``nix``; parses every path-info format."""

from __future__ import annotations

from ociforge.nix.closure import Closure, StorePathInfo
from ociforge.nix.pathinfo import (
    PathInfoDocument,
    closure_from_path_info,
    hash_to_sri,
    load_path_info,
    parse_path_info,
)
from ociforge.nix.runner import (
    BuildResult,
    Nix,
    NixVersion,
    classify_installable,
    closure_from_json_file,
    parse_nix_version,
    read_closure,
)

__all__ = [
    "BuildResult",
    "Closure",
    "Nix",
    "NixVersion",
    "PathInfoDocument",
    "StorePathInfo",
    "classify_installable",
    "closure_from_json_file",
    "closure_from_path_info",
    "hash_to_sri",
    "load_path_info",
    "parse_nix_version",
    "parse_path_info",
    "read_closure",
]
