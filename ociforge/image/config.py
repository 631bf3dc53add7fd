"""The image config: platform, how a container starts, and one history entry per layer.

Nothing here reads a clock or the environment: ``created`` and ``PATH`` come from the caller, so
the same options always give the same config bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ociforge.digest import Digest
from ociforge.errors import UsageError

EPOCH_PLUS_ONE = "1970-01-01T00:00:01Z"
CREATED_BY = "ociforge"

# Nix system CPU -> (GOARCH, variant), the names OCI platforms use.
_ARCHES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "i686": ("386", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "riscv64": ("riscv64", None),
    "powerpc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "mips64el": ("mips64le", None),
    "loongarch64": ("loong64", None),
}
_OSES = frozenset({"linux", "darwin", "freebsd", "netbsd", "openbsd"})

_ENV_NAME_RE = re.compile(r"[^=\s\x00]+")
_PORT_RE = re.compile(r"(\d{1,5})(?:/(tcp|udp|sctp))?")
_RFC3339_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})", re.IGNORECASE
)


@dataclass(frozen=True)
class RuntimeConfig:
    """What the user sets about how a container of the image starts (``--entrypoint`` ...)."""

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str | None = None


def platform_for_system(system: str) -> tuple[str, str, str | None]:
    """``x86_64-linux`` -> ``("amd64", "linux", None)``: the OCI (architecture, os, variant)."""
    cpu, _, os_name = system.partition("-")
    if cpu not in _ARCHES or os_name not in _OSES:
        raise UsageError(
            f"no OCI platform known for nix system {system!r}: pass --arch and --os explicitly"
        )
    arch, variant = _ARCHES[cpu]
    return arch, os_name, variant


def parse_env_items(items: Sequence[str], *, option: str = "--env") -> dict[str, str]:
    """``["K=V", ...]`` -> ``{"K": "V"}``; the value may contain ``=`` and may be empty.

    Also parses labels (``option="--label"``); ``option`` names the flag in error messages.
    """
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_NAME_RE.fullmatch(key):
            raise UsageError(f"invalid {option} value {item!r}: expected KEY=VALUE")
        result[key] = value  # a repeated key: the last one wins, as with docker run -e
    return result


def parse_label_items(items: Sequence[str], *, option: str = "--label") -> dict[str, str]:
    """``["org.opencontainers.image.source=https://...", ...]`` -> mapping."""
    return parse_env_items(items, option=option)


def parse_port_items(items: Sequence[str], *, option: str = "--expose") -> tuple[str, ...]:
    """``["80", "53/udp"]`` -> ``("80/tcp", "53/udp")``: the keys of ``ExposedPorts``."""
    ports: list[str] = []
    for item in items:
        match = _PORT_RE.fullmatch(item.strip().lower())
        if not match or not 1 <= int(match[1]) <= 65535:
            raise UsageError(f"invalid {option} value {item!r}: expected PORT or PORT/tcp|udp|sctp")
        port = f"{int(match[1])}/{match[2] or 'tcp'}"
        if port not in ports:
            ports.append(port)
    return tuple(ports)


def check_created(created: str) -> str:
    """``created`` must be RFC 3339 (``2024-05-01T12:00:00Z``); returned unchanged."""
    match = _RFC3339_RE.fullmatch(created)
    try:
        if not match:
            raise ValueError(created)
        # The pattern fixed the shape; this checks the ranges (no 2024-02-30, no 25:00:00).
        # Not strptime: its locale machinery costs every warm push 1.5 ms of imports.
        datetime.fromisoformat(f"{match[1]}T{match[2]}")
    except ValueError:
        raise UsageError(
            f"invalid creation time {created!r}: expected RFC 3339 like 2024-05-01T12:00:00Z"
        ) from None
    return created


def check_runtime(runtime: RuntimeConfig, created: str) -> None:
    """UsageError for anything :func:`config_document` would refuse; call it before any work, so
    a typo in ``--expose`` or ``--created`` does not wait until every layer is written."""
    _check_runtime(runtime)
    parse_port_items(runtime.exposed_ports)
    check_created(created)


def _check_runtime(runtime: RuntimeConfig) -> None:
    # The config is written as plain JSON (no models): every value must be text, or the
    # image would be pushed with a config container runtimes cannot read.
    check_text(runtime.env, "--env")
    check_text(runtime.labels, "--label")
    for values, what in [
        (runtime.entrypoint, "entrypoint"),
        (runtime.cmd, "cmd"),
        (runtime.volumes, "volumes"),
        (runtime.exposed_ports, "exposed ports"),
    ]:
        if isinstance(values, str):
            raise UsageError(f"{what} must be a list, not the string {values!r}")
        for value in values or ():
            if not isinstance(value, str):
                raise UsageError(f"{what}: every item must be text, got {value!r}")
    for one, what in [
        (runtime.user, "user"),
        (runtime.workdir, "workdir"),
        (runtime.stop_signal, "stop signal"),
    ]:
        if one is not None and not isinstance(one, str):
            raise UsageError(f"{what} must be text, got {one!r}")
    for key in runtime.env:
        if not _ENV_NAME_RE.fullmatch(key):
            raise UsageError(f"invalid environment variable name {key!r}")
    for path, what in [
        (runtime.workdir, "working directory"),
        *((v, "volume") for v in runtime.volumes),
    ]:
        if path is not None and not path.startswith("/"):
            raise UsageError(f"{what} must be an absolute path: {path!r}")


def check_text(mapping: Mapping[str, str], option: str) -> None:
    """UsageError unless every name and value is text (API callers can pass anything)."""
    for key, value in mapping.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise UsageError(f"{option} {key!r}: names and values must be text, got {value!r}")


def _container_document(runtime: RuntimeConfig, default_path: str | None) -> dict[str, Any]:
    env = dict(runtime.env)
    if "PATH" not in env and default_path is not None:
        env = {"PATH": default_path, **env}
    return _present(
        User=runtime.user,
        ExposedPorts={p: {} for p in parse_port_items(runtime.exposed_ports)} or None,
        Env=[f"{k}={v}" for k, v in env.items()] or None,
        Entrypoint=list(runtime.entrypoint) if runtime.entrypoint is not None else None,
        Cmd=list(runtime.cmd) if runtime.cmd is not None else None,
        Volumes={v: {} for v in runtime.volumes} or None,
        WorkingDir=runtime.workdir,
        Labels=dict(runtime.labels) or None,
        StopSignal=runtime.stop_signal,
    )


def _present(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def config_document(
    *,
    runtime: RuntimeConfig,
    architecture: str,
    os: str,
    variant: str | None,
    diff_ids: Sequence[Digest],
    history_comments: Sequence[str],
    created: str = EPOCH_PLUS_ONE,
    default_path: str | None,
) -> dict[str, Any]:
    """The config (JSON) of an image whose layers have ``diff_ids`` (uncompressed tar digests).

    ``history_comments`` gives one comment per layer (or none at all: then each layer is
    described by its number). ``PATH``: the user's ``env`` wins, else ``default_path``.
    Plain JSON: see :mod:`ociforge.image.documents`.
    """
    if history_comments and len(history_comments) != len(diff_ids):
        raise UsageError(
            f"internal: {len(history_comments)} history comments for {len(diff_ids)} layers"
        )
    if not architecture or not os:
        raise UsageError("the image platform needs an architecture and an os (--arch, --os)")
    _check_runtime(runtime)
    check_created(created)
    comments = list(history_comments) or [f"layer {n + 1}" for n in range(len(diff_ids))]
    return _present(
        created=created,
        architecture=architecture,
        os=os,
        variant=variant or None,
        config=_container_document(runtime, default_path),
        rootfs={"type": "layers", "diff_ids": [str(d) for d in diff_ids]},
        history=[{"created": created, "created_by": CREATED_BY, "comment": c} for c in comments],
    )
