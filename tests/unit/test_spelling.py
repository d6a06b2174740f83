"""The one "did you mean …?" rule every refusal of a misspelt name uses."""

from __future__ import annotations

import pytest

from certctl.auth.permissions import PERMISSIONS
from certctl.spelling import did_you_mean

STATUSES = ("active", "expiring", "expired", "revoked")


@pytest.mark.parametrize(
    ("name", "known", "hint"),
    [
        ("revokd", STATUSES, "did you mean revoked?"),
        # Compared in lower case, answered as spelt: a reason, a YAML key, an issuer id.
        ("Revoked", STATUSES, "did you mean revoked?"),
        ("keycompromise", ("keyCompromise", "superseded"), "did you mean keyCompromise?"),
        ("passwordfile", ("directory", "passwordFile"), "did you mean passwordFile?"),
        ("CLIENTS-CA", ("clients-ca", "default"), "did you mean clients-ca?"),
        ("metrics.reed", sorted(PERMISSIONS), "did you mean metrics.read?"),
        # One name only, the closest: r-metrics-read shares a shape, not a typo.
        ("r-mtls-reader", ("r-metrics-read", "r-mtls-readers"), "did you mean r-mtls-readers?"),
        # Names of the same shape are not offered for one another: the hint would stand where
        # the list of known names does, and hide the one meant.
        ("cert.write", sorted(PERMISSIONS), None),
        ("cert.fly", sorted(PERMISSIONS), None),
        ("reloadCommand", ("directory", "reload", "reloadTimeout"), None),
        ("valid", STATUSES, None),
        ("zzz", STATUSES, None),
        ("revoked", (), None),
    ],
)
def test_did_you_mean(name: str, known: tuple[str, ...] | list[str], hint: str | None) -> None:
    assert did_you_mean(name, known) == hint


def test_known_names_alike_but_for_case_offer_the_first() -> None:
    assert did_you_mean("modee", iter(["Mode", "mode"])) == "did you mean Mode?"
