"""What certctl says about a foreign error: the TLS verify failure found along its causes."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable

import pytest

from certctl.kubeapi import transport_error
from certctl.services.notify import _transport_error


def _verify_failure() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "unable to get local issuer certificate"
    return exc


@pytest.mark.parametrize("describe", [transport_error, _transport_error], ids=["kube", "webhook"])
def test_the_verify_failure_is_found_along_the_causes_each_seen_once(
    describe: Callable[[BaseException], str],
) -> None:
    outer = ConnectionError("wrapped")
    outer.__cause__ = _verify_failure()
    why = "unable to get local issuer certificate"
    assert describe(outer) == f"TLS certificate verify failed: {why}"
    assert describe(ValueError()) == "ValueError"
    # Before: a chain that comes back on itself (set by hand, or a library re-raising the
    # exception it caught) was walked for ever, hanging the webhook sender or the caller.
    first, second = OSError("a"), OSError("b")
    first.__cause__, second.__cause__ = second, first
    answers: list[str] = []
    walker = threading.Thread(target=lambda: answers.append(describe(first)), daemon=True)
    walker.start()
    walker.join(2)
    expected = "OSError: a" if describe is transport_error else "OSError"  # no text: see notify
    assert answers == [expected]
