"""A trivial ASGI app for the ASGI-server rows (uvicorn vs granian), and the ``tls`` probe.

``GET /tls`` answers with the scope's ``extensions`` (JSON), which shows whether the server
passes the client certificate to the application (the ASGI ``tls`` extension).
"""

from __future__ import annotations

import json
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/tls":
        body = json.dumps(scope.get("extensions") or {}, default=str).encode()
    else:
        body = b"ok\n"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
