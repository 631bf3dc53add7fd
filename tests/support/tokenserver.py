"""A token server that answers like GitLab's ``/jwt/auth`` (the registry's token realm).

Behaviour copied from GitLab's JwtController and ContainerRegistryAuthenticationService:

- GET only; any other method is 404 (the route does not exist). Path ``/jwt/auth`` only.
- HTTP Basic is optional. Wrong credentials: 401 ``{"errors":[{"code":"UNAUTHORIZED",...}]}``,
  checked before anything else. An unknown or missing ``service``: 404.
- Anonymous with no scope at all: 403 ``DENIED``. Anonymous with scopes: a token whose access
  holds only what ``anonymous_grants`` allow (nothing by default, like a private project): the
  registry then answers 401 ``insufficient_scope``.
- Several ``scope`` parameters, each with space-separated scopes; the token grants, per
  repository, the requested actions that the account may do; repositories with no granted
  action are left out. The body is exactly ``{"token": "..."}`` (no ``expires_in``).
- JWT RS256, header ``kid`` in libtrust format (or ``x5c`` when asked), claims iss, sub, aud
  (a string), iat, nbf, exp, jti, access.

Expiry and distribution 2.8.2: the registry accepts a token until ``exp + 60 s`` (leeway), so
waiting out a GitLab-like lifetime is not an option in tests. ``set_registry_validity(n)``
backdates ``exp`` by the leeway so that the *registry* accepts each token for about n seconds
(n to n+1 s, ``exp`` is rounded up). A client that trusts the default ``expires_in`` of 60 s
keeps using the token and meets 401 ``invalid_token``, which is the GitLab situation of a
5-minute token expiring during a long upload. For a deterministic variant without sleeping,
see the ``InvalidToken`` fault of ``faultproxy.py``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.support.loopbackapp import LoopbackApp
from tests.support.registry import LoopbackHandler, LoopbackHTTPServer, TokenAuthConfig

logger = logging.getLogger(__name__)

REGISTRY_LEEWAY_SECONDS = 60  # distribution 2.8.2 registry/auth/token/token.go `Leeway`
GITLAB_TOKEN_LIFETIME = 300
JOB_TOKEN_USER = "gitlab-ci-token"
NESTED_LEVELS = 2  # GitLab: image paths may be up to two levels below the project


@dataclass(frozen=True)
class Grant:
    """Actions an account may do on a project's repository and the paths below it."""

    project: str
    actions: frozenset[str]

    def covers(self, repository: str) -> bool:
        if repository == self.project:
            return True
        prefix = self.project + "/"
        rest = repository[len(prefix) :] if repository.startswith(prefix) else ""
        return bool(rest) and rest.count("/") < NESTED_LEVELS


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    grants: tuple[Grant, ...]


@dataclass(frozen=True)
class Access:
    """One entry of the JWT ``access`` claim."""

    type: str
    name: str
    actions: tuple[str, ...]
    # GitLab's per-project metadata: protected (tag_deny_access_patterns) and immutable
    # (tag_immutable_patterns) tag rules, which its registry enforces with the token.
    meta: tuple[tuple[str, object], ...] = ()

    def as_claim(self) -> dict[str, object]:
        claim: dict[str, object] = {
            "type": self.type,
            "name": self.name,
            "actions": list(self.actions),
        }
        if self.meta:
            claim["meta"] = dict(self.meta)
        return claim


@dataclass(frozen=True)
class TokenRequest:
    """What the token server saw; never the password."""

    method: str
    path: str
    query: str
    service: str | None
    scopes: tuple[str, ...]
    auth_given: bool
    username: str | None
    status: int
    granted: tuple[Access, ...] = ()


@dataclass
class _State:
    lifetime: int = GITLAB_TOKEN_LIFETIME
    accounts: list[Account] = field(default_factory=list)
    anonymous_grants: list[Grant] = field(default_factory=list)
    requests: list[TokenRequest] = field(default_factory=list)
    tag_rules: dict[str, tuple[tuple[str, object], ...]] = field(default_factory=dict)


class TokenServer(LoopbackApp):
    """Threaded GitLab-like token server on 127.0.0.1; start/stop or use as a context manager."""

    PATH = "/jwt/auth"

    def __init__(
        self,
        *,
        service: str = "container_registry",
        issuer: str = "gitlab-issuer",
        key_header: Literal["kid", "x5c"] = "kid",
    ) -> None:
        super().__init__(_Handler)
        self.service = service
        self.issuer = issuer
        self.key_header = key_header
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.certificate = _self_signed(self._key)
        self.key_id = libtrust_key_id(self._key.public_key())
        self._state = _State()

    @property
    def realm(self) -> str:
        return self.url + self.PATH

    def auth_config(self) -> TokenAuthConfig:
        """The registry side of the trust: realm, service, issuer, certificate bundle."""
        pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        return TokenAuthConfig(self.realm, self.service, self.issuer, pem)

    # --- accounts and policy
    def add_account(self, username: str, password: str, grants: tuple[Grant, ...]) -> Account:
        account = Account(username, password, grants)
        with self._lock:
            self._state.accounts.append(account)
        return account

    def add_job_token(self, project: str) -> str:
        """A CI job token: push and pull on its own project (and two levels below) only."""
        token = "glcbt-" + secrets.token_urlsafe(20)
        self.add_account(JOB_TOKEN_USER, token, (Grant(project, frozenset({"pull", "push"})),))
        return token

    def add_pull_only_user(self, username: str, project: str) -> str:
        """A user (think deploy token with read_registry) who may only pull; returns password."""
        password = secrets.token_urlsafe(16)
        self.add_account(username, password, (Grant(project, frozenset({"pull"})),))
        return password

    def allow_anonymous(self, grant: Grant) -> None:
        """Make a project public: anonymous tokens get these actions."""
        with self._lock:
            self._state.anonymous_grants.append(grant)

    def protect_tags(
        self, project: str, *, push_denied: tuple[str, ...] = (), immutable: tuple[str, ...] = ()
    ) -> None:
        """GitLab protected / immutable container tag rules of ``project``, in its tokens."""
        meta: dict[str, object] = {"project_path": project}
        if push_denied:
            meta["tag_deny_access_patterns"] = {"push": list(push_denied)}
        if immutable:
            meta["tag_immutable_patterns"] = list(immutable)
        with self._lock:
            self._state.tag_rules[project] = tuple(meta.items())

    def _with_rules(self, granted: tuple[Access, ...]) -> tuple[Access, ...]:
        with self._lock:
            rules = dict(self._state.tag_rules)
        return tuple(
            dataclasses.replace(a, meta=rules[p]) if (p := _project_of(a.name, rules)) else a
            for a in granted
        )

    @property
    def lifetime(self) -> int:
        """``exp - iat`` of new tokens, in seconds (may be negative, see the module doc)."""
        with self._lock:
            return self._state.lifetime

    @lifetime.setter
    def lifetime(self, seconds: int) -> None:
        with self._lock:
            self._state.lifetime = seconds

    def set_registry_validity(self, seconds: int) -> None:
        """New tokens are accepted by distribution 2.8.2 for about ``seconds`` (see doc)."""
        self.lifetime = seconds - REGISTRY_LEEWAY_SECONDS

    def reset(self) -> None:
        """Back to GitLab's lifetime, forget recorded requests and anonymous grants."""
        with self._lock:
            self._state.lifetime = GITLAB_TOKEN_LIFETIME
            self._state.requests.clear()
            self._state.anonymous_grants.clear()
            self._state.tag_rules.clear()

    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._state.requests)

    # --- tokens
    def issue_token(self, subject: str, access: tuple[Access, ...]) -> str:
        """A signed JWT as the registry expects it; public so tests can craft tokens."""
        now = time.time()
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "iat": int(now),
            "nbf": int(now) - 5,
            # Rounded up so a validity of n seconds is never shorter than n.
            "exp": math.ceil(now) + self.lifetime,
            "jti": uuid.uuid4().hex,
            "access": [item.as_claim() for item in access],
        }
        header: dict[str, object] = {"typ": "JWT", "alg": "RS256"}
        if self.key_header == "kid":
            header["kid"] = self.key_id
        else:
            der = self.certificate.public_bytes(serialization.Encoding.DER)
            header["x5c"] = [base64.b64encode(der).decode()]
        signing_input = f"{_b64url_json(header)}.{_b64url_json(claims)}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def _authenticate(self, username: str, password: str) -> Account | None:
        with self._lock:
            for account in self._state.accounts:
                # Both compared in constant time: these are secrets in a real server.
                same_user = secrets.compare_digest(account.username.encode(), username.encode())
                same_password = secrets.compare_digest(account.password.encode(), password.encode())
                if same_user and same_password:
                    return account
        return None

    def _grants_for(self, account: Account | None) -> tuple[Grant, ...]:
        if account is not None:
            return account.grants
        with self._lock:
            return tuple(self._state.anonymous_grants)

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._state.requests.append(request)


