"""A service's conditions, outbox events and its status as the API shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from certctl.services.service_ca import retired_cas
from certctl.store.models import ManagedService, OutboxEvent

__all__ = [
    "add_event",
    "condition_transitions",
    "failure_told",
    "pass_conditions",
    "service_json",
    "stored_condition",
]


def pass_conditions(
    previous: dict[str, Any] | None,
    *,
    ready: bool,
    renewing: bool,
    failed: str | None,
    message: str,
    now: datetime,
) -> dict[str, Any]:
    """The three conditions a pass writes: Ready, Renewing and Failed."""
    return condition_transitions(
        previous,
        {
            "Ready": (ready, message if ready else (failed or "")),
            "Renewing": (renewing, ""),
            "Failed": (failed is not None, failed or ""),
        },
        now,
    )


def stored_condition(conditions: Any, name: str) -> dict[str, Any]:
    """The stored condition ``name``, or ``{}`` where the column holds something else.

    Only a hand-edited row holds a non-mapping there; read as "no condition", the pass
    writes a fresh one instead of failing every pass on ``.get``.
    """
    condition = conditions.get(name) if isinstance(conditions, dict) else None
    return condition if isinstance(condition, dict) else {}


def condition_transitions(
    previous: dict[str, Any] | None, wanted: dict[str, tuple[bool, str]], now: datetime
) -> dict[str, Any]:
    """The conditions ``wanted`` (name: status, message), each ``at`` when it last changed.

    As Kubernetes' lastTransitionTime: a condition whose status and message are those stored
    keeps its time. Stamped with every pass, the times said nothing of when the service
    changed, and a service reconciled on every pass (a custom certificate) was written each
    10 s. The scheduler keeps its resync clock itself (``due``'s ``last_pass``).
    """
    conditions: dict[str, Any] = {}
    for name, (status, message) in wanted.items():
        old = stored_condition(previous, name)
        same = old.get("status") is status and old.get("message") == message
        at = old.get("at") if same and isinstance(old.get("at"), str) else now.isoformat()
        conditions[name] = {"status": status, "message": message, "at": at}
    return conditions


def failure_told(conditions: dict[str, Any] | None, detail: str) -> bool:
    """Whether ``failed`` was sent for this failure (stored status: Failed, same message).

    Sent when a service becomes Failed, or fails for another reason, not on each retry (a
    target that stays unwritable used to page every back-off period, ~288 times a day). The
    stored status is the memory: read under the row lock in the transaction that writes the
    new one, it holds across restarts and replicas, as ``expiring``'s column does.
    """
    failed = stored_condition(conditions, "Failed")
    return failed.get("status") is True and failed.get("message") == detail


def add_event(
    session: Any, now: datetime, event: str, service: str, payload: dict[str, Any]
) -> None:
    """Queue webhook ``event`` about ``service`` in the outbox, in this transaction."""
    session.add(
        OutboxEvent(
            at=now,
            event=event,
            service=service,
            payload={"event": event, "service": service, "time": now.isoformat(), **payload},
            attempts=0,
            next_attempt_at=now,
        )
    )


def _service_phase(conditions: Any) -> str:
    """One word for the conditions: ``Pending`` until the first pass, then ``Failed``/``Ready``.

    Every pass writes all three conditions, so none stored means none has run yet (a new
    service, or a dry run's answer); Ready, Renewing and Failed all False read as broken.
    ``Failed`` wins over ``Ready``: the last good certificate may still be served.
    """
    if not isinstance(conditions, dict) or not conditions:
        return "Pending"
    if stored_condition(conditions, "Failed").get("status"):
        return "Failed"
    if stored_condition(conditions, "Ready").get("status"):
        return "Ready"
    return "Unknown"  # no pass writes this: a row edited by hand


def service_json(row: ManagedService) -> dict[str, Any]:
    """The API view: spec, status, serving certificate facts (never the key)."""
    ends = [until for _, until in retired_cas(row)]
    return {
        "name": row.name,
        "spec": row.spec,
        "generation": row.generation,
        "status": {
            "phase": _service_phase(row.conditions),
            "conditions": row.conditions or {},
            "observed_generation": row.reconciled_generation,
            "serial": row.serial,
            "not_after": row.not_after.isoformat() if row.not_after else None,
            "next_renewal": row.renew_at.isoformat() if row.renew_at else None,
            # Replaced CAs still in ca.crt (servers not reloaded stay trusted) until then:
            # the last of their ends.
            "retired_ca_until": max(ends).isoformat() if ends else None,
            "targets": row.delivered or {},
        },
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }
