"""Reliability fixtures: in-process apps with a recording ASGI layer, and the secret ledger.

* ``TestScope`` is a tiny ASGI layer in front of the app. Starlette's TestClient cannot do TLS
  or pick its peer address, so two test-only request headers become scope facts:
  ``x-test-client-cert: CN=…`` → the ASGI ``tls`` extension ``{"client_cert_name": …}`` (what
  certctl's TLS listener provides, see ``certctl.server.protocol.http_protocol``), and
  ``x-test-client-addr: 10.1.2.3`` → ``scope["client"]``. The second keeps the many refused
  requests of the matrix from looking like one address guessing keys. The layer also records
  every error body and every secret a response hands out (``key_value``, ``private_key_pem``).
* ``LEDGER`` collects, for the whole session, the secrets the reliability tests used and where
  they could leak: log files, error bodies, SQLite files (audit records are read from them).
  ``test_secret_hygiene`` runs last (``pytest_collection_modifyitems``) and scans them.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certctl.api.app import create_app
from certctl.api.authentication import ClientCertMapping
from certctl.server.bootstrap import bootstrap
from certctl.server.config import ServerConfig
from certctl.services.context import Services
from tests.api.conftest import FakeClock, bearer

CERT_HEADER = b"x-test-client-cert"
ADDR_HEADER = b"x-test-client-addr"


# --- the ledger ------------------------------------------------------------------------------


@dataclass
class Ledger:
    """Secrets used by the reliability tests and the places they must not reach."""

    secrets: dict[bytes, str] = field(default_factory=dict)  # value → label (for reports)
    error_bodies: list[bytes] = field(default_factory=list)
    log_files: list[Path] = field(default_factory=list)
    # Text a log may hold exactly once (the admin key banner of a first start).
    log_banners: dict[Path, str] = field(default_factory=dict)
    sqlite_files: list[Path] = field(default_factory=list)  # the main file; -wal/-shm follow
    responses_seen: int = 0

    def secret(self, value: str | bytes, label: str) -> None:
        raw = value.encode() if isinstance(value, str) else value
        if len(raw) >= 8:
            self.secrets.setdefault(raw, label)

    def api_key(self, value: str, label: str) -> None:
        """An API key ``cctl_<id>_<secret>``: the whole value and its secret part."""
        self.secret(value, label)
        parts = value.split("_", 2)
        if len(parts) == 3:
            self.secret(parts[2], f"{label} (secret part)")

    def private_key(self, pem: str | bytes, label: str) -> None:
        """A PEM private key: its body lines, its DER and (EC) its raw scalar."""
        raw = pem.encode() if isinstance(pem, str) else pem
        key = serialization.load_pem_private_key(raw, None)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for line in raw.strip().splitlines():
            # A line holding only public key bytes is in every certificate of the key too.
            if not line.startswith(b"-----") and base64.b64decode(line) not in public:
                self.secret(line, f"{label} (PEM line)")
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.secret(der, f"{label} (DER)")
        if isinstance(key, ec.EllipticCurvePrivateKey):
            size = (key.curve.key_size + 7) // 8
            self.secret(
                key.private_numbers().private_value.to_bytes(size, "big"), f"{label} (scalar)"
            )

    def error_body(self, body: bytes) -> None:
        self.error_bodies.append(body)


LEDGER = Ledger()


@pytest.fixture(scope="session")
def ledger() -> Ledger:
    return LEDGER


@pytest.fixture(scope="package", autouse=True)
def _capture_certctl_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every certctl log record of the in-process apps goes to a file the hygiene test scans.

    Package scope: the DEBUG level and the handler end with this directory's tests.
    """
    path = tmp_path_factory.mktemp("logs") / "certctl-in-process.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("certctl")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    LEDGER.log_files.append(path)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The secret-hygiene scan runs after every other test of the session."""
    last = [i for i in items if i.nodeid.startswith("tests/reliability/test_secret_hygiene.py")]
    if last:
        items[:] = [i for i in items if i not in last] + last


