"""The README's Prometheus alert rules, checked by promtool against a real server's gauges.

The README used to advise alerting 30 days before any issuer's notAfter and 7 days before
the server certificate's. The internal CA, the managed services' CAs and the self-signed
server certificate renew themselves 24 h ahead by default, so on a healthy server those
alerts fired for weeks before every renewal.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests._tools import require, run
from tests.e2e.conftest import CertctlServer, StartServer, certctl_cli

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
METRICS = "/api/v1/metrics/prometheus"
GAUGES_TIMEOUT_S = 40.0  # a reconcile pass, then the 10 s gauge refresh, with room to spare


def readme_rules() -> str:
    """The rules file the README shows (its one YAML block starting with ``groups:``)."""
    (block,) = re.findall(r"```yaml\n(groups:\n.*?)```", README.read_text(), re.S)
    return block


def promtool_test(tmp_path: Path, series: dict[str, float], firing: list[dict[str, str]]) -> None:
    """``promtool test rules``: at time 0, with ``series`` constant, exactly ``firing`` fire.

    ``series`` maps a series selector to its value; alerts are given by their labels.
    """
    (tmp_path / "rules.yml").write_text(readme_rules())
    names = re.findall(r"- alert: (\w+)", readme_rules())
    assert {a["alertname"] for a in firing} <= set(names)
    test: dict[str, Any] = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": name, "values": f"{value!r}+0x2"} for name, value in series.items()
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "0m",
                        "alertname": name,
                        "exp_alerts": [
                            {"exp_labels": labels}
                            for labels in firing
                            if labels["alertname"] == name
                        ],
                    }
                    for name in names
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = run(require("promtool"), "test", "rules", "test.yml", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_readme_rules(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(readme_rules())
    result = run(require("promtool"), "check", "rules", tmp_path / "rules.yml", timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def _scrape(server: CertctlServer) -> dict[str, float]:
    """The scrape's gauges and counters as ``name{labels}`` → value."""
    with server.client(server.admin_key) as http:
        text = http.get(METRICS).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("certctl_") or family.type not in ("gauge", "counter"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def test_readme_alerts_stay_quiet_while_the_server_renews_its_own(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A fresh server whose internal CA has 20 days and server certificate 5 days: both renew
    themselves 24 h before their end, so nothing is wrong and no alert fires; an intermediate
    created through the API with 10 days left, which nothing renews, does fire."""
    server = start_server(config={"ca-cert-validity": "20D", "cert-validity": "5D"})
    with server.client(server.admin_key) as http:
        made = http.post(
            "/api/v1/issuers", json={"id": "ops-ca", "parent": "default", "validity": "10D"}
        )
        assert made.status_code == 201, made.text
        web = {
            "apiVersion": "certctl.io/v1",
            "kind": "TLSService",
            "metadata": {"name": "web"},
            "spec": {
                "http": {"tls": {"selfSignedCertificate": {"subjectAltNames": [{"dns": "web"}]}}},
                "targets": [{"directory": str(tmp_path / "web-tls")}],
            },
        }
        applied = http.put("/api/v1/services/web", json=web)
        assert applied.status_code in (200, 201), applied.text
    wanted = (
        'certctl_issuer_not_after_timestamp_seconds{issuer="ops-ca"}',
        'certctl_issuer_not_after_timestamp_seconds{issuer="svc.web"}',
        'certctl_service_ready{service="web"}',
    )
    deadline = time.monotonic() + GAUGES_TIMEOUT_S
    scraped = _scrape(server)
    while not all(name in scraped for name in wanted) or not scraped[wanted[2]]:
        assert time.monotonic() < deadline, f"gauges never showed {wanted}: {scraped}"
        time.sleep(0.5)
        scraped = _scrape(server)
    now = time.time()
    # promtool evaluates at time 0: a timestamp gauge becomes "seconds from now".
    series = {
        name: value - now if "_timestamp_seconds" in name else value
        for name, value in scraped.items()
    }
    assert 19 * 86400 < series['certctl_issuer_not_after_timestamp_seconds{issuer="default"}']
    assert series['certctl_tls_certificate_not_after_timestamp_seconds{listener="main"}'] < (
        5 * 86400
    )
    promtool_test(tmp_path, series, [{"alertname": "CertctlIssuerExpiring", "issuer": "ops-ca"}])


def test_readme_alerts_leave_out_a_revoked_issuer(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Revoking an intermediate is how one is retired (issuers are never deleted): it signs
    nothing more, so its notAfter coming near is no news; CertctlIssuerExpiring fired for it
    all the same, and once it expired fired for good. Its sibling, live, still fires."""
    server = start_server()
    with server.client(server.admin_key) as http:
        for name in ("retired-ca", "live-ca"):
            made = http.post(
                "/api/v1/issuers", json={"id": name, "parent": "default", "validity": "10D"}
            )
            assert made.status_code == 201, made.text
        revoked = http.post("/api/v1/issuers/retired-ca/revoke", json={"reason": "superseded"})
        assert revoked.status_code == 200, revoked.text
    # The gauges are refreshed every 10 s: wait for one pass after the revocation.
    wanted = 'certctl_issuer_revoked{issuer="retired-ca"}'
    deadline = time.monotonic() + GAUGES_TIMEOUT_S
    scraped = _scrape(server)
    while scraped.get(wanted) != 1:
        assert time.monotonic() < deadline, f"gauges never showed {wanted}: {scraped}"
        time.sleep(0.5)
        scraped = _scrape(server)
    now = time.time()
    series = {
        name: value - now if "_timestamp_seconds" in name else value
        for name, value in scraped.items()
        if name.startswith("certctl_issuer_")
    }
    promtool_test(tmp_path, series, [{"alertname": "CertctlIssuerExpiring", "issuer": "live-ca"}])


def test_readme_alerts_give_a_week_for_a_custom_server_certificate(
    start_server: StartServer, tmp_path: Path
) -> None:
    """tls.mode custom: the served certificate is the operator's to renew (cert-manager, a
    public CA), so 6 days left must fire. The rules gave it 12 h, as for the self-signed
    one certctl renews itself, unless the operator edited them after reading the prose."""
    ca, cert_dir = tmp_path / "ca", tmp_path / "certdir"
    certctl_cli("ca", "create", "--out", ca, "--cn", "Custom Server CA")
    certctl_cli("cert", "issue", "--ca", ca, "--cn", "localhost", "--dns", "localhost",
                "--ip", "127.0.0.1", "--validity", "6D", "--out", cert_dir)  # fmt: skip
    server = start_server(
        args=["--tls-mode", "custom", "--tls-cert-dir", cert_dir], ca=ca / "ca.crt"
    )
    now = time.time()
    series = {
        name: value - now if "_timestamp_seconds" in name else value
        for name, value in _scrape(server).items()
        if name.startswith("certctl_tls_certificate_")
    }
    assert (
        5 * 86400
        < series['certctl_tls_certificate_not_after_timestamp_seconds{listener="main"}']
        <= 6 * 86400
    )
    promtool_test(
        tmp_path,
        series,
        [{"alertname": "CertctlServerCertificateExpiring", "listener": "main"}],
    )


def test_readme_alerts_fire_once_a_renewal_is_overdue(tmp_path: Path) -> None:
    """6 h left on what renews itself 24 h ahead: the renewal failed, and the rules say so."""
    hour = 3600.0
    series = {
        'certctl_issuer_not_after_timestamp_seconds{issuer="default"}': 6 * hour,
        'certctl_issuer_not_after_timestamp_seconds{issuer="svc.web"}': 6 * hour,
        'certctl_issuer_not_after_timestamp_seconds{issuer="svc.api"}': 20 * hour,
        'certctl_tls_certificate_not_after_timestamp_seconds{listener="main"}': 6 * hour,
        'certctl_tls_certificate_auto_renewed{listener="main"}': 1,
        'certctl_certificate_next_expiry_timestamp_seconds{issuer="default"}': 3 * 86400,
        'certctl_service_ready{service="web"}': 0,
    }
    promtool_test(
        tmp_path,
        series,
        [
            {"alertname": "CertctlCARenewalOverdue", "issuer": "default"},
            {"alertname": "CertctlCARenewalOverdue", "issuer": "svc.web"},
            {"alertname": "CertctlServerCertificateRenewalOverdue", "listener": "main"},
            {"alertname": "CertctlCertificateExpiring", "issuer": "default"},
            # CertctlServiceNotReady waits 10 minutes (`for:`): pending at time 0; the
            # test of its first reconcile below sees it fire.
        ],
    )


def promtool_timeline(
    tmp_path: Path, series: dict[str, str], checks: list[tuple[str, str, list[dict[str, str]]]]
) -> None:
    """``promtool test rules`` on ``series`` (selector → promtool values notation, one a
    minute): at each (eval time, alert name) exactly the alerts with those labels fire."""
    (tmp_path / "rules.yml").write_text(readme_rules())
    names = set(re.findall(r"- alert: (\w+)", readme_rules()))
    assert {name for _, name, _ in checks} <= names, f"the README's rules have only {names}"
    test: dict[str, Any] = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": name,
                        "exp_alerts": [{"exp_labels": labels} for labels in firing],
                    }
                    for at, name, firing in checks
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = run(require("promtool"), "test", "rules", "test.yml", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_alerts_say_when_prometheus_cannot_scrape_certctl(tmp_path: Path) -> None:
    """A target that is down (server stopped, key revoked or unreadable: the README's own
    'permission denied') leaves no certctl_* series, so every other rule goes quiet, an
    overdue CA renewal included. up == 0 must fire after a few minutes, not at one failed
    scrape; a job with no target at all (its scrape job dropped) must fire too."""
    target = {"job": "certctl", "instance": "certctl.example.internal:8443"}
    labels = ",".join(f'{k}="{v}"' for k, v in target.items())
    # Up for 2 minutes, then down for good; its CA gauge stops with the last good scrape.
    series = {
        f"up{{{labels}}}": "1 1 0x20",
        f'certctl_issuer_not_after_timestamp_seconds{{issuer="default",{labels}}}': "3600 _x20",
    }
    promtool_timeline(
        tmp_path,
        series,
        [
            ("1m", "CertctlDown", []),
            ("4m", "CertctlDown", []),  # one blip of a scrape is no page
            ("8m", "CertctlDown", [{"alertname": "CertctlDown", **target}]),
            ("8m", "CertctlTargetMissing", []),
        ],
    )
    other = tmp_path / "no-target"
    other.mkdir()
    promtool_timeline(
        other,
        {'up{job="node",instance="n:9100"}': "1x20"},
        [
            ("5m", "CertctlTargetMissing", []),
            (
                "15m",
                "CertctlTargetMissing",
                [{"alertname": "CertctlTargetMissing", "job": "certctl"}],
            ),
        ],
    )


def test_readme_alert_on_a_service_not_ready_waits_out_its_first_reconcile(
    tmp_path: Path,
) -> None:
    """A service just applied reads Ready 0 until worker 0 reconciles it (the test above
    waits for it): an alert without `for:` fired at every apply that a scrape caught. One
    still not Ready 10 minutes on is a failure."""
    promtool_timeline(
        tmp_path,
        {
            'certctl_service_ready{service="new"}': "0 0 1x20",
            'certctl_service_ready{service="broken"}': "0x20",
        },
        [
            ("1m", "CertctlServiceNotReady", []),
            ("5m", "CertctlServiceNotReady", []),
            (
                "15m",
                "CertctlServiceNotReady",
                [{"alertname": "CertctlServiceNotReady", "service": "broken"}],
            ),
        ],
    )


def test_readme_alerts_fire_once_for_what_every_replica_reports(tmp_path: Path) -> None:
    """The store's gauges are the same in every replica (each its own target, instance and,
    under the chart's ServiceMonitor, pod): the README says to aggregate them with max, yet
    its rules fired one alert per replica for one issuer or service. The server certificate
    each replica serves itself stays per instance."""
    replicas = [
        {"job": "certctl", "instance": f"10.0.0.{n}:8443", "pod": f"certctl-{n}"} for n in (1, 2)
    ]

    def each(selector: str, value: str) -> dict[str, str]:
        name, _, labels = selector.partition("{")
        out = {}
        for replica in replicas:
            extra = ",".join(f'{k}="{v}"' for k, v in replica.items())
            out[f"{name}{{{labels.rstrip('}')}{',' if labels.rstrip('}') else ''}{extra}}}"] = value
        return out

    day = 86400
    series = {
        **each('certctl_issuer_not_after_timestamp_seconds{issuer="ops"}', f"{10 * day}x20"),
        **each('certctl_issuer_revoked{issuer="ops"}', "0x20"),
        **each('certctl_issuer_not_after_timestamp_seconds{issuer="default"}', f"{6 * 3600}x20"),
        **each('certctl_certificate_next_expiry_timestamp_seconds{issuer="ops"}', f"{day}x20"),
        **each('certctl_service_ready{service="web"}', "0x20"),
        **each('certctl_tls_certificate_not_after_timestamp_seconds{listener="main"}', f"{day}x20"),
        **each('certctl_tls_certificate_auto_renewed{listener="main"}', "0x20"),
    }
    job = {"job": "certctl"}
    promtool_timeline(
        tmp_path,
        series,
        [
            (
                "15m",
                "CertctlIssuerExpiring",
                [{"alertname": "CertctlIssuerExpiring", "issuer": "ops", **job}],
            ),
            (
                "15m",
                "CertctlCARenewalOverdue",
                [{"alertname": "CertctlCARenewalOverdue", "issuer": "default", **job}],
            ),
            (
                "15m",
                "CertctlCertificateExpiring",
                [{"alertname": "CertctlCertificateExpiring", "issuer": "ops", **job}],
            ),
            (
                "15m",
                "CertctlServiceNotReady",
                [{"alertname": "CertctlServiceNotReady", "service": "web", **job}],
            ),
            (
                "15m",
                "CertctlServerCertificateExpiring",
                [
                    {"alertname": "CertctlServerCertificateExpiring", "listener": "main", **r}
                    for r in replicas
                ],
            ),
        ],
    )
