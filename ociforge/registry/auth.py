"""Registry authentication: ``WWW-Authenticate`` parsing, scopes, Basic, and Bearer tokens.

The registry says how to authenticate in its 401 answer; nothing is sent before it has asked,
except a ``registrytoken`` (which is meant for that registry only). Bearer tokens are fetched
with ``GET <realm>?service=..&scope=..&scope=..`` and cached per scope set until shortly before
they expire (``expires_in``, 60 s when absent). The token request itself is a callback, so this
module does no I/O and the client can route it through its retries and error mapping.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ociforge.errors import AuthError
from ociforge.registry.credentials import Credentials

# (realm, query params, Basic Authorization header or None) -> the token service's JSON object.
TokenFetcher = Callable[[str, Sequence[tuple[str, str]], "str | None"], Mapping[str, object]]

DEFAULT_EXPIRES_IN = 60.0
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BARE_VALUE_RE = re.compile(r"[^,\s\"]+")


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: lower-cased scheme and parameter names."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> list[str]:
        """Several scopes share one ``scope`` value, separated by spaces."""
        return self.params.get("scope", "").split()

    @property
    def error(self) -> str | None:
        return self.params.get("error")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse RFC 7235 challenges: ``Basic realm="x", Bearer realm="y",scope="a b"``.

    Quoted strings may contain commas and backslash escapes. Malformed tails are ignored rather
    than raised: the header comes from a server and the caller falls back to "no challenge".
    """
    challenges: list[Challenge] = []
    params: dict[str, str] = {}
    pos = 0
    while True:
        pos = _skip(header, pos, " \t,")
        match = _TOKEN_RE.match(header, pos)
        if match is None:
            break
        pos = _skip(header, match.end(), " \t")
        if challenges and pos < len(header) and header[pos] == "=":
            value, pos = _param_value(header, _skip(header, pos + 1, " \t"))
            if value is None:  # a token68 (e.g. "Negotiate abc=="): skip to the next comma
                pos = _skip_to_comma(header, pos)
            else:
                params[match.group().lower()] = value
            continue
        params = {}
        challenges.append(Challenge(match.group().lower(), params))
    return challenges


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _skip_to_comma(text: str, pos: int) -> int:
    comma = text.find(",", pos)
    return len(text) if comma < 0 else comma


def _param_value(text: str, pos: int) -> tuple[str | None, int]:
    if pos < len(text) and text[pos] == '"':
        chars: list[str] = []
        pos += 1
        while pos < len(text) and text[pos] != '"':
            if text[pos] == "\\" and pos + 1 < len(text):
                pos += 1
            chars.append(text[pos])
            pos += 1
        return "".join(chars), pos + 1
    match = _BARE_VALUE_RE.match(text, pos)
    if match is None or match.group().startswith("="):
        return None, pos
    return match.group(), match.end()


def repository_scope(repository: str, actions: str = "pull,push") -> str:
    return f"repository:{repository}:{actions}"


def _split_scope(scope: str) -> tuple[str, list[str]]:
    """``repository:grp/app:pull,push`` -> (``repository:grp/app``, [pull, push])."""
    resource, sep, actions = scope.rpartition(":")
    if not sep or ":" not in resource:
        return scope, []
    return resource, [a for a in actions.split(",") if a]


def merge_scopes(*groups: Sequence[str]) -> list[str]:
    """Union of scopes keeping first-seen order; actions of one resource are merged.

    Order matters to some token services (GitLab reads the first scope as the push target), so
    the caller lists its own push scope first and a challenge's scopes come after.
    """
    merged: dict[str, list[str]] = {}
    for group in groups:
        for scope in group:
            resource, actions = _split_scope(scope)
            known = merged.setdefault(resource, [])
            known.extend(a for a in actions if a not in known)
    return [f"{res}:{','.join(acts)}" if acts else res for res, acts in merged.items()]


def _covers(have: Sequence[str], want: Sequence[str]) -> bool:
    granted = {res: set(acts) for res, acts in map(_split_scope, have)}
    for resource, actions in map(_split_scope, want):
        if resource not in granted:
            return False
        if "*" not in granted[resource] and not set(actions) <= granted[resource]:
            return False
    return True


