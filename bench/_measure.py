"""Interleaved timing: every variant of a group runs once per round, order rotating each round."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "BenchError",
    "Variant",
    "child_env",
    "interleave",
    "median",
    "set_bytecode_cache",
    "time_command",
]

_PYCACHE_PREFIX: str | None = None


def set_bytecode_cache(directory: str | None) -> None:
    """Give child Pythons a private bytecode cache (``PYTHONPYCACHEPREFIX``).

    Installed programs run from cached ``.pyc`` files; a shell with
    ``PYTHONDONTWRITEBYTECODE=1`` would instead recompile every module on every start and
    charge that to start-up. A prefix keeps the cache out of the source tree and the venv.
    """
    global _PYCACHE_PREFIX
    _PYCACHE_PREFIX = directory


def child_env() -> dict[str, str]:
    """The environment every timed child process gets."""
    env = os.environ.copy()
    # Knobs that would change what certctl does or prints.
    for name in ("CERTCTL_DEBUG", "PYTHONPROFILEIMPORTTIME", "PYTHONDEVMODE", "PYTHONWARNINGS"):
        env.pop(name, None)
    if _PYCACHE_PREFIX is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = _PYCACHE_PREFIX
    return env


class BenchError(RuntimeError):
    """A measured command failed: the benchmark result would be meaningless."""


T = TypeVar("T")


@dataclass(frozen=True)
class Variant(Generic[T]):
    """One thing to time: ``run()`` does ``n`` units of work and returns its measurement.

    Offline rows return wall seconds; server rows return a ``_servers.Load``.
    """

    name: str
    n: int
    run: Callable[[], T]


def time_command(
    cmd: Sequence[str], *, timeout_s: float, env: dict[str, str] | None = None
) -> float:
    """Run ``cmd`` (stdout discarded, stderr kept for errors) and return its wall seconds.

    Start-up is included on purpose: it is part of what a user waits for.
    """
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout_s,
            env=env if env is not None else child_env(),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{cmd[0]}: timed out after {timeout_s:.0f} s") from exc
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise BenchError(f"{' '.join(cmd)}: exit {proc.returncode}\n{tail}")
    return elapsed


def interleave(
    variants: Sequence[Variant[T]], rounds: int, *, warmup: Sequence[Variant[T]] = ()
) -> dict[str, list[T]]:
    """Run each variant once per round (A, B, C, B, C, A, …); return its results in order.

    Rotating the order keeps any one variant from always running first (cold caches) or last
    (a machine that slows down over the run). ``warmup`` variants run once, untimed, before.
    """
    for variant in warmup:
        variant.run()
    samples: dict[str, list[T]] = {v.name: [] for v in variants}
    for index in range(rounds):
        shift = index % len(variants)
        for variant in [*variants[shift:], *variants[:shift]]:
            samples[variant.name].append(variant.run())
    return samples


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (which must not be empty)."""
    return float(statistics.median(values))
