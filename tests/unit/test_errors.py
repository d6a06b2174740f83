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


def test_a_reworded_error_keeps_its_class_and_attributes() -> None:
    # The CLI rewords errors (names the file, where a password came from); rebuilt with
    # type(exc)(detail), they lost what a handler reads: PasswordRequired.pkcs12 was False
    # again, and WrongPurpose (which takes `suits` too) could not be rebuilt at all.
    from certctl.errors import (
        CertctlError,
        PasswordRequired,
        StorageUnavailable,
        TooManyRequests,
    )
    from certctl.pki.verdicts import WrongPurpose

    required = PasswordRequired("encrypted: give --password-file", pkcs12=True)
    required.add_note("kept")
    errors: list[tuple[CertctlError, dict[str, object]]] = [
        (required, {"pkcs12": True, "__notes__": ["kept"]}),
        (WrongPurpose("not for TLS clients", "server"), {"suits": "server"}),
        (TooManyRequests("slow down", 7), {"retry_after_s": 7}),
        (StorageUnavailable("storage is busy", retry_after_s=1), {"retry_after_s": 1}),
    ]
    for error, attributes in errors:
        try:
            raise ValueError("the cause")
        except ValueError as cause:
            error.__cause__ = cause
        reworded = error.with_detail(f"f.p12: {error.detail}")
        assert type(reworded) is type(error)
        assert reworded.detail == str(reworded) == f"f.p12: {error.detail}"
        assert reworded.args == (reworded.detail,)
        assert {name: getattr(reworded, name) for name in attributes} == attributes
        # The original is unchanged, and the copy has none of its history.
        assert error.detail == str(error) != reworded.detail
        assert reworded.__cause__ is None
        assert reworded.__traceback__ is None


def test_with_detail_copies_notes_not_shares_them() -> None:
    from certctl.errors import InvalidRequest

    error = InvalidRequest("bad")
    error.add_note("from the original")
    reworded = error.with_detail("worse")
    reworded.add_note("only on the copy")
    assert error.__notes__ == ["from the original"]
    assert reworded.__notes__ == ["from the original", "only on the copy"]
