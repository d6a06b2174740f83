"""``cert issue`` warns when the CN is a host name that the SANs given leave out.

Without SANs the CN becomes the DNS name; with SANs it does not, and TLS clients ignore the
CN, so ``--cn localhost --ip 127.0.0.1`` makes a certificate that ``curl https://localhost``
refuses. The warning says so and names the flag to add.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._tools import ok, run

CASES = {
    "host CN left out": (
        ["--cn", "localhost", "--ip", "127.0.0.1"],
        "certctl: warning: common name localhost is not among the SANs, and TLS clients ignore "
        "the common name: this certificate does not serve localhost (add --dns localhost)",
    ),
    "address CN left out": (
        ["--cn", "10.0.0.1", "--dns", "a.example"],
        "certctl: warning: common name 10.0.0.1 is not among the SANs, and TLS clients ignore "
        "the common name: this certificate does not serve 10.0.0.1 (add --ip 10.0.0.1)",
    ),
    # Twins: nothing to say.
    "CN among the SANs": (["--cn", "Web.Example", "--dns", "web.example"], None),
    "address CN among the SANs": (["--cn", "10.0.0.1", "--ip", "10.0.0.1"], None),
    "no SANs: the CN is the DNS name": (["--cn", "web.example"], None),
    "a label, not a host": (["--cn", "node-1", "--dns", "node-1.example.com"], None),
    "not a host name": (["--cn", "Web frontend v2.1", "--dns", "web.example"], None),
}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cn-warning") / "ca"
    ok(run("certctl", "ca", "create", "--out", path))
    return path


@pytest.mark.parametrize(("args", "warning"), CASES.values(), ids=CASES.keys())
def test_a_host_cn_the_sans_leave_out_is_warned_about(
    ca: Path, tmp_path: Path, args: list[str], warning: str | None
) -> None:
    result = ok(
        run("certctl", "cert", "issue", "--ca", ca, "--pem", "--out", tmp_path / "o", *args)
    )
    warnings = [line for line in result.stderr.splitlines() if line.startswith("certctl: warn")]
    assert warnings == ([warning] if warning else []), result.stderr
    assert (tmp_path / "o" / "tls.crt").exists()  # issued all the same
