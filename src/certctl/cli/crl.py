"""``certctl crl create``: a CRL listing revoked serials."""

from __future__ import annotations

from pathlib import Path

import typer

from certctl.cli._common import not_stdout, open_ca_dir, option_value, read_file, utcnow, warn
from certctl.cli._stdin import STDIN_HELP, password_file_option

__all__ = ["app"]

app = typer.Typer(help="Certificate revocation lists.", no_args_is_help=True)


@app.command("create")
def create(
    ca_dir: Path = typer.Option(..., "--ca", help="CA directory."),
    out: Path = typer.Option(..., "--out", "-o", callback=not_stdout, help="CRL file to write."),
    revoked: list[str] = typer.Option(
        [],
        "--revoked",
        metavar="SERIAL",  # as the README writes it; "REVOKED" named no value
        help="Revoked serial, hex (3f:a1… or 0x3fa1) or dec:NNN (repeatable).",
    ),
    reason: str = typer.Option(
        None,
        "--reason",
        help="Reason of the --revoked entries: keyCompromise, superseded, "
        "cessationOfOperation … (default: unspecified; those from --from keep theirs).",
    ),
    previous: Path = typer.Option(
        None,
        "--from",
        help=(
            "A CRL this CA signed before (it may be the --out file, with --force): its "
            "entries are kept with their revocation dates and reasons, --revoked adds to them."
        ),
    ),
    next_update: str = typer.Option(
        "7D", "--next-update", help="When clients should fetch a new CRL."
    ),
    der: bool = typer.Option(False, "--der", help="Write DER instead of PEM."),
    ca_password_file: Path = typer.Option(
        None,
        "--ca-password-file",
        callback=password_file_option,
        help="Password of an encrypted ca.key (default: $CERTCTL_CA_PASSWORD)." + STDIN_HELP,
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Create and sign a CRL for the CA, listing the given serials."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from certctl.errors import InvalidRequest
    from certctl.files import OutputSet
    from certctl.pki import (
        RevokedEntry,
        create_crl,
        format_days,
        format_serial,
        load_previous_crl,
        parse_duration,
        parse_serial,
    )
    from certctl.pki.crl import is_crl_serial

    with option_value("--revoked"):
        serials = list(dict.fromkeys(parse_serial(s) for s in revoked))
    flag = None
    if reason is not None:
        if not revoked:
            raise typer.BadParameter("--reason needs --revoked (it is the reason of each entry)")
        by_name = {r.name.lower(): r for r in x509.ReasonFlags}
        by_name |= {r.value.lower(): r for r in x509.ReasonFlags}
        # Spaces around it folded away with the case: `--reason "keycompromise "` (a value
        # pasted or cut from a list) was "unknown" while "KeyCompromise" was taken.
        reason = reason.strip()
        flag = by_name.get(reason.lower())
        if flag is None:
            choices = ", ".join(
                r.value for r in x509.ReasonFlags if r is not x509.ReasonFlags.remove_from_crl
            )
            if not reason:
                # `--reason "$REASON"` with the variable unset: said as the server says it,
                # not as ": unknown reason".
                raise typer.BadParameter(
                    f"an empty revocation reason: give one of {choices}, or leave --reason "
                    "out for unspecified"
                )
            raise typer.BadParameter(f"{reason}: unknown reason (choose one of {choices})")
        if flag is x509.ReasonFlags.remove_from_crl:
            raise typer.BadParameter(
                f"{reason}: a reason for delta CRLs only (RFC 5280 5.3.1); this is a full "
                "CRL, where a serial no longer revoked is simply left out"
            )
    with option_value("--next-update"):
        interval = parse_duration(next_update)
    outputs = OutputSet(force=force)
    outputs.add(out, b"")
    outputs.check()
    ca = open_ca_dir(ca_dir, ca_password_file)
    kept: list[RevokedEntry] = []
    previous_number: int | None = None
    if previous is not None:
        try:
            kept, previous_number = load_previous_crl(read_file(previous, "CRL"), ca)
        except InvalidRequest as exc:
            raise InvalidRequest(f"--from {previous}: {exc.detail}") from None
        # OpenSSL lists a serial RFC 5280 forbids (over 20 octets), which cryptography cannot:
        # left off, as the server leaves such a revoked row off its CRLs, not a traceback.
        for entry in kept:
            if not is_crl_serial(entry.serial_number):
                warn(
                    f"--from {previous}: serial {format_serial(entry.serial_number)} is left "
                    "off: it is no positive number of at most 20 octets (RFC 5280 4.1.2.2), "
                    "which no CRL certctl signs can list"
                )
        kept = [entry for entry in kept if is_crl_serial(entry.serial_number)]
    now = utcnow()
    ca_end = ca.certificate.not_valid_after_utc  # open_ca_dir refused an expired CA
    if now + interval > ca_end:
        # A CRL promising news after its issuer expired: the next one must come from a
        # renewed CA, so clients should fetch it by then (as cert issue clips a validity,
        # and as there, a clip too small to show in days is no news: "7 days instead of 7").
        granted, asked = format_days(ca_end - now), format_days(interval)
        if granted != asked:
            warn(
                f"next update {next_update.strip()} clipped to the CA's notAfter "
                f"{ca_end:%Y-%m-%dT%H:%M:%SZ}: {granted} instead of {asked}"
            )
        interval = ca_end - now
    # A serial listed before keeps its first revocation date and reason.
    known = {entry.serial_number for entry in kept}
    added = [RevokedEntry(s, now, flag) for s in serials if s not in known]
    crl = create_crl(
        ca, [*kept, *added], now=now, next_update=interval, previous_number=previous_number
    )
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    outputs.add(out, crl.public_bytes(encoding))
    outputs.commit()
    carried = f" ({len(kept)} kept from {previous}, {len(added)} new)" if previous else ""
    total = len(kept) + len(added)
    typer.echo(
        f"wrote CRL with {total} revoked serial{'' if total == 1 else 's'}{carried} to {out}, "
        f"next update {now + interval:%Y-%m-%d %H:%M}Z"
    )
