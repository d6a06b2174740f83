"""The ACME (RFC 8555) endpoint under ``/acme/``: the JWS envelope, URLs and answers.

Outside ``/api/v1`` on purpose: ACME clients are given a directory URL, and authenticate by
JWS (an account key), never by a certctl API key. Mounted only with ``acme.enabled``; off,
every ``/acme/`` path is a 404. The use cases are ``services.acme``.

Every answer, error or not, carries a fresh ``Replay-Nonce``, ``Link: <directory>;rel="index"``
and ``Cache-Control: no-store``; errors are problem documents of the ACME types
(``urn:ietf:params:acme:error:*``) in the DESIGN shape (type, title, status, detail).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from certctl.api._common import in_write_thread, json_bytes, services_of
from certctl.api.access_log import logged_path_of
from certctl.api.throttle import AuthFailureLimiter
from certctl.errors import (
    AcmeError,
    CertctlError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    StorageUnavailable,
    Unavailable,
)
from certctl.pki.jose import (
    JwsPublicKey,
    load_jwk,
    parse_jws,
    thumbprint,
    verify_jws,
)
from certctl.services import acme, acme_renewal_info
from certctl.services.acme import AcmeSettings, AuthorizationView, ChallengeView, OrderView
from certctl.services.acme_validation import fetch_http01, lookup_dns01
from certctl.store.models import AcmeAccount

__all__ = [
    "ACCOUNTS_PER_HOUR",
    "ACME_PREFIX",
    "VALIDATION_LIMIT",
    "VALIDATION_QUEUE",
    "acme_routes",
    "is_acme_path",
    "routing_problem",
    "with_acme_headers",
]

log = logging.getLogger("certctl.api")

ACME_PREFIX = "/acme"
# Validations at once per process (http-01 fetches and dns-01 lookups alike): each holds a
# socket and up to 10 s (5 s for a lookup).
VALIDATION_LIMIT = 8
# Validations started and not recorded yet per process (fetching, or waiting for one of those
# slots). Beyond it a challenge answered stays pending (rateLimited, retried later): each
# answer queued a task, so an account answering thousands of challenges on a name that never
# answers held them all in memory and everyone's validations waited behind its hours of them.
VALIDATION_QUEUE = 256
RETRY_AFTER_S = 30
# How long a challenge's answer waits for the validation it started (see challenge()).
ANSWER_WAIT_S = 0.5
ACCOUNTS_PER_HOUR = 20
_JOSE = "application/jose+json"

# RFC 9457 3.1.3: one title per type (RFC 8555 6.7's descriptions, shortened).
_TITLES = {
    "accountDoesNotExist": "Account does not exist",
    "alreadyReplaced": "Certificate already replaced",
    "alreadyRevoked": "Certificate already revoked",
    "badCSR": "Bad CSR",
    "badNonce": "Bad nonce",
    "badPublicKey": "Bad public key",
    "badRevocationReason": "Bad revocation reason",
    "badSignatureAlgorithm": "Bad signature algorithm",
    "conflict": "Conflict",
    "externalAccountRequired": "External account required",
    "connection": "Connection failure",
    "dns": "DNS problem",
    "incorrectResponse": "Incorrect response",
    "invalidContact": "Invalid contact",
    "malformed": "Malformed request",
    "orderNotReady": "Order not ready",
    "rateLimited": "Rate limited",
    "rejectedIdentifier": "Rejected identifier",
    "serverInternal": "Server internal error",
    "unauthorized": "Unauthorized",
    "unsupportedContact": "Unsupported contact",
    "unsupportedIdentifier": "Unsupported identifier",
}


def _problem(acme_type: str, status: int, detail: str) -> Response:
    body = {
        "type": f"urn:ietf:params:acme:error:{acme_type}",
        "title": _TITLES.get(acme_type, "Error"),
        "status": status,
        "detail": detail[:500],
    }
    return Response(json_bytes(body), status, media_type="application/problem+json")


def _from_error(exc: CertctlError) -> Response:
    """The ACME problem of a refusal raised below (an AcmeError says its own type)."""
    if isinstance(exc, AcmeError):
        return _problem(exc.acme_type, exc.status, exc.detail)
    if isinstance(exc, NotFound):
        return _problem("malformed", 404, exc.detail)
    if isinstance(exc, PermissionDenied):
        return _problem("unauthorized", 403, exc.detail)
    if isinstance(exc, Conflict):
        return _problem("malformed", 409, exc.detail)
    if isinstance(exc, InvalidRequest) or exc.status == 400:
        return _problem("malformed", 400, exc.detail)
    return _problem("serverInternal", exc.status if exc.status >= 500 else 500, exc.detail)


def _base(request: Request) -> str:
    """Where clients reach the server: ``public-url``, else the request's scheme and host."""
    public = services_of(request).public_url
    if public is not None:
        return public.rstrip("/")
    host = request.headers.get("host", "")
    return f"{request.url.scheme}://{host}"