def basic_header(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.secret}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class _Token:
    """A bearer token, the scopes it was issued for, and when it expires."""

    value: str = field(repr=False)
    scopes: tuple[str, ...]
    expires_at: float


_MAX_CLAIMS = 64 * 1024  # base64 characters of a token payload we read


class Authenticator:
    """Decides the ``Authorization`` header of each request; thread-safe.

    ``authorization(scopes)`` before a request; ``on_unauthorized(...)`` after a 401, which
    learns the challenge, forgets a rejected token and says with which scopes to repeat.
    """

    def __init__(
        self,
        credentials: Credentials | None,
        fetch_token: TokenFetcher,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        self._fetch = fetch_token
        self._clock = clock
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._tokens: list[_Token] = []

    @property
    def challenge(self) -> Challenge | None:
        return self._challenge

    def authorization(self, scopes: Sequence[str]) -> str | None:
        creds = self.credentials
        if creds is not None and creds.kind == "registry_token":
            return f"Bearer {creds.secret}"
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return basic_header(creds) if creds is not None else None
        return f"Bearer {self._token(challenge, scopes)}"

    def on_unauthorized(
        self, header: str, scopes: Sequence[str], sent: str | None
    ) -> list[str] | None:
        """Digest a 401; return the scopes to repeat the request with, or None if pointless."""
        challenges = parse_challenges(header)
        by_scheme = {c.scheme: c for c in challenges}
        chosen = by_scheme.get("bearer") or by_scheme.get("basic")
        creds = self.credentials
        with self._lock:
            if sent is not None and sent.startswith("Bearer "):
                rejected = sent[len("Bearer ") :]
                self._tokens = [t for t in self._tokens if t.value != rejected]
            if chosen is None or (creds is not None and creds.kind == "registry_token"):
                return None
            self._challenge = chosen
        if chosen.scheme == "basic":
            # Repeating helps only if we have credentials and did not just send them.
            return list(scopes) if creds is not None and sent is None else None
        merged = merge_scopes(scopes, chosen.scopes)
        # An anonymous token for no scope at all grants nothing (GitLab even answers 403).
        return merged if merged or creds is not None else None

    def token_claims(self, scopes: Sequence[str]) -> dict[str, object] | None:
        """The payload of the cached bearer token covering ``scopes``, if it is a JWT.

        Not verified: the registry decides with it, and we only read what it will decide
        (GitLab's protected and immutable tag patterns) to fail before uploading anything.
        """
        with self._lock:
            token = next((t for t in self._tokens if _covers(t.scopes, scopes)), None)
        parts = token.value.split(".") if token is not None else []
        if len(parts) != 3 or len(parts[1]) > _MAX_CLAIMS:
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except ValueError:
            return None
        return claims if isinstance(claims, dict) else None

    def _token(self, challenge: Challenge, scopes: Sequence[str]) -> str:
        if not challenge.realm:
            raise AuthError("the registry asked for a Bearer token but named no token realm")
        with self._lock:
            now = self._clock()
            self._tokens = [t for t in self._tokens if t.expires_at > now]
            for token in self._tokens:
                if _covers(token.scopes, scopes):
                    return token.value
            token = self._new_token(challenge, scopes, now)
            self._tokens.append(token)
            return token.value

    def _new_token(self, challenge: Challenge, scopes: Sequence[str], now: float) -> _Token:
        params = [("service", challenge.service)] if challenge.service else []
        params += [("scope", scope) for scope in scopes]
        creds = self.credentials
        answer = self._fetch(challenge.realm, params, basic_header(creds) if creds else None)
        value = answer.get("token") or answer.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError(f"token service {challenge.realm} answered without a token")
        lifetime = answer.get("expires_in")
        if not isinstance(lifetime, (int, float)) or lifetime <= 0:
            lifetime = DEFAULT_EXPIRES_IN
        # Renew a little early, so a token cannot expire between our check and the registry's.
        margin = min(10.0, lifetime / 4)
        return _Token(value, tuple(scopes), now + lifetime - margin)
