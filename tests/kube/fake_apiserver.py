"""A small Kubernetes API server over HTTPS on 127.0.0.1 for the calls certctl makes.

No kube-apiserver can be installed here, so this implements, with their real JSON shapes:

* ``POST /apis/authentication.k8s.io/v1/tokenreviews`` (TokenReview; an unknown token gets a
  status with ``user: {}`` and ``error`` and no ``authenticated``, as Go's omitempty leaves it;
  each token is valid for its user's ``audiences``, checked against ``spec.audiences`` or, when
  the review names none, the API server's own, and the intersection is returned in
  ``status.audiences``; ``audience_aware = False`` acts as an authenticator that ignores
  audiences and answers without them);
* ``POST /apis/authorization.k8s.io/v1/subjectaccessreviews`` (``allowed`` always present);
* ``GET``, ``POST``, ``PUT`` on ``/api/v1/namespaces/{ns}/secrets[/{name}]`` with
  ``resourceVersion`` optimistic concurrency (409 Conflict), AlreadyExists, NotFound and the
  immutable ``type`` (422); ``GET`` of the collection is a LIST (a ``SecretList``, by name,
  items without ``kind``/``apiVersion``), filtered by an equality-based ``labelSelector``
  (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, comma-separated; anything else is 400), in
  chunks when the LIST gives ``limit``: at most ``limit`` items (at most ``page_size``, as an
  API server may return fewer) and ``metadata.continue`` while more remain; a ``continue``
  token after ``expire_continue`` was set is 410 Expired, as after etcd's compaction (the
  pages are not one snapshot: a continued LIST sees the Secrets as they are then);
  ``endless_continue`` makes every chunk carry a continue token, the same or a new one;
* errors as ``v1.Status`` objects; callers must present ``Authorization: Bearer`` with one of
  ``accepted_tokens`` or a client certificate from the test CA, else 401;
* RBAC, when ``rbac`` is set: the rules bound to certctl's ServiceAccount (a Role's in its
  namespace, a ClusterRole's everywhere), matched as the API server's RBAC authorizer does
  (``resourceNames`` never match a ``create``, whose URL names no object), else 403
  Forbidden with the API server's message.

Every request is recorded (method, path, bearer token, client certificate CN, JSON body).
"""

from __future__ import annotations

import base64
import binascii
import copy
import itertools
import json
import re
import ssl
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_SECRET = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$")


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    bearer: str | None
    client_cn: str | None
    body: dict[str, Any] | None


API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"


@dataclass
class KubeUser:
    username: str
    uid: str = ""
    groups: list[str] = field(default_factory=list)
    extra: dict[str, list[str]] = field(default_factory=dict)
    # The token's "aud": a default ServiceAccount token is the API server's.
    audiences: list[str] = field(default_factory=lambda: [API_SERVER_AUDIENCE])


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


