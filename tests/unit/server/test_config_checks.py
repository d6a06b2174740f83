"""Config mistakes are refused when the config loads, naming the key, before anything is made.

Before, some were found only after the first start had created the data directory, the CA and
the admin key (and printed the key, which is shown once): a bad ``tls.reload-interval``,
``tls.client-auth`` without ``tls.client-ca``, an invalid ``tls.subject-alt-names`` entry.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from certctl.errors import InvalidRequest
from certctl.server.config import ServerConfig, load_config
from tests._tools import EC_P256, failed, run

REFUSED = {
    "top-level duration": ({"ca-cert-validity": "10x"}, "{file}: ca-cert-validity: 10x: unknown"),
    "reload interval": ({"tls": {"reload-interval": "soon"}}, "{file}: tls.reload-interval: soon"),
    "webhook timeout": (
        {"notifications": {"webhook": {"url": "https://h.example/x", "timeout": "-1s"}}},
        "{file}: notifications.webhook.timeout: ",
    ),
    # Checked at load, not at the first POST; its user:password@ is never repeated.
    "webhook proxy of another scheme": (
        {
            "notifications": {
                "webhook": {"url": "https://h.example/x", "proxy": "socks5://u:hunter2@p:1080"}
            }
        },
        "{file}: notifications.webhook.proxy: expected http://HOST[:PORT] or https://HOST[:PORT]",
    ),
    "webhook proxy with a path": (
        {"notifications": {"webhook": {"url": "https://h.example/x", "proxy": "http://p/x"}}},
        "{file}: notifications.webhook.proxy: expected http://HOST[:PORT]",
    ),
    # Before, any URL was taken and checked at the first POST, if ever: plain HTTP sent the
    # signed events (service names, SANs) across the network unencrypted, and a user:pass@
    # went out as Basic authentication and into wherever the URL was shown.
    "webhook url plain http beyond loopback": (
        {"notifications": {"webhook": {"url": "http://hooks.example.internal/certctl"}}},
        "{file}: notifications.webhook.url: http:// to hooks.example.internal (beyond loopback) "
        "sends the signed events unencrypted: use https://, or set "
        "notifications.webhook.allow-http: true",
    ),
    "webhook url plain http through a proxy": (
        {
            "notifications": {
                "webhook": {"url": "http://127.0.0.1:8080/x", "proxy": "http://proxy.example:3128"}
            }
        },
        "{file}: notifications.webhook.url: http:// through notifications.webhook.proxy sends "
        "the signed events unencrypted to the proxy: use https://, or set "
        "notifications.webhook.allow-http: true",
    ),
    "webhook url with a user and password": (
        {"notifications": {"webhook": {"url": "https://certctl:hunter2@hooks.example/x"}}},
        "{file}: notifications.webhook.url: a user:password@ in the URL is refused (it would go "
        "out as Basic authentication and show wherever the URL is): receivers authenticate "
        "certctl by the signature, see notifications.webhook.secret-file",
    ),
    "webhook url of another scheme": (
        {"notifications": {"webhook": {"url": "ftp://hooks.example/x"}}},
        "{file}: notifications.webhook.url: expected https://HOST[:PORT]/PATH",
    ),
    "webhook url without a host": (
        {"notifications": {"webhook": {"url": "https:///certctl"}}},
        "{file}: notifications.webhook.url: expected https://HOST[:PORT]/PATH",
    ),
    "webhook url with a bad port": (
        {"notifications": {"webhook": {"url": "https://hooks.example:hunter2/x"}}},
        "{file}: notifications.webhook.url: not a URL (check the host and port)",
    ),
    "webhook url with a space": (
        {"notifications": {"webhook": {"url": "https://hooks.example/a b"}}},
        "{file}: notifications.webhook.url: a space or control character in the URL: "
        "percent-encode it",
    ),
    "client-auth without a CA": (
        {"tls": {"client-auth": "required"}},
        "{file}: tls: client-auth required needs tls.client-ca",
    ),
    "bad server SAN": (
        {"tls": {"subject-alt-names": ["certctl.example", "bad..name"]}},
        "{file}: tls.subject-alt-names: bad..name: invalid DNS name",
    ),
    # A pattern that could never match (or that the old comma split read differently).
    "bad client-cert mapping": (
        {"auth": {"client-cert-mappings": [{"subject": "CN=a;OU=b", "roles": ["r-viewer"]}]}},
        "{file}: auth.client-cert-mappings.0.subject: CN=a;OU=b: ';' in a value must be escaped",
    ),
    "client-cert mapping pinned to no fingerprint": (
        {
            "auth": {
                "client-cert-mappings": [
                    {"subject": "CN=a", "roles": ["r-viewer"], "issuer-fingerprint": "AB:CD"}
                ]
            }
        },
        "{file}: auth.client-cert-mappings.0.issuer-fingerprint: 'AB:CD': not a SHA-256 "
        "fingerprint (64 hex digits, colons allowed)",
    ),
    # Not "internal error (ModuleNotFoundError: No module named 'MySQLdb')" at start, and
    # never the password.
    "other database": (
        {"database-url": "mysql://u:hunter2@db/x"},
        "{file}: database-url: mysql://…: use sqlite:///PATH or postgresql+psycopg://",
    ),
    # An unencoded '@' and ':' in the password: SQLAlchemy takes "hunter2@db" for the port.
    # Before: "internal error (ValueError: invalid literal for int() ...: 'hunter2@db')".
    "password with @ and : unencoded": (
        {"database-url": "postgresql+psycopg://certctl:hu@nt:hunter2@db/certctl"},
        "{file}: database-url: postgresql+psycopg://…: the port is not a number (in a user "
        "name or password, write @ as %40, : as %3A and / as %2F)",
    ),
    # An unencoded '@' alone: the host became "ss@db", which a start quoted (the rest of the
    # password) in "failed to resolve host 'ss@db'".
    "password with @ unencoded": (
        {"database-url": "postgresql+psycopg://certctl:hunter@2ss@db/certctl"},
        "{file}: database-url: postgresql+psycopg://…: the host holds an '@' (in a user "
        "name or password, write @ as %40, : as %3A and / as %2F)",
    ),
    # An unencoded '@' then '/' or '?': the host became "ss", the rest of the password, which
    # a start quoted in "failed to resolve host 'ss'"; the host held no '@'.
    "password with @ and / unencoded": (
        {"database-url": "postgresql+psycopg://certctl:hunter@2ss/x@db/certctl"},
        "{file}: database-url: postgresql+psycopg://…: an '@' follows the password's end (in "
        "a user name or password, write @ as %40, : as %3A and / as %2F)",
    ),
    "password with @ and ? unencoded": (
        {"database-url": "postgresql+psycopg://certctl:hunter@2ss?x@db/certctl"},
        "{file}: database-url: postgresql+psycopg://…: an '@' follows the password's end (in "
        "a user name or password, write @ as %40, : as %3A and / as %2F)",
    ),
    "database url without a scheme": (
        {"database-url": "db.example.internal/certctl"},
        "{file}: database-url: not a URL: use sqlite:///PATH",
    ),
    # A misspelt key said "Extra inputs are not permitted": now the closest key, or the keys
    # the section takes, at any depth (list items included).
    "misspelt top-level key": (
        {"lisen": "127.0.0.1:1"},
        "{file}: lisen: unknown key (did you mean listen?)",
    ),
    "misspelt nested key": (
        {"tls": {"modee": "custom"}},
        "{file}: tls.modee: unknown key (did you mean mode?)",
    ),
    "misspelt key in a list item": (
        {"auth": {"client-cert-mappings": [{"subject": "CN=a", "roles": ["r-admin"], "rols": 1}]}},
        "{file}: auth.client-cert-mappings.0.rols: unknown key (did you mean roles?)",
    ),
    "unknown key, nothing close": (
        {"metrics": {"zzz": 1}},
        "{file}: metrics.zzz: unknown key (known here: listen, secure)",
    ),
    # A whole section of another type said "Input should be a valid dictionary or instance
    # of TLSConfig" (a class name), where the same mistake under a variable said this.
    "section not a mapping": ({"tls": 5}, "{file}: tls: expected a mapping"),
    "section a list": ({"auth": [1]}, "{file}: auth: expected a mapping"),
    "nested section not a mapping": (
        {"auth": {"kubernetes": "yes"}},
        "{file}: auth.kubernetes: expected a mapping",
    ),
    "list item not a mapping": (
        {"auth": {"client-cert-mappings": ["CN=a"]}},
        "{file}: auth.client-cert-mappings.0: expected a mapping",
    ),
    # An unquoted number said only "Input should be a valid string" (or "'1.2' or '1.3'"
    # for 1.3): the hint says what the docs do, at any depth.
    "bare number for a duration": (
        {"reconcile-interval": 5},
        "{file}: reconcile-interval: Input should be a valid string (5 is a number: a duration "
        "needs its unit, e.g. 5s)",
    ),
    "bare number for a nested duration": (
        {"notifications": {"webhook": {"url": "https://h.example/x", "timeout": 30}}},
        "{file}: notifications.webhook.timeout: Input should be a valid string (30 is a "
        "number: a duration needs its unit, e.g. 30s)",
    ),
    "unquoted TLS version": (
        {"tls": {"min-version": 1.3}},
        """{file}: tls.min-version: Input should be '1.2' or '1.3' (1.3 is a YAML number: """
        """quote it, "1.3")""",
    ),
    "bare number for a listen address": (
        {"listen": 8443},
        """{file}: listen: Input should be a valid string (8443 is a YAML number: quote it, """
        """"8443")""",
    ),
    # public-url: leaves name <public-url>/api/v1/issuers/<id>/crl, so it must be a base
    # URL a client can fetch from.
    "public-url without a scheme": (
        {"public-url": "certctl.example.internal:8443"},
        "{file}: public-url: expected an absolute http:// or https:// URL with a host",
    ),
    "public-url of another scheme": (
        {"public-url": "ldap://certctl.example.internal"},
        "{file}: public-url: expected an absolute http:// or https:// URL with a host",
    ),
    "public-url with a query": (
        {"public-url": "https://certctl.example.internal/?x=1"},
        "{file}: public-url: a base URL has no ?query",
    ),
    "public-url with a fragment": (
        {"public-url": "https://certctl.example.internal/#top"},
        "{file}: public-url: a URL clients fetch has no #fragment",
    ),
    "public-url with a user and password": (
        {"public-url": "https://admin:s3cret@certctl.example.internal"},
        "{file}: public-url: a URL certificates carry has no user:password@",
    ),
    "public-url with a character a URI may not hold": (
        {"public-url": "https://certctl.example.internal/a|b"},
        "{file}: public-url: '|' may not appear in a URL: percent-encode it (%7C)",
    ),
    "public-url with an empty label": (
        {"public-url": "https://certctl..example.internal"},
        "{file}: public-url: certctl..example.internal: not a host name",
    ),
    "public-url with a bad port": (
        {"public-url": "https://certctl.example.internal:84x3"},
        "{file}: public-url: not a URL (check the host and port)",
    ),
}


@pytest.mark.parametrize(
    ("given", "loaded"),
    [
        ("https://certctl.example.internal:8443", "https://certctl.example.internal:8443"),
        ("https://certctl.example.internal:8443/", "https://certctl.example.internal:8443"),
        (
            "http://crl-mirror.example.internal/certctl/",
            "http://crl-mirror.example.internal/certctl",
        ),
        ("https://[::1]:8443", "https://[::1]:8443"),
    ],
)
def test_public_url_loads_without_a_trailing_slash(
    monkeypatch: pytest.MonkeyPatch, given: str, loaded: str
) -> None:
    assert load_config(None, {"public-url": given}).public_url == loaded
    monkeypatch.setenv("CERTCTL_PUBLIC_URL", given)
    assert load_config(None, {}).public_url == loaded
    monkeypatch.delenv("CERTCTL_PUBLIC_URL")
    assert load_config(None, {}).public_url is None


def test_a_bad_certctl_public_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTCTL_PUBLIC_URL", "ftp://x")
    with pytest.raises(InvalidRequest) as info:
        load_config(None, {})
    assert info.value.detail == (
        "CERTCTL_PUBLIC_URL=ftp://x: expected an absolute http:// or https:// URL with a host, "
        "e.g. https://certctl.example.internal:8443"
    )


def test_a_certctl_public_url_with_a_password_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # It would be published in every certificate; the refusal does not log it either.
    monkeypatch.setenv("CERTCTL_PUBLIC_URL", "https://admin:s3cret@certctl.example.internal/?x")
    with pytest.raises(InvalidRequest) as info:
        load_config(None, {})
    assert "s3cret" not in info.value.detail
    assert info.value.detail == (
        "CERTCTL_PUBLIC_URL='https://…@certctl.example.internal/?x': a URL certificates carry "
        "has no user:password@ (every client that sees the certificate would read it)"
    )


@pytest.mark.parametrize(("doc", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_at_load_naming_the_key(tmp_path: Path, doc: dict[str, Any], message: str) -> None:
    file = tmp_path / "certctl.yaml"
    file.write_text(yaml.safe_dump(doc))
    with pytest.raises(InvalidRequest) as info:
        load_config(file, {})
    # Before, "config KEY: …" named no file.
    assert info.value.detail.startswith(message.format(file=file)), info.value.detail
    assert "hunter2" not in info.value.detail


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:////var/lib/certctl/x.db",
        "postgresql://u@db/x",
        "postgresql+psycopg://u@db/x",
        # An '@' in the user name (Azure's user@server), or encoded in the password.
        "postgresql+psycopg://u@server:pw/x@db/x",
        "postgresql+psycopg://u:p%40ss%2Fx@db/x?application_name=a%40b",
        # Without a password, an '@' further on quotes nothing secret.
        "postgresql+psycopg://u@db/x?application_name=a@b",
    ],
)
def test_supported_database_urls_load(tmp_path: Path, url: str) -> None:
    assert load_config(None, {"database-url": url}).database_url == url


def test_an_empty_section_takes_environment_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "certctl.yaml"
    file.write_text("tls:\nmetrics:\n")  # sections with nothing under them: None in YAML
    monkeypatch.setenv("CERTCTL_TLS_MODE", "disabled")
    monkeypatch.setenv("CERTCTL_METRICS_LISTEN", "127.0.0.1:9443")
    config = load_config(file, {})
    assert (config.tls.mode, config.metrics.listen) == ("disabled", "127.0.0.1:9443")
    file.write_text("tls: plain\n")
    with pytest.raises(InvalidRequest) as refused:
        load_config(file, {})
    assert refused.value.detail == f"{file}: tls: expected a mapping"


NOT_STARTED = {
    "bad reload interval": (
        {"tls": {"reload-interval": "soon"}},
        "{file}: tls.reload-interval: soon: not a duration",
    ),
    "custom mode, no files": (
        {"tls": {"mode": "custom", "cert-dir": "/nonexistent"}},
        "tls.cert-dir /nonexistent: cannot read tls.crt (No such file or directory)",
    ),
    "client CA not PEM": (
        {"tls": {"client-auth": "optional", "client-ca": "{tmp}/junk.pem"}},
        "tls.client-ca {tmp}/junk.pem: no PEM certificate in it",
    ),
    # The next three used to be found after the first start had made the CA and admin key.
    "webhook without a secret": (
        {"notifications": {"webhook": {"url": "https://hooks.example/certctl"}}},
        "notifications.webhook needs a non-empty secret-file",
    ),
    "webhook secret unreadable": (
        {
            "notifications": {
                "webhook": {"url": "https://h.example/x", "secret-file": "{tmp}/missing"}
            }
        },
        "notifications.webhook.secret-file: cannot read {tmp}/missing",
    ),
    "publish-ca-secret with custom certificates": (
        {"tls": {"mode": "disabled", "publish-ca-secret": "certctl-ca"}},
        "tls.publish-ca-secret needs tls.mode=self-signed",
    ),
    "database password with @ and : unencoded": (
        {"database-url": "postgresql+psycopg://certctl:hu@nt:hunter2@db/certctl"},
        "{file}: database-url: postgresql+psycopg://…: the port is not a number",
    ),
    "kubernetes auth with a plain-HTTP API server": (
        {
            "auth": {"kubernetes": {"enabled": True}},
            "kubernetes": {"api-server": "http://127.0.0.1:6443", "token-file": "{tmp}/junk.pem"},
        },
        "kubernetes.api-server=http://127.0.0.1:6443: must be an https:// URL",
    ),
}


@pytest.mark.parametrize(("doc", "message"), NOT_STARTED.values(), ids=NOT_STARTED.keys())
def test_nothing_is_created_for_a_refused_start(
    tmp_path: Path, doc: dict[str, Any], message: str
) -> None:
    (tmp_path / "junk.pem").write_text("junk\n")
    config = tmp_path / "certctl.yaml"
    config.write_text(yaml.safe_dump(doc).replace("{tmp}", str(tmp_path)))
    result = failed(run("certctl", "serve", "--config", config, "--data-dir", tmp_path / "d"))
    expected = message.replace("{tmp}", str(tmp_path)).replace("{file}", str(config))
    assert result.stderr.startswith("certctl: error: " + expected)
    assert len(result.stderr.splitlines()) == 1
    assert "Admin API key" not in result.stdout
    assert not (tmp_path / "d").exists()


def test_plain_http_metrics_beyond_loopback_needs_allow_insecure(tmp_path: Path) -> None:
    # tls.mode=disabled makes the metrics listener plain HTTP even with metrics.secure left on.
    config = tmp_path / "certctl.yaml"
    config.write_text(
        yaml.safe_dump({"tls": {"mode": "disabled"}, "metrics": {"listen": "0.0.0.0:0"}})
    )
    result = failed(run("certctl", "serve", "--config", config, "--data-dir", tmp_path / "d"))
    assert result.stderr.strip() == (
        "certctl: error: tls.mode=disabled: plain HTTP metrics on 0.0.0.0 (beyond loopback) "
        "needs --allow-insecure"
    )
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # Before, all three said only "expected HOST:PORT", the last although it was one.
        (["--listen", "9443"], "--listen 9443: expected HOST:PORT, e.g. 127.0.0.1:9443"),
        (["--listen", "localhost"], "--listen localhost: expected HOST:PORT, e.g. 127.0.0.1:8443"),
        (
            ["--listen", "127.0.0.1:99999"],
            "--listen 127.0.0.1:99999: port 99999 is not in 0-65535",
        ),
    ],
    ids=["bare port", "no port", "port out of range"],
)
def test_a_bad_listen_address_says_what_is_wrong(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    result = failed(run("certctl", "serve", *flags, "--data-dir", tmp_path / "d"))
    assert result.returncode == 2  # a bad flag value: a usage error
    assert result.stderr == f"certctl: error: {message} (see 'certctl serve --help')\n"
    assert result.stdout == ""
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("value", "shown"),
    [("four", "four"), ("0", "0"), ("65", "65"), ("1.5", "1.5"), (" ", "' '"), ("2 x", "'2 x'")],
)
def test_a_bad_certctl_workers_names_the_variable_and_its_value(
    tmp_path: Path, value: str, shown: str
) -> None:
    # Before: "config workers: Input should be a valid integer, unable to parse string as an
    # integer", naming neither the variable nor the value, with no config file in sight.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    result = failed(
        run("certctl", "serve", "--data-dir", tmp_path / "d", env=env | {"CERTCTL_WORKERS": value})
    )
    assert result.returncode == 2  # a bad variable, as a bad flag: a usage error
    assert result.stderr == (
        f"certctl: error: CERTCTL_WORKERS={shown}: expected a whole number of server processes "
        "from 1 to 64 (see 'certctl serve --help')\n"
    )
    assert result.stdout == ""
    assert not (tmp_path / "d").exists()


def test_workers_from_the_file_or_a_flag_is_still_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CERTCTL_WORKERS", raising=False)
    file = tmp_path / "certctl.yaml"
    file.write_text("workers: lots\n")
    rule = "expected a whole number of server processes from 1 to 64"
    with pytest.raises(InvalidRequest) as refused:
        load_config(file, {})
    assert refused.value.detail == f"{file}: workers: {rule}"
    # A flag wins over the environment: the bad variable is not what was refused, nor used.
    monkeypatch.setenv("CERTCTL_WORKERS", "lots")
    assert load_config(file, {"workers": 3}).workers == 3


def test_other_environment_values_are_named_too_but_never_a_database_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CERTCTL_TLS_MODE", "plain")
    with pytest.raises(InvalidRequest, match=r"^CERTCTL_TLS_MODE=plain: Input should be "):
        load_config(None, {})
    monkeypatch.delenv("CERTCTL_TLS_MODE")
    url = "postgresql+psycopg://certctl:hu@nt:hunter2@db/certctl"  # a password with @ and :
    monkeypatch.setenv("CERTCTL_DATABASE_URL", url)
    with pytest.raises(InvalidRequest) as refused:
        load_config(None, {})
    assert refused.value.detail.startswith("CERTCTL_DATABASE_URL: postgresql+psycopg://…: ")
    assert "hunter2" not in refused.value.detail


WORKERS_RULE = "expected a whole number of server processes from 1 to 64"
PASSWORD_URL = "postgresql+psycopg://certctl:hu@nt:hunter2@db/certctl"  # '@' and ':' unencoded
PORT_RULE = "the port is not a number (in a user name or password, write @ as %40"
# (flags, environment, config file or None, the message after "certctl: error: ")
SOURCES = {
    # Before: "config workers: …" and "listen=foo: …", naming neither the flag nor its source.
    "flag workers": (["--workers", "0"], {}, None, f"--workers 0: {WORKERS_RULE}"),
    "flag listen": (["--listen", "foo"], {}, None, "--listen foo: expected HOST:PORT, e.g. "),
    "flag tls mode": (["--tls-mode", "plain"], {}, None, "--tls-mode plain: Input should be "),
    "flag database url": (
        ["--database-url", PASSWORD_URL],
        {},
        None,
        f"--database-url: postgresql+psycopg://…: {PORT_RULE}",
    ),
    "a flag wins over its variable": (
        ["--workers", "99"],
        {"CERTCTL_WORKERS": "2"},
        None,
        f"--workers 99: {WORKERS_RULE}",
    ),
    # --public-url wins over CERTCTL_PUBLIC_URL and the file's public-url (good ones both).
    "flag public-url over variable and file": (
        ["--public-url", "ftp://pki.example.com"],
        {"CERTCTL_PUBLIC_URL": "https://variable.example.com"},
        "public-url: https://file.example.com\n",
        "--public-url ftp://pki.example.com: expected an absolute http:// or https:// URL",
    ),
    # Before: "listen=foo: …": split_host_port ran after the check that knew the variable.
    "variable listen": ([], {"CERTCTL_LISTEN": "foo"}, None, "CERTCTL_LISTEN=foo: expected "),
    "variable metrics listen": (
        [],
        {"CERTCTL_METRICS_LISTEN": "9443"},
        None,
        "CERTCTL_METRICS_LISTEN=9443: expected HOST:PORT, e.g. 127.0.0.1:9443",
    ),
    "variable over the file": (
        [],
        {"CERTCTL_LISTEN": "127.0.0.1:70000"},
        "listen: 127.0.0.1:8443\n",
        "CERTCTL_LISTEN=127.0.0.1:70000: port 70000 is not in 0-65535",
    ),
    "variable database url": (
        [],
        {"CERTCTL_DATABASE_URL": PASSWORD_URL},
        None,
        f"CERTCTL_DATABASE_URL: postgresql+psycopg://…: {PORT_RULE}",
    ),
    # A check of a whole section: the variable that made it.
    "variable client auth": (
        [],
        {"CERTCTL_TLS_CLIENT_AUTH": "required"},
        None,
        "CERTCTL_TLS_CLIENT_AUTH=required: client-auth required needs tls.client-ca",
    ),
    "file listen": ([], {}, "listen: foo\n", "{file}: listen: expected HOST:PORT, e.g. "),
    "file metrics listen": (
        [],
        {},
        "metrics:\n  listen: ':x'\n",
        "{file}: metrics.listen: expected HOST:PORT, e.g. ",
    ),
    "file workers": ([], {}, "workers: 0\n", f"{{file}}: workers: {WORKERS_RULE}"),
    "file database url": (
        [],
        {},
        f"database-url: {PASSWORD_URL}\n",
        f"{{file}}: database-url: postgresql+psycopg://…: {PORT_RULE}",
    ),
}


@pytest.mark.parametrize(
    ("flags", "variables", "text", "message"), SOURCES.values(), ids=SOURCES.keys()
)
def test_a_refused_setting_names_where_it_came_from(
    tmp_path: Path, flags: list[str], variables: dict[str, str], text: str | None, message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")} | variables
    config = tmp_path / "config.yml"
    if text is not None:
        config.write_text(text)
        flags = [*flags, "--config", str(config)]
    result = failed(run("certctl", "serve", *flags, "--data-dir", tmp_path / "d", env=env))
    # A flag or variable refused is a usage error (2); the config file's value a failure (1),
    # as any input file's content is.
    from_file = message.startswith("{file}")
    assert result.returncode == (1 if from_file else 2)
    assert result.stderr.startswith("certctl: error: " + message.replace("{file}", str(config)))
    assert result.stderr.endswith("\n" if from_file else " (see 'certctl serve --help')\n")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "hunter2" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "hook",
    [
        {"url": "https://hooks.slack.com/services/T0/B0/XyZ?token=abc"},
        {"url": "http://127.0.0.1:8080/certctl"},  # a receiver on the same host
        {"url": "http://127.8.9.10/certctl"},
        {"url": "http://[::1]:8080/certctl"},
        {"url": "http://LocalHost:8080/certctl"},
        {"url": "http://hooks.example.internal/certctl", "allow-http": True},
        {"url": "http://127.0.0.1/x", "proxy": "http://proxy.example:3128", "allow-http": True},
        {"url": "https://hooks.example.internal/x", "proxy": "http://proxy.example:3128"},
    ],
    ids=lambda hook: " ".join(f"{k}={v}" for k, v in hook.items()),
)
def test_webhook_urls_that_load(hook: dict[str, Any]) -> None:
    loaded = ServerConfig.model_validate({"notifications": {"webhook": hook}}).notifications.webhook
    assert loaded is not None
    assert loaded.url == hook["url"]


def test_webhook_settings_reach_the_sender(tmp_path: Path) -> None:
    from certctl.server.service_setup import load_webhook

    secret = tmp_path / "webhook-secret"
    secret.write_text("s3cret\n")
    hook = {
        "url": "https://h.example/x",
        "secret-file": str(secret),
        "timeout": "3s",
        "proxy": "http://u:pw@proxy.example:3128",
    }
    file = tmp_path / "certctl.yaml"
    file.write_text(yaml.safe_dump({"notifications": {"webhook": hook}}))
    webhook = load_webhook(load_config(file, {}))
    assert webhook is not None
    assert (webhook.url, webhook.secret, webhook.timeout_s) == ("https://h.example/x", b"s3cret", 3)
    assert webhook.proxy == "http://u:pw@proxy.example:3128"
    assert webhook.verify() is True  # no ca-file: httpx's own bundle
    assert webhook.previous_secrets == ()

    # The whole file is the key, surrounding whitespace removed: one wrapped over lines (as
    # openssl rand -base64 64 prints it) keeps its newline, as before rotation came in.
    secret.write_text("  wrapped-part-1\nwrapped-part-2 \n\n")
    webhook = load_webhook(load_config(file, {}))
    assert webhook is not None
    assert (webhook.secret, webhook.previous_secrets) == (b"wrapped-part-1\nwrapped-part-2", ())

    # Rotating: the key being retired in previous-secret-file, read by the same rules.
    previous = tmp_path / "webhook-secret.previous"
    previous.write_text("\ns3cret\nold \n")
    secret.write_text("n3w\n")
    hook["previous-secret-file"] = str(previous)
    file.write_text(yaml.safe_dump({"notifications": {"webhook": hook}}))
    webhook = load_webhook(load_config(file, {}))
    assert webhook is not None
    assert (webhook.secret, webhook.previous_secrets) == (b"n3w", (b"s3cret\nold",))
    assert webhook.previous_secret_file == previous
    # No key being retired: the file removed (the setting may stay), or the same key.
    for remove in (lambda: previous.write_text("n3w"), previous.unlink):
        remove()
        webhook = load_webhook(load_config(file, {}))
        assert webhook is not None
        assert (webhook.secret, webhook.previous_secrets) == (b"n3w", ())
    # One that is there but cannot be used is refused, in one line that quotes no key.
    empty = (
        f"notifications.webhook.previous-secret-file {previous} is empty: delete it when no "
        "key is being retired"
    )
    for content, why in (
        (" \n", empty),
        (None, f"notifications.webhook.previous-secret-file: cannot read {previous}"),
    ):
        if content is None:
            previous.unlink()
            previous.mkdir()
        else:
            previous.write_text(content)
        with pytest.raises(InvalidRequest) as refused:
            load_webhook(load_config(file, {}))
        assert refused.value.detail == why
    previous.rmdir()
    del hook["previous-secret-file"]
    file.write_text(yaml.safe_dump({"notifications": {"webhook": hook}}))
    secret.write_text("s3cret\n")

    # Refused before the data dir is made (_check_integrations runs this), in one line, as
    # a bad secret-file is (whose refused start the table above runs end to end).
    (tmp_path / "junk.pem").write_text("junk\n")
    for name, why in (
        ("missing.pem", "No such file or directory"),
        ("junk.pem", "no PEM certificate in it"),
    ):
        hook["ca-file"] = str(tmp_path / name)
        file.write_text(yaml.safe_dump({"notifications": {"webhook": hook}}))
        with pytest.raises(InvalidRequest) as refused:
            load_webhook(load_config(file, {}))
        assert refused.value.detail == f"notifications.webhook.ca-file {tmp_path}/{name}: {why}"


POOL_RULE = (
    "expected a whole number of database connections per server process, at least 3 "
    "(the leader's lock, the group commit and one for requests)"
)


def test_a_database_pool_too_small_to_serve_is_refused_in_one_line(tmp_path: Path) -> None:
    # The leader's lock holds one connection for good and the group commit needs one to
    # answer any issuance: a pool of 2 would leave requests nothing, and issuance hanging.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env["CERTCTL_DATABASE_POOL_SIZE"] = "2"
    result = failed(run("certctl", "serve", "--data-dir", tmp_path / "d", env=env))
    assert result.returncode == 2  # a bad variable: a usage error
    assert result.stderr == (
        f"certctl: error: CERTCTL_DATABASE_POOL_SIZE=2: {POOL_RULE} (see 'certctl serve --help')\n"
    )
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("value", ["0", "-1", "ten", "3.5", "true"])
def test_a_database_pool_size_that_is_no_whole_number_from_3_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.delenv("CERTCTL_DATABASE_POOL_SIZE", raising=False)
    file = tmp_path / "certctl.yaml"
    file.write_text(f"database-pool-size: {value}\n")
    with pytest.raises(InvalidRequest) as refused:
        load_config(file, {})
    assert refused.value.detail == f"{file}: database-pool-size: {POOL_RULE}"


def test_the_database_pool_size_defaults_to_every_holder_and_may_be_smaller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from certctl.server import config
    from certctl.store.db import POOL_CONNECTIONS, POOL_MIN, create_store_engine

    # The configuration does not import the store: its copies of the two are pinned here.
    assert (config._POOL_DEFAULT, config._POOL_MIN) == (POOL_CONNECTIONS, POOL_MIN)
    monkeypatch.delenv("CERTCTL_DATABASE_POOL_SIZE", raising=False)
    assert load_config(None, {}).database_pool_size == POOL_CONNECTIONS
    file = tmp_path / "certctl.yaml"
    file.write_text(f"database-pool-size: {POOL_MIN}\n")
    size = load_config(file, {}).database_pool_size
    assert size == POOL_MIN
    engine = create_store_engine(f"sqlite:///{tmp_path / 'pool.db'}", size)
    pool: Any = engine.pool
    assert pool.size() + pool._max_overflow == POOL_MIN
    assert pool.timeout() == 10  # a request waits 10 s for a connection, not 30, then 503
    engine = create_store_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    pool = engine.pool
    assert (pool.size(), pool.size() + pool._max_overflow) == (10, POOL_CONNECTIONS)


def test_an_issuer_fingerprint_is_resolved_to_its_ca_in_the_client_ca_file(
    tmp_path: Path,
) -> None:
    """As ``openssl x509 -fingerprint -sha256`` prints it; a CA tls.client-ca lacks,
    or no tls.client-ca at all: refused at start, in one line naming the key."""
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.serialization import Encoding

    from certctl.pki import generate_private_key, parse_dn
    from certctl.pki.issue import create_root_ca
    from certctl.server.client_mappings import client_cert_mappings

    now = datetime.now(UTC)
    a, b, other = (
        create_root_ca(
            generate_private_key(), parse_dn("CN=Team CA"), validity=timedelta(days=400), now=now
        ).certificate
        for _ in range(3)
    )
    bundle = tmp_path / "client-ca.pem"
    bundle.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in (a, b)))
    printed = run("openssl", "x509", "-in", bundle, "-noout", "-fingerprint", "-sha256").stdout
    assert printed.startswith("sha256 Fingerprint="), printed  # the first: a

    b_print = b.fingerprint(SHA256()).hex()

    def load(fingerprint: str, client_ca: Path | None = bundle) -> Any:
        doc: dict[str, Any] = {
            "auth": {
                "client-cert-mappings": [
                    {"subject": "CN=x", "roles": ["r-viewer"], "issuer-fingerprint": b_print},
                    {"subject": "CN=x", "roles": ["r-admin"], "issuer-fingerprint": fingerprint},
                ]
            }
        }
        if client_ca is not None:
            doc["tls"] = {"client-auth": "optional", "client-ca": str(client_ca)}
        file = tmp_path / "certctl.yaml"
        file.write_text(yaml.safe_dump(doc))
        return client_cert_mappings(load_config(file, {}))

    to_b, pinned = load(printed.strip())
    assert to_b.issuer == b
    assert pinned.issuer == a
    assert load(b.fingerprint(SHA256()).hex().upper())[1].issuer == b
    key = "auth.client-cert-mappings.1.issuer-fingerprint"
    missing = other.fingerprint(SHA256()).hex()
    with pytest.raises(InvalidRequest) as refused:
        load(missing)
    assert (
        refused.value.detail == f"{key} {missing}: no certificate in tls.client-ca {bundle} has it"
    )
    with pytest.raises(InvalidRequest) as refused:
        load(missing, client_ca=None)
    first = "auth.client-cert-mappings.0.issuer-fingerprint"
    assert refused.value.detail == f"{first} needs tls.client-ca, which holds that CA"


def _root(cn: str) -> Any:
    from certctl.pki import CertificateAuthority, generate_private_key, parse_dn
    from certctl.pki.issue import create_root_ca

    key = generate_private_key()
    root = create_root_ca(key, parse_dn(cn), validity=timedelta(days=400), now=datetime.now(UTC))
    return CertificateAuthority(root.certificate, key)


def test_a_mapping_without_issuer_fingerprint_needs_a_client_ca_of_one_ca(
    tmp_path: Path,
) -> None:
    """Unpinned, a mapping matched the subject only: with two CAs in tls.client-ca, either
    could mint the mapped subject and get its roles. Refused at start, in one line naming
    the mapping and the CAs (their fingerprints, to pin it with); one CA needs no pin."""
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.serialization import Encoding

    from certctl.pki import PROFILES, generate_private_key, parse_dn
    from certctl.pki.issue import create_root_ca
    from certctl.server.client_mappings import client_cert_mappings

    team, other = _root("CN=Team CA"), _root("CN=Other CA")
    # A client certificate trusted as itself (CA:FALSE) can mint nothing: not counted.
    leaf = team.issue(
        generate_private_key().public_key(),
        parse_dn("CN=bot"),
        profile=PROFILES["client"],
        validity=timedelta(days=30),
        now=datetime.now(UTC),
    ).certificate
    a, b = team.certificate, other.certificate
    bundle = tmp_path / "client-ca.pem"

    def load(*cas: Any, pins: tuple[Any, ...] = (None,)) -> Any:
        bundle.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in cas))
        mappings = [{"subject": "CN=x", "roles": ["r-viewer"]}]
        for pin in pins:
            mappings.append({"subject": "CN=*,O=Example", "roles": ["r-admin"]})
            if pin is not None:
                mappings[-1]["issuer-fingerprint"] = pin.fingerprint(SHA256()).hex()
        doc = {
            "tls": {"client-auth": "optional", "client-ca": str(bundle)},
            "auth": {"client-cert-mappings": mappings},
        }
        file = tmp_path / "certctl.yaml"
        file.write_text(yaml.safe_dump(doc))
        return client_cert_mappings(load_config(file, {}))

    assert [m.issuer for m in load(a)] == [None, None]
    assert [m.issuer for m in load(a, a, leaf)] == [None, None]  # the same CA twice: one
    # Renewed with the same key and subject (as certctl renews its CAs): still one issuer.
    renewed = create_root_ca(
        team.private_key, a.subject, validity=timedelta(days=800), now=datetime.now(UTC)
    ).certificate
    assert renewed != a
    assert [m.issuer for m in load(a, renewed)] == [None, None]
    with pytest.raises(InvalidRequest) as refused:
        load(a, b)
    fingerprints = [c.fingerprint(SHA256()).hex() for c in (a, b)]
    assert refused.value.detail == (
        "auth.client-cert-mappings.0 (subject 'CN=x') has no issuer-fingerprint, and "
        f"tls.client-ca {bundle} holds 2 CAs that could each issue that subject "
        f"(CN=Team CA {fingerprints[0]}; CN=Other CA {fingerprints[1]}): pin the mapping "
        "to the CA that issues it (for several, one mapping per CA)"
    )
    # Pinned to every CA in turn (one mapping each), the same subject maps from both.
    with pytest.raises(InvalidRequest, match=r"^auth.client-cert-mappings.0 \(subject 'CN=x'\)"):
        load(a, b, pins=(a, b))
    bundle_doc = yaml.safe_load((tmp_path / "certctl.yaml").read_text())
    bundle_doc["auth"]["client-cert-mappings"][0]["issuer-fingerprint"] = fingerprints[0]
    (tmp_path / "certctl.yaml").write_text(yaml.safe_dump(bundle_doc))
    pinned = client_cert_mappings(load_config(tmp_path / "certctl.yaml", {}))
    assert [m.issuer for m in pinned] == [a, a, b]


def test_a_root_and_the_intermediates_it_signed_are_one_ca_for_an_unpinned_mapping(
    tmp_path: Path,
) -> None:
    """A chain bundle (root + intermediate) in tls.client-ca was refused as "2 CAs" for a
    mapping without issuer-fingerprint. The root alone accepts everything that intermediate
    signs (clients send it in their chain), so the bundle lets no one else mint the mapped
    subject: one CA, as the root alone. A second root is still a second CA."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from certctl.pki import PROFILES, CertificateAuthority, generate_private_key, parse_dn
    from certctl.server.client_mappings import client_cert_mappings, refuse_unpinned_mappings

    now = datetime.now(UTC)
    root, other = _root("CN=Root CA"), _root("CN=Other Root CA")

    def sub(parent: Any, cn: str, profile: str = "intermediate") -> Any:
        key = generate_private_key()
        issued = parent.issue(
            key.public_key(),
            parse_dn(cn),
            profile=PROFILES[profile],
            validity=timedelta(days=200),
            now=now,
        )
        return CertificateAuthority(issued.certificate, key)

    issuing = sub(root, "CN=Issuing CA", "ca")  # a path below it: it signs another CA
    team = sub(issuing, "CN=Team CA")
    bundle = tmp_path / "client-ca.pem"
    doc = {
        "tls": {"client-auth": "optional", "client-ca": str(bundle)},
        "auth": {"client-cert-mappings": [{"subject": "CN=x", "roles": ["r-viewer"]}]},
    }
    (tmp_path / "certctl.yaml").write_text(yaml.safe_dump(doc))
    config = load_config(tmp_path / "certctl.yaml", {})

    def load(*cas: Any) -> Any:
        bundle.write_bytes(b"".join(c.certificate.public_bytes(Encoding.PEM) for c in cas))
        return client_cert_mappings(config)

    # In any order: the chain under one root is one CA.
    assert [m.issuer for m in load(root, issuing)] == [None]
    assert [m.issuer for m in load(team, issuing, root)] == [None]
    # Another root beside it (or an intermediate of another root) is a second CA.
    with pytest.raises(InvalidRequest, match="holds 3 CAs that could each issue"):
        load(root, issuing, other)
    with pytest.raises(InvalidRequest, match="holds 3 CAs that could each issue"):
        load(root, issuing, sub(other, "CN=Partner CA"))
    # An intermediate of one root cross-signed by another joins two roots: still two.
    cross = other.issue(
        team.certificate.public_key(),
        team.certificate.subject,
        profile=PROFILES["intermediate"],
        validity=timedelta(days=100),
        now=now,
    ).certificate
    with pytest.raises(InvalidRequest, match="could each issue"):
        refuse_unpinned_mappings(
            config, [root.certificate, team.certificate, cross, other.certificate]
        )
    # Two roots that cross-signed each other vouch for each other: one. A third beside them
    # is a second.
    a_by_other, other_by_a = (
        signer.issue(
            ca.certificate.public_key(),
            ca.certificate.subject,
            profile=PROFILES["ca"],
            validity=timedelta(days=100),
            now=now,
        ).certificate
        for signer, ca in ((other, root), (root, other))
    )
    pair = [root.certificate, other.certificate, a_by_other, other_by_a]
    refuse_unpinned_mappings(config, pair)
    with pytest.raises(InvalidRequest, match="holds 3 CAs that could each issue"):
        refuse_unpinned_mappings(config, [*pair, _root("CN=Third Root CA").certificate])


