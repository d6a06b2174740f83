"""API key secrets are cut out of logged paths and error details, and nothing else is."""

from __future__ import annotations

import pytest

from certctl.auth.apikeys import mint_key, redact_keys


def test_every_spelling_of_a_key_loses_its_secret() -> None:
    key = mint_key().value
    key_id, secret = key.removeprefix("cctl_").split("_", 1)
    for text, kept in (
        (f"/api/v1/auth/apikeys/{key}", f"/api/v1/auth/apikeys/cctl_{key_id}_…"),
        (f"/api/v1/auth/apikeys/{key_id}_{secret}", f"/api/v1/auth/apikeys/{key_id}_…"),
        (f"API key {key_id[2:]}_{secret} not found", f"API key {key_id[2:]}_… not found"),
        (f"cut short: {key_id}_{secret[:-3]}", f"cut short: {key_id}_…"),
    ):
        assert redact_keys(text) == kept
        assert secret[:20] not in redact_keys(text)


@pytest.mark.parametrize(
    "text",
    [
        "/srv/tls/20240101_production_certificates is not inside services.target-directories",
        "/api/v1/issuers/decade_old_intermediate_authority_2015",
        "/api/v1/auth/roles/r-ops_team",
        "/srv/tls/20240101_production-frontend-eu-west1-certificates-v2/tls.crt",
        "secret:apps/deadbeef_web-frontend-tls-production-cluster-eu-west-1a",
        "GET /api/v1/metrics/prometheus 200",
    ],
)
def test_names_people_give_things_are_left_alone(text: str) -> None:
    assert redact_keys(text) == text