def _project_of(repository: str, rules: Mapping[str, object]) -> str | None:
    return next((p for p in rules if Grant(p, frozenset()).covers(repository)), None)


def grant_access(scopes: list[str], grants: tuple[Grant, ...]) -> tuple[Access, ...]:
    """Per requested repository: requested actions the grants allow, in request order."""
    requested: dict[str, list[str]] = {}
    for scope in scopes:
        resource, _, action_list = scope.rpartition(":")
        kind, _, name = resource.partition(":")
        # Only repository scopes: GitLab gives registry:catalog:* to admins only.
        if kind != "repository" or not name:
            continue
        wanted = requested.setdefault(name, [])
        wanted.extend(a for a in action_list.split(",") if a and a not in wanted)
    result = []
    for name, wanted in requested.items():
        allowed = set().union(*(g.actions for g in grants if g.covers(name)))
        actions = tuple(a for a in wanted if a in allowed)
        if actions:
            result.append(Access("repository", name, actions))
    return tuple(result)


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """libtrust key ID: SHA-256 of the DER SPKI, 30 bytes, base32, 12 groups of 4 with ':'."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def decode_token(token: str) -> tuple[dict[str, object], dict[str, object]]:
    """(header, claims) of a JWT, without verifying it."""
    header, claims, _ = token.split(".")
    return json.loads(_unb64url(header)), json.loads(_unb64url(claims))


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ociforge test token issuer")])
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64url_json(value: dict[str, object]) -> str:
    return _b64url(json.dumps(value, separators=(",", ":")).encode())


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class _Handler(LoopbackHandler):
    @property
    def app(self) -> TokenServer:
        return cast(TokenServer, cast(LoopbackHTTPServer, self.server).app)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = parse_qs(url.query, keep_blank_values=True)
        service = params.get("service", [None])[0]
        scopes = [s for value in params.get("scope", []) for s in value.split()]
        auth_given, username, password = _basic_credentials(self.headers.get("Authorization"))
        account = None
        if auth_given and username is not None:
            account = self.app._authenticate(username, password)
        note = TokenRequest(
            "GET", url.path, url.query, service, tuple(scopes), auth_given, username, 0
        )
        if url.path != TokenServer.PATH:
            status, body = 404, _not_found_page()
        elif auth_given and account is None:
            status, body = 401, _errors("UNAUTHORIZED", "HTTP Basic: Access denied")
        elif service != self.app.service:
            status, body = 404, b""
        elif account is None and not scopes:
            status, body = 403, _errors("DENIED", "access forbidden")
        else:
            granted = self.app._with_rules(grant_access(scopes, self.app._grants_for(account)))
            subject = account.username if account is not None else ""
            token = self.app.issue_token(subject, granted)
            note = dataclasses.replace(note, granted=granted)
            status, body = 200, json.dumps({"token": token}).encode()
        self.app._record(dataclasses.replace(note, status=status))
        self._reply(status, body)

    def _not_found(self) -> None:
        url = urlsplit(self.path)
        self._discard_body()
        auth_given = "Authorization" in self.headers
        self.app._record(
            TokenRequest(self.command, url.path, url.query, None, (), auth_given, None, 404)
        )
        self._reply(404, _not_found_page())

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _not_found

    def _discard_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        elif "chunked" in self.headers.get("Transfer-Encoding", ""):
            self.close_connection = True

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        if body.startswith(b"<"):
            self.send_header("Content-Type", "text/html; charset=utf-8")
        elif body:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _basic_credentials(header: str | None) -> tuple[bool, str | None, str]:
    """(given, username, password); a malformed Basic header counts as wrong credentials."""
    if header is None or not header.lower().startswith("basic "):
        return False, None, ""
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except ValueError:
        return True, None, ""
    username, _, password = decoded.partition(":")
    return True, username, password


def _errors(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


def _not_found_page() -> bytes:
    return (
        b"<!DOCTYPE html>\n<html><head><title>The page you're looking for could not be found"
        b" (404)</title></head><body><h1>404</h1></body></html>\n"
    )
