"""pkilint's command-line linters, run as a user runs them, many files at once.

Each ``lint_*`` program lints one document (or one issuer/subject pair), prints JSON with
``-f JSON`` and exits with the number of findings at or above ``-s``: the count is checked
against what it printed, so a crash or an unreadable file (exit 1, no JSON) fails the test
instead of reading as one finding.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests._tools import reaped, require

__all__ = ["Finding", "lint_each"]

# (severity, code): what a test asserts on; the message is printed, not compared.
Finding = tuple[str, str]


def lint_each(
    tool: str, documents: Mapping[str, Sequence[Path]], severity: str = "INFO"
) -> dict[str, list[Finding]]:
    """``tool lint -s severity -f JSON FILES`` for every entry of ``documents`` at once.

    ``documents`` maps a label to the program's positional files (one OCSP response or
    certificate; an issuer and a subject for the chain linter). Returns each label's
    findings, sorted. The default ``INFO`` reports every finding but DEBUG ones.
    """
    program = require(tool)
    procs = {
        label: subprocess.Popen(
            [program, "lint", "-s", severity, "-f", "JSON", *map(str, files)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for label, files in documents.items()
    }
    found: dict[str, list[Finding]] = {}
    with reaped(procs.values()):
        for label, proc in procs.items():
            out, err = proc.communicate(timeout=60)
            assert out, f"{tool} {label}: exit {proc.returncode}, no output: {err}"
            descriptions = [
                d for r in json.loads(out)["results"] for d in r["finding_descriptions"]
            ]
            for d in descriptions:
                print(f"{tool} {label}: {d['severity']} {d['code']} {d.get('message') or ''}")
            # Exit code = findings reported (pkilint clamps it at 255: never reached here).
            assert proc.returncode == len(descriptions), (label, proc.returncode, err)
            found[label] = sorted((d["severity"], d["code"]) for d in descriptions)
    return found
