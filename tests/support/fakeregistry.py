"""An in-memory registry + token service, usable as an ``httpx.MockTransport`` handler.

It follows distribution 2.8.2 where registry-notes.md says so: upload sessions whose Location
changes on every PATCH (a stale one answers 404 BLOB_UPLOAD_INVALID), Content-Range ignored,
digest checked at PUT (400 DIGEST_INVALID), per-repository blob existence, mounts needing pull on
the source, manifests needing Content-Type == mediaType and their blobs present, Bearer tokens
with scopes checked at the start of each request.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx

REGISTRY = "registry.test"
REALM = "https://auth.test/token"
SERVICE = "registry.test"
USERS = {"alice": "s3cret-pass"}
_PATH_RE = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>blobs|manifests)/(?P<rest>.*)$")

Fault = Callable[[httpx.Request], "httpx.Response | None"]


@dataclass
class Recorded:
    method: str
    url: httpx.URL
    headers: httpx.Headers
    body: bytes

    @property
    def path(self) -> str:
        return self.url.path


@dataclass
class FakeRegistry:
    auth: Literal["none", "basic", "bearer"] = "none"
    location_style: Literal["relative", "absolute", "http-absolute"] = "relative"
    token_field: str = "token"
    expires_in: int | None = None
    anonymous_push: bool = False
    requests: list[Recorded] = field(default_factory=list)
    token_requests: list[Recorded] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    blobs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    uploads: dict[str, tuple[str, int, bytearray]] = field(default_factory=dict)
    tokens: dict[str, set[str]] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # -- dispatch -------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        recorded = Recorded(request.method, request.url, request.headers.copy(), request.content)
        if request.url.host == "auth.test":
            self.token_requests.append(recorded)
            return self._token(request)
        self.requests.append(recorded)
        for fault in list(self.faults):
            answer = fault(request)
            if answer is not None:
                return answer
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        if request.url.path == "/v2/":
            return httpx.Response(200, json={})
        match = _PATH_RE.match(request.url.path)
        if match is None:
            return _error(404, "NOT_FOUND", "no route")
        name, kind, rest = match["name"], match["kind"], match["rest"]
        if kind == "manifests":
            return self._manifest(request, name, rest)
        if rest.startswith("uploads/"):
            return self._upload(request, name, rest[len("uploads/") :])
        return self._blob(request, name, rest)

    # -- auth -----------------------------------------------------------------------------------

    def _needed(self, request: httpx.Request) -> list[str]:
        match = _PATH_RE.match(request.url.path)
        if match is None:
            return []
        action = "pull" if request.method in ("GET", "HEAD") else "pull,push"
        needed = [f"repository:{match['name']}:{action}"]
        if "from" in request.url.params:
            needed.append(f"repository:{request.url.params['from']}:pull")
        return needed

    def _check_auth(self, request: httpx.Request) -> httpx.Response | None:
        header = request.headers.get("authorization", "")
        if self.auth == "basic":
            if header == basic(*next(iter(USERS.items()))):
                return None
            return _error(401, "UNAUTHORIZED", "auth", {"WWW-Authenticate": 'Basic realm="fake"'})
        if self.auth != "bearer":
            return None
        needed = self._needed(request)
        challenge = f'Bearer realm="{REALM}",service="{SERVICE}"'
        if needed:
            challenge += f',scope="{" ".join(needed)}"'
        token = header[len("Bearer ") :] if header.startswith("Bearer ") else None
        if token is None:
            return _error(401, "UNAUTHORIZED", "auth", {"WWW-Authenticate": challenge})
        if token not in self.tokens or token in self.revoked:
            headers = {"WWW-Authenticate": challenge + ',error="invalid_token"'}
            return _error(401, "UNAUTHORIZED", "token expired", headers)
        if not all(_granted(self.tokens[token], scope) for scope in needed):
            headers = {"WWW-Authenticate": challenge + ',error="insufficient_scope"'}
            return _error(401, "UNAUTHORIZED", "insufficient scope", headers)
        return None

    def _token(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get("authorization")
        user = None
        if header is not None:
            user = next((u for u, p in USERS.items() if header == basic(u, p)), None)
            if user is None:
                return httpx.Response(401, json={"details": "wrong credentials"})
        scopes = request.url.params.get_list("scope")
        granted = set(scopes)
        if user is None and not self.anonymous_push:
            granted = {s.replace(",push", "") for s in scopes}  # anonymous may only pull
        token = f"tok-{next(self._ids)}"
        self.tokens[token] = granted
        answer: dict[str, object] = {self.token_field: token}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return httpx.Response(200, json=answer)

    # -- blobs ----------------------------------------------------------------------------------

    def _blob(self, request: httpx.Request, name: str, digest: str) -> httpx.Response:
        data = self.blobs.get(name, {}).get(digest)
        if data is None:
            return _error(404, "BLOB_UNKNOWN", "blob unknown")
        headers = {"Content-Length": str(len(data)), "Docker-Content-Digest": digest}
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, headers=headers, content=data)

    def _location(self, name: str, uuid: str, state: int) -> str:
        path = f"/v2/{name}/blobs/uploads/{uuid}?_state={uuid}.{state}%3D%3D"
        if self.location_style == "relative":
            return path
        scheme = "http" if self.location_style == "http-absolute" else "https"
        return f"{scheme}://{REGISTRY}{path}"

    def _upload(self, request: httpx.Request, name: str, uuid: str) -> httpx.Response:
        if request.method == "POST":
            mount, source = request.url.params.get("mount"), request.url.params.get("from")
            if mount and source and mount in self.blobs.get(source, {}):
                self.blobs.setdefault(name, {})[mount] = self.blobs[source][mount]
                return httpx.Response(201, headers={"Location": f"/v2/{name}/blobs/{mount}"})
            uuid = f"u{next(self._ids)}"
            self.uploads[uuid] = (name, 0, bytearray())
            return httpx.Response(202, headers={"Location": self._location(name, uuid, 0)})
        session = self.uploads.get(uuid)
        state = request.url.params.get("_state", "")
        if session is None:
            return _error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown")
        if state != f"{uuid}.{session[1]}==":
            return _error(404, "BLOB_UPLOAD_INVALID", "blob upload invalid")
        if request.method == "DELETE":
            del self.uploads[uuid]
            return httpx.Response(204)
        data = session[2] + request.content
        if request.method == "PATCH":
            self.uploads[uuid] = (name, session[1] + 1, data)
            headers = {"Location": self._location(name, uuid, session[1] + 1)}
            return httpx.Response(202, headers={**headers, "Range": f"0-{len(data) - 1}"})
        del self.uploads[uuid]
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if request.url.params.get("digest") != digest:
            return _error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        self.blobs.setdefault(name, {})[digest] = bytes(data)
        headers = {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest}
        return httpx.Response(201, headers=headers)

    # -- manifests ------------------------------------------------------------------------------

    def _manifest(self, request: httpx.Request, name: str, ref: str) -> httpx.Response:
        if request.method == "PUT":
            return self._put_manifest(request, name, ref)
        stored = self.manifests.get((name, ref))
        accepted = request.headers.get("accept", "")
        if stored is None or stored[1] not in accepted:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        digest = "sha256:" + hashlib.sha256(stored[0]).hexdigest()
        headers = {"Content-Type": stored[1], "Docker-Content-Digest": digest}
        return httpx.Response(200, headers=headers, content=stored[0])

    def _put_manifest(self, request: httpx.Request, name: str, ref: str) -> httpx.Response:
        document = json.loads(request.content)
        if request.headers.get("content-type") != document.get("mediaType"):
            return _error(400, "MANIFEST_INVALID", "manifest invalid")
        referenced = [document["config"], *document.get("layers", [])]
        if any(d["digest"] not in self.blobs.get(name, {}) for d in referenced):
            return _error(400, "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry")
        digest = "sha256:" + hashlib.sha256(request.content).hexdigest()
        self.manifests[(name, ref)] = (request.content, document["mediaType"])
        self.manifests[(name, digest)] = (request.content, document["mediaType"])
        return httpx.Response(201, headers={"Docker-Content-Digest": digest})

    # -- helpers for tests ----------------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if method is None or r.method == method]

    def fail_once(
        self, predicate: Callable[[httpx.Request], bool], response: httpx.Response
    ) -> None:
        def fault(request: httpx.Request) -> httpx.Response | None:
            if predicate(request):
                self.faults.remove(fault)
                return response
            return None

        self.faults.append(fault)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _granted(granted: set[str], needed: str) -> bool:
    resource, _, actions = needed.rpartition(":")
    for scope in granted:
        have_resource, _, have_actions = scope.rpartition(":")
        if have_resource == resource and set(actions.split(",")) <= set(have_actions.split(",")):
            return True
    return False


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = {"errors": [{"code": code, "message": message}]}
    return httpx.Response(status, json=body, headers=headers)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