def test_an_expired_ca_left_in_the_client_ca_file_is_no_second_ca(tmp_path: Path) -> None:
    """A CA past its notAfter verifies no client certificate (OpenSSL checks every
    certificate of the chain, the trust anchor too) and never will again; an old root left
    in the file after a rotation made a mapping without issuer-fingerprint refuse the start,
    the refusal naming it among the CAs "that could each issue that subject"."""
    from certctl.pki import CertificateAuthority, generate_private_key, parse_dn
    from certctl.pki.issue import create_root_ca
    from certctl.server.client_mappings import refuse_unpinned_mappings

    key = generate_private_key()
    expired = create_root_ca(
        key,
        parse_dn("CN=Old Root CA"),
        validity=timedelta(days=30),
        now=datetime.now(UTC) - timedelta(days=60),
    )
    old = CertificateAuthority(expired.certificate, key).certificate
    current, partner = _root("CN=Current Root CA").certificate, _root("CN=Partner CA").certificate
    doc = {"auth": {"client-cert-mappings": [{"subject": "CN=x", "roles": ["r-viewer"]}]}}
    (tmp_path / "certctl.yaml").write_text(yaml.safe_dump(doc))
    config = load_config(tmp_path / "certctl.yaml", {})
    refuse_unpinned_mappings(config, [old, current])
    with pytest.raises(InvalidRequest) as refused:
        refuse_unpinned_mappings(config, [old, current, partner])
    assert "holds 2 CAs that could each issue that subject (CN=Current Root CA " in (
        refused.value.detail
    )
    assert "Old Root CA" not in refused.value.detail


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1:0", "127.0.0.2:0", "127.8.9.10:0", "[::1]:0", "[0:0:0:0:0:0:0:1]:0", "LOCALHOST:0"],
)
def test_plain_http_on_any_loopback_address_needs_no_allow_insecure(listen: str) -> None:
    # Loopback is 127.0.0.0/8, ::1 and localhost, as for notifications.webhook.url: before,
    # only the exact spellings 127.0.0.1, ::1 and localhost were, so 127.0.0.2 was refused.
    from certctl.server.run import _refuse_plain_http_beyond_loopback

    for doc in (
        {"listen": listen, "tls": {"mode": "disabled"}},
        {"metrics": {"listen": listen, "secure": False}},
    ):
        _refuse_plain_http_beyond_loopback(ServerConfig.model_validate(doc))


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "10.0.0.1:0", "localhost.example:0"])
def test_plain_http_beyond_loopback_is_refused_in_process(listen: str) -> None:
    from certctl.server.run import _refuse_plain_http_beyond_loopback

    host = listen.rpartition(":")[0].strip("[]")
    with pytest.raises(InvalidRequest, match=f"^tls.mode=disabled on {host}: plain HTTP"):
        _refuse_plain_http_beyond_loopback(
            ServerConfig.model_validate({"listen": listen, "tls": {"mode": "disabled"}})
        )
    with pytest.raises(
        InvalidRequest, match=f"^metrics.secure=false: plain HTTP metrics on {host} "
    ):
        _refuse_plain_http_beyond_loopback(
            ServerConfig.model_validate({"metrics": {"listen": listen, "secure": False}})
        )


