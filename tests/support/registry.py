"""Run Debian's ``docker-registry`` (distribution 2.8.2) on loopback for integration tests.

Three modes: ``anonymous`` (no auth), ``basic`` (htpasswd, bcrypt) and ``token`` (JWT bearer
tokens from a token server, see ``tokenserver.py``). Every server gets a free port, a private
storage directory with deletes enabled, and a log file kept for debugging.

Any mode can serve https instead of http: pass ``tls`` (a certificate and key from ``tls.py``,
``http.tls`` in the registry's config). ``address`` picks the loopback address to listen on:
a TLS registry on 127.0.0.2 is reached over https by clients that use plain http only for
localhost/127.0.0.1, as ociforge does (Linux routes all of 127.0.0.0/8 to ``lo``).

The htpasswd file needs a bcrypt hash, the only scheme distribution accepts. No bcrypt package
is a dependency, so a small pure-Python bcrypt lives here (cost 4, about 0.25 s, once per
server); it was checked against libxcrypt and against the registry itself.

Also here, because both ``tokenserver.py`` and ``faultproxy.py`` need it: ``LoopbackHTTPServer``
and ``LoopbackHandler``, a threaded loopback server that stops for real (kept-alive
connections included) and answers without Nagle delays.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import json
import logging
import os
import secrets
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

from tests.support.tls import TlsFiles

logger = logging.getLogger(__name__)

RegistryMode = Literal["anonymous", "basic", "token"]
REGISTRY_BINARY = "docker-registry"


class RegistryStartError(RuntimeError):
    """The registry process did not become ready; the message carries the log tail."""


@dataclass(frozen=True)
class TokenAuthConfig:
    """What the registry needs to trust a token server (``auth.token`` in its config)."""

    realm: str
    service: str
    issuer: str
    root_cert_pem: bytes


def free_port(address: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``address`` (racy by nature; callers retry on collision)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


class RegistryServer:
    """One ``docker-registry serve`` process; use as a context manager or call start/stop."""

    def __init__(
        self,
        workdir: Path,
        *,
        mode: RegistryMode = "anonymous",
        username: str = "ociforge",
        password: str | None = None,
        token_auth: TokenAuthConfig | None = None,
        relative_urls: bool = False,
        startup_timeout: float = 10.0,
        tls: TlsFiles | None = None,
        address: str = "127.0.0.1",
    ) -> None:
        if (mode == "token") != (token_auth is not None):
            raise ValueError("token_auth is required for mode 'token' and only for it")
        if tls is not None and address not in tls.ip_addresses:
            raise ValueError(f"the TLS certificate does not name {address}")
        self.mode: RegistryMode = mode
        self.workdir = workdir
        self.storage_dir = workdir / "storage"
        self.log_path = workdir / "registry.log"
        self.config_path = workdir / "config.yml"
        self.token_auth = token_auth
        self.relative_urls = relative_urls
        self.startup_timeout = startup_timeout
        self.tls = tls
        self.address = address
        self.username: str | None = username if mode == "basic" else None
        self.password: str | None = None
        if mode == "basic":
            self.password = password if password is not None else secrets.token_urlsafe(16)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``ADDRESS:PORT`` (127.0.0.1 unless told), the registry part of an image reference."""
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://{self.host}"

    @property
    def credentials(self) -> tuple[str, str] | None:
        """(username, password) for basic mode, else None."""
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> RegistryServer:
        if self._proc is not None:
            raise RuntimeError("registry already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        self._write_auth_files()
        # Another process may grab the port between free_port() and the bind: retry then.
        for attempt in range(3):
            self.port = free_port(self.address)
            self.config_path.write_text(json.dumps(self._config(), indent=2))
            self._spawn()
            try:
                self._wait_ready()
            except RegistryStartError:
                in_use = "address already in use" in self.log_text()
                self.stop()
                if in_use and attempt < 2:
                    continue
                raise
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RegistryServer(mode={self.mode!r}, url={self.url!r})"

    def _probe(self) -> int | None:
        """``GET /v2/``'s status, None while nothing answers. Over TLS the certificate is
        verified against the test CA, so a registry that clients cannot trust never counts
        as ready; that is reported at once rather than after the startup timeout."""
        conn: http.client.HTTPConnection
        if self.tls is None:
            conn = http.client.HTTPConnection(self.address, self.port, timeout=1)
        else:
            context = self.tls.client_context()
            conn = http.client.HTTPSConnection(self.address, self.port, timeout=1, context=context)
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status
        except ssl.SSLCertVerificationError as exc:
            message = f"{self.url} serves a certificate the test CA rejects: {exc}"
            raise RegistryStartError(message) from None
        except OSError:
            return None
        finally:
            conn.close()

    def _spawn(self) -> None:
        # distribution maps REGISTRY_* variables onto its config (REGISTRY_AUTH_FILE from
        # containers tooling would become `auth.file`), so the child never sees them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        # Safety net for sessions that die before fixture teardown runs.
        atexit.register(self.stop)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                break
            if self._probe() in (200, 401):
                logger.debug("registry ready at %s", self.url)
                return
            time.sleep(0.02)
        tail = "\n".join(self.log_text().splitlines()[-20:])
        raise RegistryStartError(f"docker-registry did not become ready on {self.url}:\n{tail}")

    def _write_auth_files(self) -> None:
        if self.credentials is not None:
            user, password = self.credentials
            (self.workdir / "htpasswd").write_text(htpasswd_line(user, password) + "\n")
        if self.token_auth is not None:
            (self.workdir / "token-bundle.pem").write_bytes(self.token_auth.root_cert_pem)

    def _config(self) -> dict[str, object]:
        http_section: dict[str, object] = {
            "addr": self.host,
            "secret": secrets.token_hex(16),
            "relativeurls": self.relative_urls,
        }
        if self.tls is not None:
            http_section["tls"] = {
                "certificate": str(self.tls.certificate),
                "key": str(self.tls.key),
            }
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                # Purging runs only hours later anyway; keep the storage exactly as tests left it.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http_section,
        }
        if self.mode == "basic":
            path = str(self.workdir / "htpasswd")
            config["auth"] = {"htpasswd": {"realm": "basic-realm", "path": path}}
        elif self.token_auth is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token_auth.realm,
                    "service": self.token_auth.service,
                    "issuer": self.token_auth.issuer,
                    "rootcertbundle": str(self.workdir / "token-bundle.pem"),
                }
            }
        return config


