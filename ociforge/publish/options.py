"""How a push talks to a registry (one frozen object), and what a push reports back."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ociforge.errors import UsageError
from ociforge.events import ProgressCallback
from ociforge.image.documents import Descriptor
from ociforge.publish.attach import Attached
from ociforge.publish.cache import default_cache_dir
from ociforge.publish.reuse import LayerPreview
from ociforge.reference import Reference
from ociforge.registry import (
    Credentials,
    RegistryClient,
    Transport,
    default_timeout,
    repository_scope,
    resolve_credentials,
)


@dataclass(frozen=True)
class RegistryOptions:
    """How to talk to registries; nothing here changes the image's bytes."""

    credentials: Credentials | None = None
    insecure: bool | None = None  # None: plain http only for loopback hosts
    ca_file: str | None = None
    jobs: int = 4
    chunk_size: int | None = None
    mount_from: str | None = None
    # The one retry policy (RegistryClient.retry_delay): a request is repeated in place, a blob
    # restarted in a fresh session, each at most `retries` times, waiting `backoff` seconds
    # doubled at each attempt (a registry's Retry-After wins).
    retries: int = 5
    backoff: float = 0.5
    # The deadline of the whole push, seconds (--timeout); None: what is left of the GitLab
    # job minus a margin, else an hour (registry.deadline). stall_timeout: no byte moving
    # either way for that long fails a request as temporary (the retry policy takes it).
    timeout: float | None = None
    stall_timeout: float = 60.0
    # default: os.environ (credential chain); never in a repr: it holds tokens and keys
    env: Mapping[str, str] | None = field(default=None, repr=False)
    home: Path | None = None
    # Local layer cache (default: $OCIFORGE_CACHE_DIR or the XDG cache dir); None disables it
    # and leaves only what the registry's previous manifests tell.
    cache_dir: str | None = field(default_factory=lambda: str(default_cache_dir()))
    cache_from: tuple[Reference, ...] = ()  # more images (same registry) to reuse layers from
    # The test seam: an httpx transport (httpx.MockTransport, a fault injector) instead of the
    # network.
    transport: Transport | None = None

    def __post_init__(self) -> None:
        # Checked here, for API callers too, before nix builds anything.
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise UsageError(f"--jobs must be at least 1, got {self.jobs!r}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise UsageError(f"--chunk-size must be positive, got {self.chunk_size!r}")
        if self.retries < 0:
            raise UsageError(f"retries must not be negative, got {self.retries!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError(f"--timeout must be positive, got {self.timeout!r}")
        if not self.stall_timeout > 0:
            raise UsageError(f"stall_timeout must be positive, got {self.stall_timeout!r}")

    def push_timeout(self) -> float:
        """The deadline in seconds: ``timeout``, or the default for this environment."""
        if self.timeout is not None:
            return self.timeout
        return default_timeout(os.environ if self.env is None else self.env)

    def client(
        self, registry: str, on_event: ProgressCallback, *, explicit_credentials: bool = True
    ) -> RegistryClient:
        """A client of ``registry`` with these options; credentials come from the one
        precedence chain (logged, never shown). ``explicit_credentials`` False: the explicit
        ones belong to another registry (a push's destination) and are not sent here."""
        creds = resolve_credentials(
            registry,
            env=os.environ if self.env is None else self.env,
            home=self.home or Path.home(),
            explicit=self.credentials if explicit_credentials else None,
        )
        return RegistryClient(
            registry,
            credentials=creds,
            insecure=self.insecure,
            ca_file=self.ca_file,
            retries=self.retries,
            backoff=self.backoff,
            timeout=self.push_timeout(),
            stall_timeout=self.stall_timeout,
            transport=self.transport,
            on_event=on_event,
        )

    def scopes(self, refs: Sequence[Reference]) -> list[str]:
        """One scope set for a push: push on every destination, pull on every source."""
        push = [repository_scope(r.repository) for r in refs]
        pull = [repository_scope(r.repository, "pull") for r in self.cache_from]
        if self.mount_from:
            pull.append(repository_scope(self.mount_from, "pull"))
        return list(dict.fromkeys([*push, *pull]))

    def mount_source(self, repo: str) -> str | None:
        """Where blobs that ``repo`` lacks may be mounted from."""
        for candidate in [self.mount_from, *(r.repository for r in self.cache_from)]:
            if candidate and candidate != repo:
                return candidate
        return None


def check_destinations(refs: Sequence[Reference], cache_from: Sequence[Reference] = ()) -> None:
    """One registry for the whole push; destinations are tags, --cache-from may be digests."""
    if not refs:
        raise UsageError("give at least one destination REGISTRY/REPOSITORY[:TAG]")
    if len({r.registry for r in refs}) > 1:
        raise UsageError("all destinations of one push must be on the same registry")
    for ref in refs:
        if ref.digest is not None:
            raise UsageError(f"destination {ref} names a digest: push to a tag (REPO:TAG)")
    for ref in cache_from:
        if ref.registry != refs[0].registry:
            raise UsageError(
                f"--cache-from {ref} is on another registry than the destinations: "
                f"layers are only reused within {refs[0].registry}"
            )


@dataclass(frozen=True)
class PushedBlob:
    """What a push did with one blob: ``uploaded``, ``skipped`` (there already) or ``mounted``."""

    descriptor: Descriptor
    outcome: str


@dataclass(frozen=True)
class PushResult:
    """What a push did: the tags, the manifest digest they hold, every blob's outcome."""

    references: tuple[str, ...]
    manifest_digest: str
    blobs: tuple[PushedBlob, ...]
    seconds: float  # the whole push, reading the closure with nix included (they overlap)
    up_to_date: bool = False  # every tag already held this manifest: nothing was sent
    # The SBOM and signature attached to each repository (``api.push``'s ``supply``).
    attached: tuple[Attached, ...] = ()
    base_digest: str | None = None  # --from: the manifest digest the base resolved to


@dataclass(frozen=True)
class PushPreview:
    """What ``push`` would do (``--dry-run``): per layer, and whether the tags are current."""

    references: tuple[str, ...]
    layers: tuple[LayerPreview, ...]
    up_to_date: bool