# Every on/off key, with what else its section needs to load.
_SWITCHES = {
    "allow-insecure": "allow-insecure: {}\n",
    "metrics.secure": "metrics:\n  secure: {}\n",
    "auth.kubernetes.enabled": "auth:\n  kubernetes:\n    enabled: {}\n",
    "notifications.webhook.allow-http": (
        "notifications:\n  webhook:\n    url: https://h.example/x\n    allow-http: {}\n"
    ),
    "acme.enabled": "acme:\n  enabled: {}\n",
    "acme.external-account-required": "acme:\n  external-account-required: {}\n",
    "ocsp.enabled": "ocsp:\n  enabled: {}\n",
}


def _switches(model: type[ServerConfig] | Any, prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        for t in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if t is bool:
                yield key
            elif isinstance(t, type) and issubclass(t, BaseModel):
                yield from _switches(t, key + ".")


def test_every_switch_is_checked_below() -> None:
    assert sorted(_switches(ServerConfig)) == sorted(_SWITCHES)


@pytest.mark.parametrize("key", _SWITCHES)
def test_a_switch_takes_a_yaml_boolean_only(tmp_path: Path, key: str) -> None:
    # Before: pydantic's lax mode read a quoted "yes", "t", "off", the letters y and n and the
    # numbers 1, 0 and 1.0 as booleans, which docs/configuration.md never promised; a typo
    # such as `secure: y` turned a switch on. Now: YAML's true and false (YAML 1.1 also
    # spells them yes/no/on/off unquoted), else one line naming the key.
    file = tmp_path / "certctl.yaml"
    path = key.split(".")

    def loaded(value: str) -> Any:
        file.write_text(_SWITCHES[key].format(value))
        node: Any = load_config(file, {})
        for part in path:
            node = getattr(node, part.replace("-", "_"))
        return node

    for value, expected in (("true", True), ("false", False), ("yes", True), ("off", False)):
        assert loaded(value) is expected, value
    for value, words in (
        ('"yes"', "'yes' is a string; give true or false (unquoted in YAML)"),
        ("y", "'y' is a string; give true or false (unquoted in YAML)"),
        ("1", "1 is not a boolean; give true or false"),
        ("0.0", "0.0 is not a boolean; give true or false"),
        # As YAML spells it, not Python's [True] / None.
        ("[yes]", "[true] is not a boolean; give true or false"),
        ("null", "null is not a boolean; give true or false"),
    ):
        with pytest.raises(InvalidRequest) as info:
            loaded(value)
        assert info.value.detail == f"{file}: {key}: {words}"


def test_an_encrypted_tls_key_in_the_cert_dir_is_refused_with_what_serve_can_read(
    tmp_path: Path,
) -> None:
    # `openssl req -x509` without -nodes writes an encrypted key. serve takes no password,
    # yet the refusal passed on the loader's advice: "give its password (--password-file)",
    # an option serve does not have.
    cert_dir = tmp_path / "tls"
    cert_dir.mkdir()
    made = run("openssl", "req", "-x509", *EC_P256, "-keyout", cert_dir / "tls.key",
               "-out", cert_dir / "tls.crt", "-subj", "/CN=localhost", "-days", "30",
               "-passout", "pass:hunter2pw")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert (cert_dir / "tls.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY")
    serve = ["certctl", "serve", "--tls-mode", "custom", "--tls-cert-dir", cert_dir]
    result = failed(run(*serve, "--data-dir", tmp_path / "d"))
    assert result.stderr == (
        f"certctl: error: tls.cert-dir {cert_dir}: tls.key is encrypted; certctl serve reads "
        "only an unencrypted key (openssl pkey -in tls.key -out tls.key.clear)\n"
    )
    assert "--password-file" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_ocsp_validity_is_a_duration_from_5m_to_7d(monkeypatch: pytest.MonkeyPatch) -> None:
    """ocsp.validity: under 5 minutes or over 7 days is refused, naming the bounds."""
    assert ServerConfig.model_validate({"ocsp": {"validity": "5m"}}).ocsp.validity == "5m"
    assert ServerConfig.model_validate({"ocsp": {"validity": "7D"}}).ocsp.validity == "7D"
    for bad in ("4m", "8D", "1x"):
        with pytest.raises(ValidationError, match=r"ocsp\.validity"):
            ServerConfig.model_validate({"ocsp": {"validity": bad}})
    monkeypatch.setenv("CERTCTL_OCSP_ENABLED", "true")
    monkeypatch.setenv("CERTCTL_OCSP_VALIDITY", "10m")
    config = load_config(None, {})
    assert config.ocsp.enabled is True
    assert config.ocsp.validity == "10m"
    monkeypatch.setenv("CERTCTL_OCSP_ENABLED", "yes")
    with pytest.raises(InvalidRequest, match="CERTCTL_OCSP_ENABLED=yes"):
        load_config(None, {})
