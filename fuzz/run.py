"""Coverage-guided fuzzing of one certctl parser with atheris (libFuzzer).

Usage: ``python fuzz/run.py TARGET [libFuzzer flags] [CORPUS_DIR]`` — ``make fuzz`` runs every
target for ``FUZZ_SECONDS`` (default 60) with a corpus under ``fuzz/corpus/TARGET`` seeded
from ``fuzz.targets.seeds()``. A finding (any exception but a CertctlError) stops the run,
prints the traceback and leaves the input as ``crash-*`` in the working directory.
Targets: load_material, load_csr, parse_dn, san_parse, parse_duration, parse_instances,
parse_service_documents, load_config.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["certctl", "fuzz", "yaml"]):
    from fuzz.targets import TARGETS, run, seeds


def main() -> None:
    """Seed the corpus directory (if given) and hand over to libFuzzer."""
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: run.py {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus dir]")
    target = sys.argv.pop(1)
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    for directory in corpus[:1]:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds()[target]):
            (path / f"seed-{i}").write_bytes(seed)
    atheris.Setup(sys.argv, lambda data: run(target, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
