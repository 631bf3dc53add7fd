#!/usr/bin/env python3
"""Publish one Nix-built image under several tags, as a release tool would with ociforge's API.

    python3 publish.py .#packages.x86_64-linux.default registry.example.com/group/app 1.4.2

pushes the image to ``...:1.4.2``, ``...:1.4`` and ``...:latest`` in one upload, prints a JSON
summary on stdout and logs progress on stderr. Exit codes follow ociforge's own: 2 bad input,
3 nix failed, 5 registry error, 6 authentication (see ``ociforge.OciforgeError.exit_code``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import ociforge

logger = logging.getLogger("publish")


def tags_for(version: str) -> list[str]:
    """``1.4.2`` -> ``["1.4.2", "1.4", "latest"]``; anything else -> ``[version, "latest"]``."""
    parts = version.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return [version, f"{parts[0]}.{parts[1]}", "latest"]
    return [version, "latest"]


def image_options(version: str, source_url: str | None) -> ociforge.ImageOptions:
    """Everything that decides the image's bytes, typed: same inputs, same digest."""
    labels = {"org.opencontainers.image.version": version}
    if source_url:
        labels["org.opencontainers.image.source"] = source_url
    return ociforge.ImageOptions(
        strategy="auto",  # size-aware layers that stay stable when one package changes
        max_layers=60,
        compression=ociforge.CompressionOptions(ociforge.Compression.ZSTD),
        runtime=ociforge.RuntimeConfig(
            cmd=("/bin/app",),
            env={"LANG": "C.UTF-8"},
            labels=labels,
        ),
    )


def log_event(event: ociforge.Event) -> None:
    """Progress as log lines; a GUI would update a bar instead."""
    if isinstance(event, ociforge.BlobFinished):
        logger.info("%s %s (%d bytes)", event.outcome, event.digest, event.size)
    elif isinstance(event, ociforge.BlobRetry):
        logger.warning("retry %d of %s: %s", event.attempt, event.key, event.reason)
    elif isinstance(event, ociforge.Message):
        logger.info("%s", event.text)


def publish(
    installable: str, repository: str, version: str, *, jobs: int, source_url: str | None
) -> dict[str, object]:
    destinations = [f"{repository}:{tag}" for tag in tags_for(version)]
    result = ociforge.push(
        installable,
        destinations,
        options=image_options(version, source_url),
        # Credentials: ociforge's chain (CI_REGISTRY_*, DOCKER_AUTH_CONFIG, auth files...).
        registry=ociforge.RegistryOptions(jobs=jobs),
        on_event=log_event,
    )
    return {
        "manifest": result.manifest_digest,
        "tags": list(result.references),
        "up_to_date": result.up_to_date,
        "uploaded": sum(1 for b in result.blobs if b.outcome == "uploaded"),
        "seconds": round(result.seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("installable", help="flake output or store path, e.g. .#default")
    parser.add_argument("repository", help="registry/group/project/image, without a tag")
    parser.add_argument("version", help="the release version, e.g. 1.4.2")
    parser.add_argument("--jobs", type=int, default=4, help="blobs uploaded at once")
    parser.add_argument("--source-url", help="the project's URL, for the image source label")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    try:
        summary = publish(
            args.installable,
            args.repository,
            args.version,
            jobs=args.jobs,
            source_url=args.source_url,
        )
    except ociforge.AuthError as exc:
        logger.error("authentication failed: %s (check the registry token's scopes)", exc)
        return exc.exit_code
    except ociforge.RegistryError as exc:
        hint = " (temporary: retry later)" if exc.temporary else ""
        logger.error("registry refused the push: %s%s", exc, hint)
        return exc.exit_code
    except ociforge.OciforgeError as exc:  # NixError, UsageError, ImageError: one line each
        logger.error("%s", exc)
        return exc.exit_code
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