def _url(request: Request, path: str) -> str:
    return f"{_base(request)}{ACME_PREFIX}/{path}"


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")  # RFC 3339, as RFC 8555 7.1 asks


def _json(data: Any, status: int = 200, location: str | None = None) -> Response:
    response = Response(json_bytes(data), status, media_type="application/json")
    if location is not None:
        response.headers["Location"] = location
    return response


@dataclass(frozen=True)
class _Signed:
    """A POST whose JWS verified and whose nonce was accepted."""

    account: AcmeAccount | None  # a kid request's
    key: JwsPublicKey
    protected: dict[str, Any]
    payload: Any  # None: POST-as-GET (empty payload); else the parsed JSON
    raw_payload: bytes


async def _run(request: Request, func: Callable[..., Any], *args: Any) -> Any:
    return await in_write_thread(request, func, *args)


async def _signed(request: Request, *, jwk: bool = False, kid: bool = True) -> _Signed:
    """Check the JWS envelope (RFC 8555 6.2-6.5): content type, alg, url, key, signature, nonce.

    Raises:
        AcmeError: 415 for another content type, badSignatureAlgorithm, unauthorized (url),
            malformed (jwk/kid misuse, bad signature), accountDoesNotExist, badNonce.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != _JOSE:
        raise AcmeError(f"Content-Type must be {_JOSE}", "malformed", 415)
    message = parse_jws(await request.body())
    protected = message.protected
    expected = _base(request) + request.url.path
    url = protected.get("url")
    if url != expected:
        shown = str(url)[:200] if url is not None else "missing"
        raise AcmeError(
            f"protected header url {shown} is not this request's URL {expected}",
            "unauthorized",
            401,
        )
    if ("jwk" in protected) == ("kid" in protected):
        raise AcmeError("the protected header needs exactly one of jwk and kid")
    account: AcmeAccount | None = None
    if "jwk" in protected:
        if not jwk:
            raise AcmeError("this resource takes a kid (the account URL), not a jwk")
        key = load_jwk(protected["jwk"])
    else:
        if not kid:
            raise AcmeError("new-account takes a jwk (the account key), not a kid")
        given = protected["kid"]
        prefix = _url(request, "account/")
        if not isinstance(given, str) or not given.startswith(prefix):
            raise AcmeError(
                f"kid {str(given)[:200]} is no account URL of this server", "accountDoesNotExist"
            )
        services = services_of(request)
        account = await anyio.to_thread.run_sync(
            acme.find_account,
            services,
            given[len(prefix) :],
            _settings(request).external_account_required,
        )
        key = load_jwk(account.jwk)
    verify_jws(message, key)
    await _run(request, acme.consume_nonce, services_of(request), protected.get("nonce"))
    payload: Any = None
    if message.payload != b"":
        try:
            payload = json.loads(message.payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise AcmeError("the JWS payload is not JSON") from None
        if not isinstance(payload, dict):
            raise AcmeError("the JWS payload is not a JSON object")
    if account is not None:
        request.scope["certctl.actor"] = acme.account_actor(account.id)
    return _Signed(account, key, protected, payload, message.payload)


def _account_of(signed: _Signed) -> AcmeAccount:
    assert signed.account is not None  # a kid request's
    return signed.account


def _post_as_get(signed: _Signed) -> None:
    if signed.payload is not None:
        raise AcmeError("POST-as-GET: the JWS payload must be empty")


def _source(request: Request) -> str:
    client = request.client
    return client.host if client is not None else ""


# --- representations ----------------------------------------------------------------------


def _account_json(request: Request, account: AcmeAccount) -> dict[str, Any]:
    return {
        "status": account.status,
        "contact": list(account.contact),
        "orders": _url(request, f"account/{account.id}/orders"),
    }


def _order_json(request: Request, order: OrderView) -> dict[str, Any]:
    data: dict[str, Any] = {
        "status": order.status,
        "expires": _time(order.expires),
        "identifiers": [
            {"type": "ip" if name in order.ip_identifiers else "dns", "value": name}
            for name in order.identifiers
        ],
        "authorizations": [_url(request, f"authz/{a}") for a in order.authorizations],
        "finalize": _url(request, f"order/{order.id}/finalize"),
    }
    if order.certificate_id is not None and order.status == "valid":
        data["certificate"] = _url(request, f"cert/{order.certificate_id}")
    if order.error is not None:
        data["error"] = order.error
    if order.replaces is not None:
        data["replaces"] = order.replaces  # RFC 9773 5: reflected, as the client gave it
    return data


def _challenge_json(request: Request, challenge: ChallengeView) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": challenge.type,
        "url": _url(request, f"challenge/{challenge.id}"),
        "token": challenge.token,
        "status": challenge.status,
    }
    if challenge.validated is not None and challenge.status == "valid":
        data["validated"] = _time(challenge.validated)
    if challenge.error is not None:
        data["error"] = challenge.error
    return data


def _authz_json(request: Request, authz: AuthorizationView) -> dict[str, Any]:
    status = "invalid" if authz.status == "expired" else authz.status
    data: dict[str, Any] = {
        "identifier": {"type": authz.identifier_type, "value": authz.identifier},
        "status": status,
        "expires": _time(authz.expires),
        "challenges": [_challenge_json(request, c) for c in authz.challenges],
    }
    if authz.wildcard:
        data["wildcard"] = True  # RFC 8555 7.1.4: the identifier is the wildcard's base
    return data


# --- handlers -----------------------------------------------------------------------------


async def directory(request: Request) -> Response:
    return _json(
        {
            "newNonce": _url(request, "new-nonce"),
            "newAccount": _url(request, "new-account"),
            "newOrder": _url(request, "new-order"),
            "revokeCert": _url(request, "revoke-cert"),
            "keyChange": _url(request, "key-change"),
            "renewalInfo": _url(request, "renewal-info"),
            "meta": {"externalAccountRequired": _settings(request).external_account_required},
        }
    )


async def new_nonce(request: Request) -> Response:
    # RFC 8555 7.2: HEAD answers 200, GET 204; the nonce is added with every answer.
    return Response(status_code=200 if request.method == "HEAD" else 204)


async def new_account(request: Request) -> Response:
    signed = await _signed(request, jwk=True, kid=False)
    payload = signed.payload if signed.payload is not None else {}
    source = _source(request)
    # Accounts are free (unless acme.external-account-required) and kept for good, with an audit
    # event each: ACCOUNTS_PER_HOUR new ones per address (its IPv6 /64), then an hour's wait.
    limiter: AuthFailureLimiter = request.app.state.acme_account_limiter
    account, created = await _run(
        request,
        acme.create_account,
        services_of(request),
        signed.protected["jwk"],
        payload,
        source,
        limiter.retry_after(source),
        _url(request, "new-account"),
        _settings(request).external_account_required,
    )
    if created:
        limiter.record(source)
    request.scope["certctl.actor"] = acme.account_actor(account.id)
    location = _url(request, f"account/{account.id}")
    return _json(_account_json(request, account), 201 if created else 200, location)


async def account(request: Request) -> Response:
    signed = await _signed(request)
    own = _account_of(signed)
    if own.id != request.path_params["id"]:
        raise AcmeError("the kid names another account than the URL", "unauthorized", 403)
    current = own
    if signed.payload is not None:
        current = await _run(
            request,
            acme.update_account,
            services_of(request),
            own,
            signed.payload,
            _source(request),
        )
    return _json(_account_json(request, current), location=_url(request, f"account/{own.id}"))


async def account_orders(request: Request) -> Response:
    signed = await _signed(request)
    _post_as_get(signed)
    own = _account_of(signed)
    if own.id != request.path_params["id"]:
        raise AcmeError("the kid names another account than the URL", "unauthorized", 403)
    ids = await anyio.to_thread.run_sync(acme.account_orders, services_of(request), own)
    return _json({"orders": [_url(request, f"order/{i}") for i in ids]})


async def new_order(request: Request) -> Response:
    signed = await _signed(request)
    if signed.payload is None:
        raise AcmeError("new-order needs a payload with identifiers")
    order = await _run(
        request,
        acme.new_order,
        services_of(request),
        _settings(request),
        _account_of(signed),
        signed.payload,
        _source(request),
    )
    return _json(_order_json(request, order), 201, _url(request, f"order/{order.id}"))


async def order(request: Request) -> Response:
    signed = await _signed(request)
    _post_as_get(signed)
    view = await anyio.to_thread.run_sync(
        acme.order_view, services_of(request), _account_of(signed), request.path_params["id"]
    )
    return _json(_order_json(request, view), location=_url(request, f"order/{view.id}"))


async def finalize(request: Request) -> Response:
    signed = await _signed(request)
    if signed.payload is None:
        raise AcmeError('finalize takes {"csr": base64url DER}')
    view = await _run(
        request,
        acme.finalize_order,
        services_of(request),
        _settings(request),
        _account_of(signed),
        request.path_params["id"],
        signed.payload,
        _source(request),
    )
    return _json(_order_json(request, view), location=_url(request, f"order/{view.id}"))


async def authorization(request: Request) -> Response:
    signed = await _signed(request)
    authz_id = request.path_params["id"]
    if signed.payload is not None:
        view = await _run(
            request,
            acme.deactivate_authorization,
            services_of(request),
            _account_of(signed),
            authz_id,
            signed.payload,
            _source(request),
        )
    else:
        view = await anyio.to_thread.run_sync(
            acme.authorization_view, services_of(request), _account_of(signed), authz_id
        )
        for polled in view.challenges:
            await _restart_if_stale(request, polled, _account_of(signed))
    response = _json(_authz_json(request, view))
    if view.status == "pending" and any(c.status == "processing" for c in view.challenges):
        response.headers["Retry-After"] = _poll_after(request)
    return response


def _poll_after(request: Request) -> str:
    """Retry-After for a validation under way (RFC 8555 7.5.1): when to poll again.

    lego waits 5 s before its first poll of an authorization when the challenge's answer
    says nothing (Boulder's way), and backs off from there: an http-01 fetch on a network
    of its own is done in milliseconds, so every lego order waited ~5 s per name for
    nothing. 1 s while the validation runs at once; 5 s, as before, when it queues behind
    others (lego gives up after 100 Retry-Afters: 100 s from 1 s would not cover a long
    queue of validations each allowed 10 s).
    """
    queued = len(request.app.state.acme_tasks) > VALIDATION_LIMIT
    return "5" if queued else "1"


async def challenge(request: Request) -> Response:
    signed = await _signed(request)
    services = services_of(request)
    own = _account_of(signed)
    challenge_id = request.path_params["id"]
    if signed.payload is None:
        view, _ = await anyio.to_thread.run_sync(acme.challenge_view, services, own, challenge_id)
    else:
        # The response ({}). RFC 8555 7.5.1: fields http-01 does not define are ignored, as
        # the keyAuthorization clients written against the drafts still send.
        state = request.app.state
        waiting = len(state.acme_tasks)
        if waiting >= state.acme_validation_queue:
            view, _ = await anyio.to_thread.run_sync(
                acme.challenge_view, services, own, challenge_id
            )
            if view.status == "pending":  # one under way or over is answered as it is
                raise AcmeError(
                    f"{waiting} validations are under way here; answer the challenge "
                    f"again in {RETRY_AFTER_S} s",
                    "rateLimited",
                    429,
                )
        else:
            view, name = await _run(request, acme.start_challenge, services, own, challenge_id)
            if name is not None:
                task = _spawn_validation(request, view, name, own)
                # Most validations (an http-01 fetch on the network next door, a TXT lookup)
                # end in milliseconds: answered with their outcome, the client's first poll
                # finds it, where certbot's found it pending and slept a second before the
                # next. A slower one is answered processing, as before; its task goes on.
                done, _ = await asyncio.wait({task}, timeout=ANSWER_WAIT_S)
                if done:
                    view, _ = await anyio.to_thread.run_sync(
                        acme.challenge_view, services, own, challenge_id
                    )
    await _restart_if_stale(request, view, own)
    response = _json(_challenge_json(request, view))
    if view.status == "processing":
        response.headers["Retry-After"] = _poll_after(request)
    response.headers.append("Link", f'<{_url(request, f"authz/{view.authorization_id}")}>;rel="up"')
    return response


async def certificate(request: Request) -> Response:
    signed = await _signed(request)
    _post_as_get(signed)
    pem = await anyio.to_thread.run_sync(
        acme.certificate_chain, services_of(request), _account_of(signed), request.path_params["id"]
    )
    return Response(pem.encode(), 200, media_type="application/pem-certificate-chain")


async def revoke_cert(request: Request) -> Response:
    signed = await _signed(request, jwk=True)
    if signed.payload is None:
        raise AcmeError('revoke-cert takes {"certificate": base64url DER}')
    await _run(
        request,
        acme.revoke,
        services_of(request),
        signed.account,
        signed.key if signed.account is None else None,
        signed.payload,
        _source(request),
    )
    return Response(status_code=200)


async def renewal_info(request: Request) -> Response:
    """RFC 9773 4: the suggested renewal window of a certificate, to anyone (a plain GET)."""
    window = await anyio.to_thread.run_sync(
        acme_renewal_info.renewal_window, services_of(request), request.path_params["cert_id"]
    )
    response = _json({"suggestedWindow": {"start": _time(window.start), "end": _time(window.end)}})
    response.headers["Retry-After"] = str(int(acme_renewal_info.RETRY_AFTER.total_seconds()))
    return response


async def key_change(request: Request) -> Response:
    """RFC 8555 7.3.5: the outer JWS by the old key (kid), the inner by the new one (jwk)."""
    signed = await _signed(request)
    own = _account_of(signed)
    inner = parse_jws(signed.raw_payload)
    protected = inner.protected
    if "jwk" not in protected or "kid" in protected or "nonce" in protected:
        raise AcmeError("the inner JWS has a jwk (the new key), and neither kid nor nonce")
    if protected.get("url") != signed.protected["url"]:
        raise AcmeError("the inner JWS's url is not the outer one's")
    new_key = load_jwk(protected["jwk"])
    verify_jws(inner, new_key)
    try:
        payload = json.loads(inner.payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise AcmeError("the inner JWS payload is not JSON") from None
    if not isinstance(payload, dict) or set(payload) != {"account", "oldKey"}:
        raise AcmeError('the inner payload is {"account": URL, "oldKey": JWK}')
    if payload["account"] != signed.protected["kid"]:
        raise AcmeError("the inner payload's account is not the outer kid", "unauthorized", 403)
    if thumbprint(load_jwk(payload["oldKey"])) != own.thumbprint:
        raise AcmeError("oldKey is not the account's current key", "unauthorized", 403)
    changed = await _run(
        request, acme.change_key, services_of(request), own, new_key, _source(request)
    )
    return _json(_account_json(request, changed), location=_url(request, f"account/{own.id}"))


# --- validation ---------------------------------------------------------------------------


def _settings(request: Request) -> AcmeSettings:
    settings: AcmeSettings = request.app.state.acme
    return settings


async def _restart_if_stale(request: Request, view: ChallengeView, own: AcmeAccount) -> None:
    """Validate again a challenge left processing by a server that stopped mid-fetch.

    Clients poll the authorization (certbot, lego) or the challenge: either read starts it.
    """
    services = services_of(request)
    if not view.stale(services.clock()) or view.id in request.app.state.acme_tasks:
        return  # fresh, or this process's fetch is under way (slow, or queued for a slot)
    claimed = await _run(request, acme.restart_stale_validation, services, own, view.id)
    if claimed is not None:
        _spawn_validation(request, claimed[0], claimed[1], own)


def _spawn_validation(
    request: Request, view: ChallengeView, name: str, own: AcmeAccount
) -> asyncio.Task[None]:
    """Validate off the request: the client polls the challenge or its authorization."""
    state = request.app.state
    services = services_of(request)
    settings = _settings(request)
    key_authorization = f"{view.token}.{own.thumbprint}"
    source = _source(request)

    async def validate() -> None:
        try:
            async with state.acme_validations:
                if view.type == "dns-01":
                    error = await lookup_dns01(name, settings.dns_resolvers, key_authorization)
                else:
                    error = await fetch_http01(
                        name, settings.http_01_port, view.token, key_authorization
                    )
            await anyio.to_thread.run_sync(
                acme.record_validation, services, view.id, error, source, limiter=state.writes
            )
        except Exception:
            # Left processing: the authorization expires (invalid) if nothing records it.
            log.exception("%s validation of challenge %s could not be recorded", view.type, view.id)

    task = asyncio.get_running_loop().create_task(validate())
    # By challenge: a stale-looking challenge whose task is alive here is not started again.
    tasks: dict[str, asyncio.Task[None]] = state.acme_tasks
    tasks[view.id] = task
    task.add_done_callback(lambda _: tasks.pop(view.id, None))
    return task


# --- routes -------------------------------------------------------------------------------


def _endpoint(
    path: str, handler: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        scope = request.scope
        scope["certctl.route"] = path
        try:
            if "\x00" in scope["path"]:
                raise InvalidRequest("NUL character in the request path")
            response = await handler(request)
        except (StorageUnavailable, Unavailable):
            # The app's 503 with Retry-After, as every route's while the store fails (the
            # app adds the nonce: app._acme_answer).
            raise
        except CertctlError as exc:
            if exc.status >= 500:
                log.warning("ACME %s %s: %s", request.method, logged_path_of(scope), exc.detail)
            response = _from_error(exc)
            if exc.status == 429:
                retry_after = getattr(exc, "retry_after", None) or RETRY_AFTER_S
                response.headers["Retry-After"] = str(retry_after)
        return await with_acme_headers(request, response)

    endpoint.__name__ = handler.__name__
    return endpoint


async def with_acme_headers(request: Request, response: Response) -> Response:
    """``response`` with a nonce, the directory's Link and (anonymous) Cache-Control."""
    # On the loop: a nonce is made by an HMAC, with no store access (acme.mint_nonce).
    response.headers["Replay-Nonce"] = acme.mint_nonce(services_of(request))
    response.headers.append("Link", f'<{_url(request, "directory")}>;rel="index"')
    if "certctl.actor" not in request.scope:  # else the middleware adds it with the private set
        response.headers["Cache-Control"] = "no-store"
    return response


async def unexpected_problem(request: Request) -> Response:
    """A failure no handler expected, under ``/acme/``: ``serverInternal``, with a nonce.

    The API's own 500 carried no nonce and no ACME type: a client retrying took it for a
    malformed answer and had to ask new-nonce first (RFC 8555 6.5, 6.7).
    """
    response = _problem("serverInternal", 500, "internal error; see the server log")
    return await with_acme_headers(request, response)


def is_acme_path(path: str) -> bool:
    """Whether ``path`` is under the ACME endpoint (its 404 and 405 are ACME problems)."""
    return path == ACME_PREFIX or path.startswith(ACME_PREFIX + "/")


async def routing_problem(request: Request, status: int, allowed: str) -> Response:
    """The router's 404 or 405 under ``/acme/`` as an ACME problem, with a nonce.

    RFC 8555 6.5: every answer carries a fresh nonce, so that a client retries after any
    error without another new-nonce request (lego and certbot take the one an error gives).
    """
    if status == 405:
        detail = f"{request.method} {request.url.path[:200]}: allowed {allowed}"
        if request.method == "GET" and allowed == "POST":
            detail += "; ACME resources are read with POST-as-GET (RFC 8555 6.3)"
        response = _problem("malformed", 405, detail)
        response.headers["Allow"] = allowed
    else:
        response = _problem("malformed", status, f"no ACME resource {request.url.path[:200]}")
    return await with_acme_headers(request, response)


_TABLE: tuple[tuple[str, str, Callable[[Request], Awaitable[Response]]], ...] = (
    ("GET", "/directory", directory),
    ("GET", "/new-nonce", new_nonce),  # Starlette answers HEAD on a GET route
    ("POST", "/new-account", new_account),
    ("POST", "/account/{id}", account),
    ("POST", "/account/{id}/orders", account_orders),
    ("POST", "/new-order", new_order),
    ("POST", "/order/{id}", order),
    ("POST", "/order/{id}/finalize", finalize),
    ("POST", "/authz/{id}", authorization),
    ("POST", "/challenge/{id}", challenge),
    ("POST", "/cert/{id}", certificate),
    ("POST", "/revoke-cert", revoke_cert),
    ("POST", "/key-change", key_change),
    ("GET", "/renewal-info/{cert_id}", renewal_info),
)


def acme_routes() -> list[Route]:
    """The ACME routes, for ``create_app`` to mount when ``acme.enabled``."""
    return [
        Route(ACME_PREFIX + path, _endpoint(ACME_PREFIX + path, handler), methods=[method])
        for method, path, handler in _TABLE
    ]
