"""certctl benchmarks: every result is a ratio against a reference timed in the same run.

Usage: ``python bench/run.py [--quick | --full] [--json PATH]`` (``make bench`` runs the default).
See bench/README.md for the method and what each row means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _crl import check_crl, new_serial, write_openssl_ca, write_previous_crl
from _measure import (
    BenchError,
    Variant,
    interleave,
    median,
    set_bytecode_cache,
    time_command,
)
from _server_bench import SERVER_PLANS, bench_servers
from _workloads import (
    BenchCA,
    certctl_issue_inprocess,
    certctl_issue_subprocess,
    check_certctl_zip,
    check_openssl_output,
    hosts,
    make_ca,
    openssl_loop,
    raw_files,
    raw_issue,
    write_bundle,
    write_instances,
    write_openssl_script,
)

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_JSON = BENCH_DIR / "results" / "latest.json"
SCRIPTS = Path(sysconfig.get_path("scripts"))
CERTCTL = SCRIPTS / "certctl"
WARMUP_N = 20
INSPECT_ROWS = ("inspect-bundle", "inspect-bundle-json")
CRL_ROW = "crl-create-large"


@dataclass(frozen=True)
class Plan:
    """Sizes and round counts for one mode."""

    mode: str
    issue_n: int
    issue_rounds: int
    help_rounds: int
    large_n: int | None
    large_rounds: int
    openssl_n: int
    timeout_s: float
    crl_n: int


PLANS = {
    "quick": Plan("quick", 20, 3, 3, 40, 3, 5, 60, 200),
    # The 10,000-certificate rows and the openssl loop are in issue 7's table: ~2.5 minutes,
    # mostly 10,000 files written and synced for issue-dir-large.
    "default": Plan("default", 1_000, 5, 15, 10_000, 3, 50, 900, 100_000),
    "full": Plan("full", 1_000, 9, 25, 10_000, 5, 100, 1800, 100_000),
}


def rate_row(
    row_id: str,
    title: str,
    samples: dict[str, list[float]],
    value: str,
    reference: str,
    *,
    n: int,
    reference_n: int,
    target: float | None,
) -> dict[str, Any]:
    """A throughput row: certificates/s of ``value`` over ``reference``, paired per round."""
    values = [n / s for s in samples[value]]
    refs = [reference_n / s for s in samples[reference]]
    ratios = [v / r for v, r in zip(values, refs, strict=True)]
    return _row(row_id, title, n, "certs/s", values, refs, ratios, value, reference, ">=", target)


def time_row(
    row_id: str,
    title: str,
    samples: dict[str, list[float]],
    value: str,
    reference: str,
    *,
    target: float | None,
) -> dict[str, Any]:
    """A wall-time row: seconds of ``value`` over ``reference`` (lower is better)."""
    values, refs = samples[value], samples[reference]
    ratios = [v / r for v, r in zip(values, refs, strict=True)]
    return _row(row_id, title, 1, "s", values, refs, ratios, value, reference, "<", target)


def _row(
    row_id: str,
    title: str,
    n: int,
    unit: str,
    values: list[float],
    refs: list[float],
    ratios: list[float],
    value_name: str,
    reference_name: str,
    op: str,
    target: float | None,
) -> dict[str, Any]:
    ratio = median(ratios)
    meets: bool | None = None
    if target is not None:
        meets = ratio >= target if op == ">=" else ratio < target
    return {
        "id": row_id,
        "title": title,
        "n": n,
        "unit": unit,
        "measured": value_name,
        "reference": reference_name,
        "value": median(values),
        "reference_value": median(refs),
        "ratio": ratio,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "rounds": len(ratios),
        "target": None if target is None else {"op": op, "ratio": target},
        "meets_target": meets,
        "samples": {"value": values, "reference": refs, "ratio": ratios},
    }


def _subprocess_variant(
    name: str, n: int, ca: BenchCA, instances: Path, out: Path, timeout_s: float
) -> Variant[float]:
    return Variant(
        name, n, lambda: certctl_issue_subprocess(CERTCTL, ca, instances, out, timeout_s=timeout_s)
    )


def _raw_variant(name: str, ca: BenchCA, n: int) -> Variant[float]:
    items = hosts(n)
    return Variant(name, n, lambda: raw_issue(ca, items))


def bench_issue(
    work: Path,
    ca: BenchCA,
    n: int,
    rounds: int,
    timeout_s: float,
    *,
    large: bool = False,
    openssl_n: int | None = None,
) -> list[dict[str, Any]]:
    """Rows for ``certctl cert issue --in`` with ``n`` instances, one interleaved group.

    References: raw cryptography always; an openssl per-certificate loop when ``openssl_n``.
    The in-process variant runs only in the default-size group (it diagnoses start-up).
    """
    suffix = "-large" if large else ""
    instances = write_instances(work / f"instances-{n}.yml", hosts(n))
    small = write_instances(work / "instances-warmup.yml", hosts(min(n, WARMUP_N)))
    items = hosts(n)
    variants = [
        _raw_variant("raw", ca, n),
        _subprocess_variant("zip", n, ca, instances, work / "out.zip", timeout_s),
        _subprocess_variant("dir", n, ca, instances, work / "out-dir", timeout_s),
        Variant("files", n, lambda: raw_files(items, work / "out-files")),
    ]
    warmup = [
        _raw_variant("raw", ca, min(n, WARMUP_N)),
        Variant("files", n, lambda: raw_files(items, work / "out-files")),
        _subprocess_variant("zip", n, ca, small, work / "out.zip", timeout_s),
        _subprocess_variant("dir", n, ca, small, work / "out-dir", timeout_s),
    ]
    if not large:
        variants.append(
            Variant("inproc", n, lambda: certctl_issue_inprocess(ca, instances, work / "in.zip"))
        )
        warmup.append(
            Variant("inproc", n, lambda: certctl_issue_inprocess(ca, small, work / "in.zip"))
        )
    if openssl_n is not None:
        openssl_dir = work / "openssl"
        script = write_openssl_script(openssl_dir, ca, hosts(openssl_n))
        # Also the openssl warm-up.
        check_openssl_output(script, openssl_dir / "check", ca, openssl_n)
        variants.append(
            Variant(
                "openssl",
                openssl_n,
                lambda: openssl_loop(script, openssl_dir / "out", timeout_s=timeout_s),
            )
        )
    samples = interleave(variants, rounds, warmup=warmup)

    label = f"{n:,} P-256"
    rows = [
        rate_row(
            f"issue-{kind}{suffix}",
            f"certctl cert issue --in ({label}, PEM to {where}) vs raw cryptography",
            samples,
            kind,
            "raw",
            n=n,
            reference_n=n,
            target=0.5,
        )
        for kind, where in (("zip", "zip"), ("dir", "directory"))
    ]
    # What creating the folders and files alone costs on this disk (no crypto, no sync).
    rows.append(
        rate_row(
            f"issue-dir{suffix}-vs-files",
            f"certctl cert issue --in ({label}, PEM to directory) vs creating the same folders "
            "and files in plain Python (the file-system floor)",
            samples,
            "dir",
            "files",
            n=n,
            reference_n=n,
            target=None,
        )
    )
    if not large:
        row = rate_row(
            "issue-inproc",
            f"certctl.cli.main.run in-process ({label}, zip) vs raw cryptography",
            samples,
            "inproc",
            "raw",
            n=n,
            reference_n=n,
            target=None,
        )
        # What interpreter start-up, imports and teardown add to one console-script run.
        row["startup_s"] = median(samples["zip"]) - median(samples["inproc"])
        rows.append(row)
    if openssl_n is not None:
        rows.append(
            rate_row(
                f"issue-zip{suffix}-vs-openssl",
                f"certctl cert issue --in ({label}, zip) vs an openssl loop "
                f"({openssl_n} certificates, scaled)",
                samples,
                "zip",
                "openssl",
                n=n,
                reference_n=openssl_n,
                target=30.0,
            )
        )
    return rows


def bench_help(rounds: int, timeout_s: float) -> dict[str, Any]:
    """``certctl --help`` wall time against ``python -c 'import cryptography.x509'``."""
    python = sys.executable
    variants = [
        Variant("help", 1, lambda: time_command([str(CERTCTL), "--help"], timeout_s=timeout_s)),
        Variant(
            "import",
            1,
            lambda: time_command([python, "-c", "import cryptography.x509"], timeout_s=timeout_s),
        ),
    ]
    samples = interleave(variants, rounds, warmup=variants)
    return time_row(
        "help",
        "certctl --help vs python -c 'import cryptography.x509' (wall time)",
        samples,
        "help",
        "import",
        target=2.0,
    )


def bench_inspect(
    work: Path, ca: BenchCA, n: int, rounds: int, timeout_s: float
) -> list[dict[str, Any]]:
    """``certctl inspect`` (readable and ``--json``) on a PEM bundle of ``n`` leaves.

    Reference: ``openssl storeutl -noout -text -certs``, which reads every certificate of
    the file and prints each in full (more text than certctl's summary).
    """
    bundle = write_bundle(work / f"bundle-{n}.pem", ca, hosts(n))
    variants = [
        Variant(
            "text",
            n,
            lambda: time_command([str(CERTCTL), "inspect", str(bundle)], timeout_s=timeout_s),
        ),
        Variant(
            "json",
            n,
            lambda: time_command(
                [str(CERTCTL), "inspect", "--json", str(bundle)], timeout_s=timeout_s
            ),
        ),
        Variant(
            "openssl",
            n,
            lambda: time_command(
                ["openssl", "storeutl", "-noout", "-text", "-certs", str(bundle)],
                timeout_s=timeout_s,
            ),
        ),
    ]
    samples = interleave(variants, rounds, warmup=variants)
    label = f"{n:,} P-256 leaves in one PEM file"
    rows = [
        time_row(
            row_id,
            f"certctl inspect{flag} ({label}) vs openssl storeutl -noout -text -certs (wall time)",
            samples,
            kind,
            "openssl",
            target=target,
        )
        for row_id, flag, kind, target in zip(
            INSPECT_ROWS, ("", " --json"), ("text", "json"), (1.5, None), strict=True
        )
    ]
    for row in rows:
        row["n"] = n
    return rows


def bench_crl(work: Path, ca: BenchCA, n: int, rounds: int, timeout_s: float) -> dict[str, Any]:
    """``certctl crl create --from`` a CRL of ``n`` entries, adding one serial.

    Reference: ``openssl ca -gencrl`` over an ``index.txt`` listing the same ``n`` + 1
    serials. Both sign the same list with the same key; both outputs are checked first.
    """
    previous = write_previous_crl(work / f"crl-{n}.pem", ca, n)
    config = write_openssl_ca(work / f"openssl-ca-{n}", ca, n)
    certctl_out, openssl_out = work / f"crl-{n}-certctl.pem", work / f"crl-{n}-openssl.pem"
    certctl_cmd = [
        str(CERTCTL), "crl", "create", "--ca", str(ca.directory), "--from", str(previous),
        "--revoked", new_serial(n), "--reason", "keyCompromise", "-o", str(certctl_out), "--force",
    ]  # fmt: skip
    openssl_cmd = ["openssl", "ca", "-config", str(config), "-gencrl", "-out", str(openssl_out)]
    variants = [
        Variant("certctl", n, lambda: time_command(certctl_cmd, timeout_s=timeout_s)),
        Variant("openssl", n, lambda: time_command(openssl_cmd, timeout_s=timeout_s)),
    ]
    for variant in variants:  # the warm-up run, checked
        variant.run()
    check_crl(certctl_out, ca, n)
    check_crl(openssl_out, ca, n)
    samples = interleave(variants, rounds)
    row = time_row(
        CRL_ROW,
        f"certctl crl create --from a CRL of {n:,} entries, plus one"
        " vs openssl ca -gencrl over the same list (wall time)",
        samples,
        "certctl",
        "openssl",
        target=None,
    )
    row["n"] = n
    return row


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms"
    if unit.endswith("/s"):
        return f"{value:,.0f} {unit}" if unit != "certs/s" else f"{value:,.0f}/s"
    return f"{value:,.2f} {unit}" if value < 10 else f"{value:,.0f} {unit}"


def _fmt_target(target: dict[str, Any] | None, unit: str) -> str:
    if not target:
        return "-"
    parts = []
    if "ratio" in target:
        parts.append(f"{target['op']} {target['ratio']:g}")
    if "limit" in target:
        limit = target["limit"]
        shown = f"{limit * 1000:g} ms" if unit == "s" else f"{limit:g} {unit.split()[0]}"
        parts.append(f"{target['limit_op']} {shown}")
    return ", ".join(parts)


def print_table(rows: list[dict[str, Any]], out: Callable[[str], None] = print) -> None:
    """Print one line per row: certctl, reference, median ratio [min-max], target, verdict."""
    header = ("row", "n", "certctl", "reference", "ratio [min-max]", "target", "ok")
    lines = [header]
    for row in rows:
        if "skipped" in row:
            lines.append((row["id"], "", "", "", "skipped", "", ""))
            continue
        target = row["target"]
        verdict = {True: "yes", False: "NO", None: "-"}[row["meets_target"]]
        lines.append(
            (
                row["id"],
                f"{row['n']:,}",
                _fmt(row["value"], row["unit"]),
                _fmt(row["reference_value"], row["unit"]),
                f"{row['ratio']:.2f} [{row['ratio_min']:.2f}-{row['ratio_max']:.2f}]",
                _fmt_target(target, row["unit"]),
                verdict,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        out("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            out("  ".join("-" * w for w in widths))
    for row in rows:
        out(f"  {row['id']}: {row.get('title', row.get('skipped', ''))}")
        if "startup_s" in row:
            out(f"    start-up + teardown of the console script: {row['startup_s']:.2f} s")
        if "cpu_share_of_core" in row:
            out(f"    every 10 s: {row['cpu_share_of_core'] * 100:.2f} % of one core")
        metrics = row.get("metrics")
        if metrics:
            out(
                "    "
                + "; ".join(
                    f"{name} {m['value']:,.4g} vs {m['reference']:,.4g}"
                    + (f" ({m['ratio']:.2f}x)" if m["ratio"] else "")
                    for name, m in metrics.items()
                )
            )


def _openssl_version() -> str | None:
    if shutil.which("openssl") is None:
        return None
    proc = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or None


def _preflight() -> None:
    if not CERTCTL.exists():
        raise BenchError(f"{CERTCTL}: not found (run 'make bench', which syncs the venv)")
    time_command([str(CERTCTL), "--version"], timeout_s=60)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print the table, write the JSON; 1 when a measured command fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny N, proves the harness (<60 s)")
    size.add_argument(
        "--full", action="store_true", help="more rounds, a larger openssl sample (~15 min)"
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="leave PYTHONDONTWRITEBYTECODE as it is (children may recompile on every start)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument(
        "--rows",
        choices=("all", "offline", "servers"),
        default="all",
        help="offline: the certctl CLI rows only; servers: the certctl serve rows only",
    )
    args = parser.parse_args(argv)
    plan = PLANS["quick" if args.quick else "full" if args.full else "default"]

    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    facts: dict[str, Any] = {}
    try:
        _preflight()
        with tempfile.TemporaryDirectory(prefix="certctl-bench-") as tmp:
            work = Path(tmp)
            if not args.no_bytecode_cache:
                set_bytecode_cache(str(work / "pycache"))
            ca = make_ca(work / "ca")
            if args.rows != "servers":
                rows += bench_offline(work, ca, plan)
            if args.rows != "offline":
                server_rows, facts = bench_servers(work, SERVER_PLANS[plan.mode])
                rows += server_rows
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    return _report(args, plan, rows, facts, started_utc, elapsed)


def bench_offline(work: Path, ca: BenchCA, plan: Plan) -> list[dict[str, Any]]:
    """The ``certctl cert issue``, ``--help`` and ``inspect`` rows."""
    check_certctl_zip(
        CERTCTL,
        ca,
        write_instances(work / "check.yml", hosts(3)),
        work / "check.zip",
        3,
    )
    rows = bench_issue(work, ca, plan.issue_n, plan.issue_rounds, plan.timeout_s)
    rows.append(bench_help(plan.help_rounds, plan.timeout_s))
    if plan.large_n is not None:
        has_openssl = shutil.which("openssl") is not None
        rows += bench_issue(
            work,
            ca,
            plan.large_n,
            plan.large_rounds,
            plan.timeout_s,
            large=True,
            openssl_n=plan.openssl_n if has_openssl else None,
        )
        if not has_openssl:
            rows += [
                {"id": row_id, "skipped": "no openssl"}
                for row_id in ("issue-zip-large-vs-openssl", *INSPECT_ROWS, CRL_ROW)
            ]
        else:
            rows += bench_inspect(work, ca, plan.large_n, plan.large_rounds, plan.timeout_s)
            rows.append(bench_crl(work, ca, plan.crl_n, plan.large_rounds, plan.timeout_s))
    return rows


def _report(
    args: argparse.Namespace,
    plan: Plan,
    rows: list[dict[str, Any]],
    facts: dict[str, Any],
    started_utc: str,
    elapsed: float,
) -> int:
    """Check, write the JSON, print the table; 1 when a value is not finite."""
    for row in rows:
        for key in ("value", "reference_value", "ratio"):
            if key in row and not math.isfinite(row[key]):
                print(f"bench: error: {row['id']}: {key} is not finite", file=sys.stderr)
                return 1
    result = {
        "schema": 1,
        "mode": plan.mode,
        "started_utc": started_utc,
        "elapsed_s": elapsed,
        "environment": {
            "python": sys.version.split()[0],
            "cryptography": _version("cryptography"),
            "certctl": _version("certctl"),
            "openssl": _openssl_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "bytecode_cache": not args.no_bytecode_cache,
        },
        "facts": facts,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"certctl bench ({plan.mode}), {elapsed:.0f} s; ratios are medians of paired rounds")
    print_table(rows)
    granian = facts.get("granian")
    if granian:
        shown = {k: v for k, v in granian.items() if k != "scope_extensions"}
        print(f"  granian checks: {json.dumps(shown)}")
    if plan.mode == "quick":
        print("--quick: N is tiny, start-up dominates; the verdicts say nothing about the targets")
    print(f"results: {args.json}")
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