# --- plumbing shared by the token server and the fault proxy


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 (free port), serving from a daemon thread as soon
    as it is built. ``stop()`` also ends kept-alive connections: a stopped server answers
    nothing more, even on a client's pooled connection. ``app`` is for the handlers."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], app: object) -> None:
        self.app = app
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        with self._open_lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)


class LoopbackHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no Nagle, logs to logging instead of stderr."""

    protocol_version = "HTTP/1.1"
    timeout = 60  # a stuck client must not pin a thread forever

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes: without TCP_NODELAY, Nagle plus the
        # client's delayed ACK add 40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug(f"{type(self).__module__}: {format}", *args)


# --- htpasswd: pure-Python bcrypt ($2b$), enough for distribution's golang.org/x/crypto/bcrypt.

_STD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BCRYPT_B64 = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_MASK = 0xFFFFFFFF


def htpasswd_line(username: str, password: str, *, cost: int = 4) -> str:
    """``user:$2b$...`` for an htpasswd file (cost 4 is the minimum Go's bcrypt accepts)."""
    return f"{username}:{bcrypt_hash(password.encode(), secrets.token_bytes(16), cost)}"


def bcrypt_hash(password: bytes, salt: bytes, cost: int) -> str:
    """bcrypt as in OpenBSD: EksBlowfish setup, then "OrpheanBeholderScryDoubt" x 64."""
    if len(salt) != 16 or not 4 <= cost <= 31:
        raise ValueError("bcrypt needs a 16-byte salt and a cost between 4 and 31")
    key_words = _cyclic_words((password + b"\x00")[:72], 18)
    salt_words = _cyclic_words(salt, 18)
    cipher = _Blowfish(_pi_words(18 + 4 * 256))
    cipher.expand(key_words, salt_words)
    for _ in range(1 << cost):
        cipher.expand(key_words, None)
        cipher.expand(salt_words, None)
    text = _cyclic_words(b"OrpheanBeholderScryDoubt", 6)
    for _ in range(64):
        for i in range(0, 6, 2):
            text[i], text[i + 1] = cipher.encrypt(text[i], text[i + 1])
    raw = b"".join(word.to_bytes(4, "big") for word in text)
    return f"$2b${cost:02d}${_bcrypt_b64(salt)}{_bcrypt_b64(raw[:23])}"


def _bcrypt_b64(data: bytes) -> str:
    encoded = base64.b64encode(data).decode().rstrip("=")
    return encoded.translate(str.maketrans(_STD_B64, _BCRYPT_B64))


def _cyclic_words(data: bytes, count: int) -> list[int]:
    stream = (data * (count * 4 // len(data) + 1))[: count * 4]
    return [int.from_bytes(stream[i : i + 4], "big") for i in range(0, count * 4, 4)]


def _pi_words(count: int) -> list[int]:
    """Blowfish's initial P-array and S-boxes: the hex digits of pi's fractional part."""
    guard = 64
    one = 1 << (count * 32 + guard)

    def arctan_inverse(x: int) -> int:
        total = term = one // x
        n, sign = 3, -1
        while term:
            term //= x * x
            total += sign * (term // n)
            n, sign = n + 2, -sign
        return total

    fraction = (16 * arctan_inverse(5) - 4 * arctan_inverse(239) - 3 * one) >> guard
    return [(fraction >> (32 * (count - 1 - i))) & _MASK for i in range(count)]


class _Blowfish:
    def __init__(self, initial: list[int]) -> None:
        self.p = initial[:18]
        self.s = [initial[18 + 256 * i : 18 + 256 * (i + 1)] for i in range(4)]

    def encrypt(self, left: int, right: int) -> tuple[int, int]:
        p = self.p
        s0, s1, s2, s3 = self.s
        for i in range(0, 16, 2):
            left ^= p[i]
            f = ((s0[left >> 24] + s1[(left >> 16) & 255]) & _MASK) ^ s2[(left >> 8) & 255]
            right ^= ((f + s3[left & 255]) & _MASK) ^ p[i + 1]
            f = ((s0[right >> 24] + s1[(right >> 16) & 255]) & _MASK) ^ s2[(right >> 8) & 255]
            left ^= (f + s3[right & 255]) & _MASK
        return right ^ p[17], left ^ p[16]

    def expand(self, key_words: list[int], salt_words: list[int] | None) -> None:
        for i in range(18):
            self.p[i] ^= key_words[i]
        left = right = 0
        j = 0
        for box in (self.p, *self.s):
            for i in range(0, len(box), 2):
                if salt_words is not None:
                    # The 128-bit salt is consumed as a cycle of four words.
                    left ^= salt_words[j]
                    right ^= salt_words[j + 1]
                    j ^= 2
                left, right = self.encrypt(left, right)
                box[i], box[i + 1] = left, right
