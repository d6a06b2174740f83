"""The options that put where-to-fetch URLs into issued certificates (cert issue, csr sign).

Typer options, so not imported by the Typer-free ``cert issue`` route (``_issue`` checks the
values for both routes: ``checked_urls``).
"""

from __future__ import annotations

import typer

CRL_URLS = typer.Option(
    [],
    "--crl-url",
    metavar="URL",
    help="CRL distribution point: http(s) URL where clients fetch the CA's CRL (repeatable).",
)
CA_ISSUERS_URLS = typer.Option(
    [],
    "--ca-issuers-url",
    metavar="URL",
    help="Authority Information Access caIssuers: http(s) URL where clients fetch the "
    "CA's certificate as DER (repeatable).",
)