class FakeApiServer:
    """State and recorder; ``url`` once started."""

    def __init__(self, cert_file: Path, key_file: Path, ca_file: Path) -> None:
        self.accepted_tokens: set[str] = set()
        self.users: dict[str, KubeUser] = {}  # ServiceAccount token -> user
        self.allowed: set[tuple[str, str, str]] = set()  # (username, path, verb)
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self.fail_status: int | None = None  # answer every call with this 5xx
        self.audience_aware = True  # False: TokenReview ignores spec.audiences
        self.before_put: list[Any] = []  # callables run once before the next PUT
        self.before_post: list[Any] = []  # callables run once before the next Secret POST
        self.page_size: int | None = None  # a chunked LIST returns at most this many items
        self.expire_continue = False  # True: the next continue token is 410 Expired
        # A broken API server (or proxy) whose chunked LIST never ends: "same" answers a
        # continued LIST with the token it was given, "new" with a fresh token each time.
        self.endless_continue: str | None = None
        # A slow API server (APF queueing, etcd latency): each answer waits this long, with
        # the requests waiting meanwhile counted (peak_in_flight: the most at once).
        self.delay_s = 0.0
        self.in_flight = 0
        self.peak_in_flight = 0
        # RBAC of the callers with accepted_tokens: (namespace, rule), namespace None for a
        # ClusterRole's rules; None = no authorization (every call allowed).
        self.rbac: list[tuple[str | None, dict[str, Any]]] | None = None
        self.rbac_user = "system:serviceaccount:certs:certctl"
        self._versions = itertools.count(100)
        self._lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert_file), str(key_file))
        context.load_verify_locations(str(ca_file))
        context.verify_mode = ssl.CERT_OPTIONAL
        self._httpd = _TLSServer(context, ("127.0.0.1", 0), _handler(self))
        self.port = self._httpd.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    # --- helpers for tests --------------------------------------------------------------

    def next_version(self) -> str:
        return str(next(self._versions))

    def paths(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    def clear(self) -> None:
        self.requests.clear()

    def put_secret(self, namespace: str, name: str, **fields: Any) -> dict[str, Any]:
        obj = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self.next_version(),
                "creationTimestamp": "2025-06-01T12:00:00Z",
                **fields.pop("metadata", {}),
            },
            "type": "Opaque",
            **fields,
        }
        self.secrets[(namespace, name)] = obj
        return obj

    # --- request handling ---------------------------------------------------------------

    def slow_handle(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        bearer: str | None,
        cn: str | None,
    ) -> tuple[int, dict[str, Any]]:
        """``handle`` after ``delay_s``, counting the requests in flight meanwhile."""
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            return self.handle(method, path, body, bearer, cn)
        finally:
            with self._lock:
                self.in_flight -= 1

    def handle(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        bearer: str | None,
        cn: str | None,
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(Recorded(method, path, bearer, cn, copy.deepcopy(body)))
            if self.fail_status is not None:
                return self.fail_status, status(
                    self.fail_status, "InternalError", "etcdserver: request timed out"
                )
            if bearer not in self.accepted_tokens and cn is None:
                return 401, status(401, "Unauthorized", "Unauthorized")
            forbidden = self._authorize(method, path)
            if forbidden is not None:
                return 403, forbidden
            if method == "POST" and path == "/apis/authentication.k8s.io/v1/tokenreviews":
                return self._token_review(body or {})
            if method == "POST" and path == "/apis/authorization.k8s.io/v1/subjectaccessreviews":
                return self._access_review(body or {})
            route, _, query = path.partition("?")
            match = _SECRET.match(route)
            if match:
                if method == "GET" and match.group(2) is None:
                    return self._list_secrets(match.group(1), urllib.parse.parse_qs(query))
                return self._secret(method, match.group(1), match.group(2), body)
            return 404, status(404, "NotFound", "the server could not find the requested resource")

    def _authorize(self, method: str, path: str) -> dict[str, Any] | None:
        """None when ``rbac`` allows the call, else the API server's Forbidden Status."""
        if self.rbac is None:
            return None
        match = _SECRET.match(path.partition("?")[0])
        if match:
            group, resource, namespace, name = "", "secrets", match.group(1), match.group(2)
            verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update"}.get(
                method, method.lower()
            )
        elif path.startswith("/apis/") and path.count("/") == 4 and method == "POST":
            _, _, group, _, resource = path.split("/")
            namespace, name, verb = None, None, "create"
        else:
            return None
        for where, rule in self.rbac:
            if where is not None and where != namespace:
                continue
            names = rule.get("resourceNames") or []
            if (
                group in rule.get("apiGroups", ())
                and resource in rule.get("resources", ())
                and verb in rule.get("verbs", ())
                and (not names or (name is not None and name in names))
            ):
                return None
        qualified = f"{resource}.{group}" if group else resource
        what = f'{qualified} "{name}"' if name else qualified
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        details: dict[str, Any] = {"group": group, "kind": resource}
        if name:
            details["name"] = name
        return status(
            403,
            "Forbidden",
            f'{what} is forbidden: User "{self.rbac_user}" cannot {verb} resource "{resource}" '
            f'in API group "{group}" {scope}',
            **details,
        )

    def _token_review(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if (body.get("apiVersion"), body.get("kind")) != (
            "authentication.k8s.io/v1",
            "TokenReview",
        ):
            return 400, status(400, "BadRequest", "wrong apiVersion/kind for TokenReview")
        token = (body.get("spec") or {}).get("token")
        wanted = (body.get("spec") or {}).get("audiences") or [API_SERVER_AUDIENCE]
        answer: dict[str, Any] = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": body.get("spec"),
        }
        user = self.users.get(token) if isinstance(token, str) else None
        valid_for = [a for a in wanted if user is not None and a in user.audiences]
        if user is None:
            answer["status"] = {
                "user": {},
                "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]",
            }
        elif self.audience_aware and not valid_for:
            answer["status"] = {
                "user": {},
                "error": (
                    f"[invalid bearer token, token audiences {json.dumps(user.audiences)} "
                    f"is invalid for the target audiences {json.dumps(wanted)}]"
                ),
            }
        else:
            u: dict[str, Any] = {"username": user.username, "groups": user.groups}
            if user.uid:
                u["uid"] = user.uid
            if user.extra:
                u["extra"] = user.extra
            answer["status"] = {"authenticated": True, "user": u}
            if self.audience_aware:
                answer["status"]["audiences"] = valid_for
        return 201, answer

    def _access_review(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if (body.get("apiVersion"), body.get("kind")) != (
            "authorization.k8s.io/v1",
            "SubjectAccessReview",
        ):
            return 400, status(400, "BadRequest", "wrong apiVersion/kind for SubjectAccessReview")
        spec = body.get("spec") or {}
        attrs = spec.get("nonResourceAttributes") or {}
        key = (spec.get("user"), attrs.get("path"), attrs.get("verb"))
        allowed = key in self.allowed
        result: dict[str, Any] = {"allowed": allowed}
        if allowed:
            result["reason"] = 'RBAC: allowed by ClusterRoleBinding "certctl-metrics-reader"'
        return 201, {
            "kind": "SubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": result,
        }

    def _list_secrets(
        self, namespace: str, query: dict[str, list[str]]
    ) -> tuple[int, dict[str, Any]]:
        requirements: list[tuple[str, str, str | None]] = []  # (op, key, value)
        for selector in query.get("labelSelector", []):
            for term in selector.split(","):
                term = term.strip()
                found = re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*([^=!\s]*)", term)
                if found:
                    op = "!=" if found.group(2) == "!=" else "="
                    requirements.append((op, found.group(1), found.group(3)))
                elif re.fullmatch(r"!?[^=!\s,()]+", term):
                    exists = not term.startswith("!")
                    requirements.append(("exists" if exists else "absent", term.lstrip("!"), None))
                else:
                    return 400, status(400, "BadRequest", f"unable to parse requirement: {term}")

        def selected(obj: dict[str, Any]) -> bool:
            labels = (obj.get("metadata") or {}).get("labels") or {}
            for op, key, value in requirements:
                matches = {
                    "=": labels.get(key) == value,
                    "!=": labels.get(key) != value,  # an absent label is not equal
                    "exists": key in labels,
                    "absent": key not in labels,
                }[op]
                if not matches:
                    return False
            return True

        start = ""
        token = (query.get("continue") or [""])[0]
        if token:
            if self.expire_continue:
                self.expire_continue = False
                return 410, status(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter.",
                )
            try:
                start = json.loads(base64.urlsafe_b64decode(token))["start"]
            except (ValueError, KeyError, TypeError):
                return 400, status(400, "BadRequest", "continue key is not valid")
        limit = int((query.get("limit") or ["0"])[0])
        if limit and self.page_size:
            limit = min(limit, self.page_size)
        items = []
        more = ""
        for (ns, name), obj in sorted(self.secrets.items()):
            if ns != namespace or name <= start or not selected(obj):
                continue
            if limit and len(items) == limit:
                more = base64.urlsafe_b64encode(
                    json.dumps({"start": items[-1]["metadata"]["name"]}).encode()
                ).decode()
                break
            item = copy.deepcopy(obj)
            item.pop("kind", None)  # as the API server lists them
            item.pop("apiVersion", None)
            items.append(item)
        metadata = {"resourceVersion": self.next_version()}
        if limit and self.endless_continue:
            # Each page again from the start, under a token: the one given, else a new one.
            fresh = json.dumps({"start": "", "n": self.next_version()}).encode()
            more = (self.endless_continue == "same" and token) or (
                base64.urlsafe_b64encode(fresh).decode()
            )
        if more:
            metadata["continue"] = more
        return 200, {"kind": "SecretList", "apiVersion": "v1", "metadata": metadata, "items": items}

    def _secret(
        self, method: str, namespace: str, name: str | None, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any]]:
        if method == "GET" and name:
            obj = self.secrets.get((namespace, name))
            if obj is None:
                return 404, status(
                    404, "NotFound", f'secrets "{name}" not found', name=name, kind="secrets"
                )
            return 200, copy.deepcopy(obj)
        if body is None:
            return 400, status(400, "BadRequest", "body required")
        for value in (body.get("data") or {}).values():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return 400, status(400, "BadRequest", "illegal base64 data")
        meta = body.get("metadata") or {}
        if method == "POST" and name is None:
            while self.before_post:
                self.before_post.pop(0)()
            new_name = str(meta.get("name") or "")
            if (namespace, new_name) in self.secrets:
                return 409, status(
                    409,
                    "AlreadyExists",
                    f'secrets "{new_name}" already exists',
                    name=new_name,
                    kind="secrets",
                )
            created = copy.deepcopy(body)
            created["metadata"] = {
                **meta,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self.next_version(),
                "creationTimestamp": "2025-06-01T12:00:00Z",
            }
            created.setdefault("type", "Opaque")
            self.secrets[(namespace, new_name)] = created
            return 201, copy.deepcopy(created)
        if method == "PUT" and name:
            while self.before_put:
                self.before_put.pop(0)()
            current = self.secrets.get((namespace, name))
            if current is None:
                return 404, status(404, "NotFound", f'secrets "{name}" not found')
            if meta.get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return 409, status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on secrets "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                )
            if body.get("type", "Opaque") != current.get("type", "Opaque"):
                return 422, status(
                    422, "Invalid", f'Secret "{name}" is invalid: type: field is immutable'
                )
            updated = copy.deepcopy(body)
            updated["metadata"] = {
                **meta,
                "uid": current["metadata"]["uid"],
                "resourceVersion": self.next_version(),
            }
            self.secrets[(namespace, name)] = updated
            return 200, copy.deepcopy(updated)
        return 405, status(405, "MethodNotAllowed", "method not allowed")


class _TLSServer(ThreadingHTTPServer):
    """Handshakes in each connection's thread, with a real server's backlog.

    A wrapped listening socket handshook in the accept loop, one client at a time, and
    its backlog of 5 refused the rest: the fake could not take the concurrent connections a
    real API server takes, and so hid a client that opens too many.
    """

    daemon_threads = True
    request_queue_size = 1024

    def __init__(
        self, context: ssl.SSLContext, address: tuple[str, int], handler: type[Any]
    ) -> None:
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that does not trust us (the negative twins) hangs up
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


def _handler(api: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            auth = self.headers.get("Authorization") or ""
            bearer = auth[7:] if auth.startswith("Bearer ") else None
            cn = None
            peer = (
                self.connection.getpeercert() if hasattr(self.connection, "getpeercert") else None
            )
            if peer:
                for rdn in peer.get("subject", ()):
                    for key, value in rdn:
                        if key == "commonName":
                            cn = value
            code, answer = api.slow_handle(self.command, self.path, body, bearer, cn)
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

    return Handler