# --- the ASGI layer --------------------------------------------------------------------------


class TestScope:
    """Turn the test-only headers into scope facts; record error bodies and handed-out secrets."""

    __test__ = False  # not a pytest class

    def __init__(self, app: ASGIApp, ledger: Ledger) -> None:
        self.app = app
        self.ledger = ledger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = []
        for name, value in scope["headers"]:
            if name == CERT_HEADER:
                extensions = dict(scope.get("extensions") or {})
                extensions["tls"] = {"client_cert_name": value.decode()}
                scope = {**scope, "extensions": extensions}
            elif name == ADDR_HEADER:
                scope = {**scope, "client": (value.decode(), 40000)}
            else:
                headers.append((name, value))
        scope = {**scope, "headers": headers}
        status = [0]
        chunks: list[bytes] = []

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, recording_send)
        self._record(status[0], b"".join(chunks))

    def _record(self, status: int, body: bytes) -> None:
        self.ledger.responses_seen += 1
        if status >= 400:
            self.ledger.error_body(body)
            return
        if b"key_value" not in body and b"PRIVATE KEY" not in body:
            return
        try:
            data = json.loads(body)
        except ValueError:
            return
        if isinstance(data, dict):
            if isinstance(data.get("key_value"), str):
                self.ledger.api_key(data["key_value"], "API key minted during the tests")
            if isinstance(data.get("private_key_pem"), str):
                self.ledger.private_key(data["private_key_pem"], "issued private key")


def mtls(subject: str) -> dict[str, str]:
    """Headers making TestScope present a verified client certificate with ``subject``."""
    return {CERT_HEADER.decode(): subject}


def from_address(address: str) -> dict[str, str]:
    """Headers making TestScope set the peer address."""
    return {ADDR_HEADER.decode(): address}


# --- in-process apps -------------------------------------------------------------------------


@dataclass
class RelApp:
    """A bootstrapped in-process app (SQLite) behind TestScope and a TestClient."""

    client: TestClient
    app: ASGIApp
    services: Services
    admin_key: str
    clock: FakeClock
    data_dir: Path

    @property
    def db(self) -> Path:
        return self.data_dir / "certctl.db"

    def request(self, method: str, path: str, key: str | None = None, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", None) or {})
        if key is not None:
            headers.update(bearer(key))
        return self.client.request(method, path, headers=headers, **kw)

    def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        """Act as admin and assert ``status``; return the JSON body (or None)."""
        r = self.request(method, path, self.admin_key, **kw)
        assert r.status_code == status, (method, path, r.status_code, r.text)
        return r.json() if r.content and "json" in r.headers.get("content-type", "") else None

    def integrity_check(self) -> str:
        with self.services.engine.connect() as conn:
            result = conn.execute(text("PRAGMA integrity_check")).scalar_one()
        return str(result)


@contextmanager
def running_app(
    data_dir: Path,
    template: Path,
    *,
    client_cert_mappings: tuple[ClientCertMapping, ...] = (),
) -> Iterator[RelApp]:
    """Bootstrap a store in ``data_dir`` and serve it in-process until the block ends."""
    data_dir.mkdir(mode=0o700, parents=True)
    shutil.copyfile(template, data_dir / "certctl.db")
    (data_dir / "certctl.db").chmod(0o600)  # as a server makes it (0644 warns)
    booted = bootstrap(ServerConfig.model_validate({"data-dir": str(data_dir)}))
    assert booted.admin_key is not None
    LEDGER.api_key(booted.admin_key, "bootstrap admin key")
    LEDGER.sqlite_files.append(data_dir / "certctl.db")
    clock = FakeClock()
    booted.services.clock = clock
    app = TestScope(create_app(booted.services, client_cert_mappings=client_cert_mappings), LEDGER)
    try:
        with TestClient(
            app, base_url="https://testserver", raise_server_exceptions=False
        ) as client:
            yield RelApp(client, app, booted.services, booted.admin_key, clock, data_dir)
    finally:
        booted.services.engine.dispose()
