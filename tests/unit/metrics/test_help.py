"""The HELP lines of the store gauges say what is counted, in the scrape's own words."""

from __future__ import annotations

from datetime import UTC, datetime

from certctl.metrics.registry import CertificateGauges


def test_next_expiry_help_does_not_say_active_where_expiring_counts_too() -> None:
    # certctl_certificates{status="active"} excludes the expiring ones, but the next-expiry
    # gauge is mostly about them (the alert on it fires for an expiring certificate): its
    # HELP said "among active certificates", which read as that status.
    gauges = CertificateGauges()
    soon = datetime(2027, 1, 1, tzinfo=UTC)
    gauges.update({("default", "expiring"): 1}, {"default": soon}, {"default": soon})
    families = {family.name: family for family in gauges.collect()}
    family = families["certctl_certificate_next_expiry_timestamp_seconds"]
    assert [sample.value for sample in family.samples] == [soon.timestamp()]
    assert family.documentation == (
        "Earliest notAfter per issuer among its unexpired, unrevoked certificates that were "
        "not renewed (expiring ones included)"
    )
