"""The one exception tree of ociforge.

::

    OciforgeError                 base of everything ociforge raises on purpose
    ├── UsageError                bad input from the caller: an option, a reference, a file
    ├── NixError                  nix is missing, a build failed, path-info could not be read
    ├── ImageError                a closure or layout could not be turned into an image
    │   └── DigestMismatchError   bytes did not hash to the digest they were expected to have
    │       └── RegistryDigestError   ... because a registry answered so (also a RegistryError)
    ├── RegistryError             a registry (or a proxy in front of it) refused a request
    │   └── AuthError             credentials missing, rejected or insufficient for the scope
    └── VerificationError         ``verify``: the image is not signed, described or built as claimed

Interrupted is no OciforgeError: like KeyboardInterrupt, of which it is a kind, it is a request
to stop, not a failure; it carries the signal (SIGINT or SIGTERM) and so the exit code.

Each error's ``str()`` is one line a user can act on. ``exit_code`` is what the CLI exits with.
Third-party exceptions (httpx, subprocess, OSError) are mapped to this tree at the module that
talks to them and nowhere else. This module imports nothing else of ours.
"""

from __future__ import annotations

from collections.abc import Sequence


class OciforgeError(Exception):
    """Base class of every error ociforge raises on purpose."""

    exit_code = 1


class UsageError(OciforgeError):
    """The caller asked for something invalid (an option, a reference, an input file)."""

    exit_code = 2


class NixError(OciforgeError):
    """Running nix failed; the message carries nix's own last lines."""

    exit_code = 3


class ImageError(OciforgeError):
    """The image could not be assembled or written."""

    exit_code = 4


class DigestMismatchError(ImageError):
    """Bytes did not hash to the digest they were expected to have."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: expected digest {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class RegistryError(OciforgeError):
    """A registry request failed.

    ``url`` is already redacted (no credentials, no tokens in the query). ``codes`` are the
    ``errors[].code`` values of the registry's JSON body, if it had one. ``temporary`` says whether
    repeating the same request may succeed (408, 429, 5xx, connection errors).
    """

    exit_code = 5

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        url: str = "",
        status: int | None = None,
        codes: Sequence[str] = (),
        temporary: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.status = status
        self.codes = tuple(codes)
        self.temporary = temporary
        self.retry_after = retry_after


class RegistryDigestError(DigestMismatchError, RegistryError):
    """A registry's answer contradicts a digest: its bytes or its ``Docker-Content-Digest``.

    A mismatch (whoever catches DigestMismatchError still does) whose fault is the registry's
    or a proxy's, not the image's: so it exits like every registry error, 5, not 4. Final:
    asking again would get the same answer.
    """

    exit_code = 5

    def __init__(self, what: str, expected: str, actual: str, *, url: str = "") -> None:
        super().__init__(what, expected, actual)
        self.url = url


class AuthError(RegistryError):
    """Authentication failed or the credentials lack the needed scope."""

    exit_code = 6


class VerificationError(OciforgeError):
    """``ociforge verify`` found a mismatch: a signature, the SBOM or a layer."""

    exit_code = 7


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM asked ociforge to stop; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signal_name: str, signal_number: int) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = 128 + signal_number
