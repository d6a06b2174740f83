"""``certctl verify --at TIME`` agrees with ``openssl verify -attime EPOCH``.

The certificates come from certctl's pki API with a past and a future validity window, so
that verifying now fails and verifying inside the window passes, for both tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certctl.pki import PROFILES, CertificateAuthority, SubjectAltNames, create_root_ca
from certctl.pki.formats import certs_to_pem
from certctl.pki.keys import generate_private_key
from certctl.pki.names import common_name_dn
from tests._tools import openssl_verify
from tests.integration.conftest import certctl

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Files:
    ca: Path
    expired: Path  # valid for 30 days, a year ago
    future: Path  # valid for 30 days, from a year on


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    tmp = tmp_path_factory.mktemp("verify-at")
    key = generate_private_key()
    root = create_root_ca(
        key, common_name_dn("At Test Root"), validity=timedelta(days=5 * 365), now=NOW - 730 * DAY
    )
    authority = CertificateAuthority(root.certificate, key)
    written = []
    for name, issued_at in (("expired", NOW - 365 * DAY), ("future", NOW + 365 * DAY)):
        leaf = authority.issue(
            generate_private_key().public_key(),
            common_name_dn(f"{name}.example"),
            profile=PROFILES["server"],
            validity=30 * DAY,
            now=issued_at,
            sans=SubjectAltNames.parse(dns=[f"{name}.example"]),
        )
        path = tmp / f"{name}.crt"
        path.write_bytes(certs_to_pem([leaf.certificate]))
        written.append(path)
    ca = tmp / "ca.crt"
    ca.write_bytes(certs_to_pem([root.certificate]))
    return Files(ca, *written)


def openssl_verdict(files: Files, cert: Path, at: datetime | None) -> str:
    """openssl's verdict: "OK" or its error string ("certificate has expired", …)."""
    attime = ["-attime", str(int(at.timestamp()))] if at is not None else []
    return openssl_verify(*attime, "-CAfile", files.ca, cert)


@pytest.mark.parametrize(
    ("which", "days", "openssl_says", "certctl_says"),
    [
        ("expired", None, "certificate has expired", "certificate expired on "),
        ("expired", -350, "OK", ""),
        ("expired", -400, "certificate is not yet valid", "certificate is not valid before "),
        ("future", None, "certificate is not yet valid", "certificate is not valid before "),
        ("future", 380, "OK", ""),
        ("future", 400, "certificate has expired", "certificate expired on "),
    ],
)
def test_validity_is_judged_at_the_time_given_as_openssl_attime(
    files: Files, which: str, days: int | None, openssl_says: str, certctl_says: str
) -> None:
    """``days``: --at so many days from now (None: no --at, judged now)."""
    cert = files.expired if which == "expired" else files.future
    at = NOW + days * DAY if days is not None else None
    assert openssl_verdict(files, cert, at) == openssl_says
    args: list[str | Path] = ["verify", "--ca", files.ca, cert]
    if at is not None:
        args += ["--at", f"{at:%Y-%m-%dT%H:%M:%SZ}"]
    result = certctl(*args)
    assert "Traceback" not in result.err
    if openssl_says == "OK":
        assert result.code == 0, result.err
        assert f"OK (server, at {at:%Y-%m-%dT%H:%M:%SZ}): CN={which}.example" in result.out
    else:
        assert result.code == 1, result.out
        (line,) = result.err.splitlines()
        assert line.startswith(f"certctl: error: verification failed: {certctl_says}"), line
        # Judged at --at: the line says when, as the OK line does.
        checked = f" (checked at {at:%Y-%m-%dT%H:%M:%SZ})" if at is not None else ""
        assert line.endswith(f"Z{checked}"), line


# The values depend on NOW: built in the test, so that xdist workers, which import this
# module each at its own second, collect the same test ids.
@pytest.mark.parametrize("form", ["date", "naive", "offset"])
def test_at_takes_a_date_or_a_time_naive_meaning_utc(files: Files, form: str) -> None:
    day = NOW - 350 * DAY
    # A date alone is its midnight, a time without a zone is UTC, an offset is honoured.
    value, when = {
        "date": (f"{day:%Y-%m-%d}", f"{day:%Y-%m-%d}T00:00:00Z"),
        "naive": (f"{day:%Y-%m-%dT%H:%M}", f"{day:%Y-%m-%dT%H:%M}:00Z"),
        "offset": (
            f"{day:%Y-%m-%dT%H:%M:%S}+02:00",
            f"{day - timedelta(hours=2):%Y-%m-%dT%H:%M:%S}Z",
        ),
    }[form]
    result = certctl("verify", "--ca", files.ca, files.expired, "--at", value)
    assert result.code == 0, result.err
    assert f"OK (server, at {when}): " in result.out


@pytest.mark.parametrize(
    "value",
    ["", "tomorrow", "2027-13-01", "2027-01-01T25:00", "9999-12-31T23:00:00-05:00", "1700000000"],
)
def test_a_bad_at_value_is_one_line_exit_2(files: Files, value: str) -> None:
    result = certctl("verify", "--ca", files.ca, files.expired, "--at", value)
    assert result.code == 2, result.out
    assert result.out == ""
    assert "Traceback" not in result.err
    (line,) = result.err.splitlines()
    assert line.startswith("certctl: error: Invalid value for --at: "), line
    assert "ISO 8601" in line, line
