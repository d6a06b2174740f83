"""The CRL served last, while the store fails: only when no process can revoke meanwhile."""

from __future__ import annotations

import pytest

from certctl.services import crls
from certctl.store.db import PoolTimeout
from tests.services.conftest import Env
from tests.services.test_scheduler_pool import _every_connection_taken


def test_a_busy_store_never_serves_a_crl_kept_from_before(any_env: Env) -> None:
    # A database that cannot be reached records no revocation, so the CRL served last is
    # served (tests/faults/test_storage.py). A busy one may just have committed one through
    # another process: a CRL kept from before would leave it off; the fetch gets its 503.
    served = crls.served_crl(any_env.services, "default")
    any_env.clock.advance(seconds=crls.CRL_REUSE.total_seconds() + 1)  # due to be signed again
    with _every_connection_taken(any_env.services.engine), pytest.raises(PoolTimeout):
        crls.served_crl(any_env.services, "default")
    again = crls.served_crl(any_env.services, "default")  # a connection free: a new one
    assert again.number > served.number
