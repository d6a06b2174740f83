"""Forked worker processes for CPU-bound batches, with results streamed back over pipes.

Why not :mod:`concurrent.futures`: importing ``ProcessPoolExecutor`` (multiprocessing, its
queues, threads and pickling machinery) cost ~40 ms of a ~0.5 s ``certctl cert issue --in``
run, and its result thread added a hop per chunk. Here the tasks are chunk numbers written
into one pipe before ``fork()``; every worker reads the next number when it is free (the
kernel hands each 4-byte read to one reader), so a core slowed by a neighbour takes fewer
chunks. Each worker sends length-prefixed pickles back on its own pipe. Everything a task
reads (the loaded CA key included) is inherited through ``fork()``, never serialised.
"""

from __future__ import annotations

import gc
import os
import pickle
import select
import signal
import struct
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["MAX_TASKS", "WorkerLost", "fork_map"]

T = TypeVar("T")

_TASK = struct.Struct("<I")
_FRAME = struct.Struct("<Q")
# All task numbers are written before any worker starts, so they must fit in the pipe
# buffer (64 KiB on Linux): callers size chunks to stay under this many tasks.
MAX_TASKS = 4096
_READ_SIZE = 1 << 20
# A bigger result pipe lets a worker hand over a whole chunk without waiting for the parent.
_PIPE_SIZE = 1 << 20


class WorkerLost(RuntimeError):
    """A worker process ended without returning its results (killed, out of memory)."""


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (shown with CERTCTL_DEBUG=1)."""

    def __str__(self) -> str:
        return str(self.args[0])


def fork_map(func: Callable[[int], T], count: int, workers: int) -> Iterator[T]:
    """Yield ``func(0)``, ``func(1)``, … ``func(count - 1)`` in order, run by forked workers.

    An exception raised by ``func(i)`` is re-raised here once the results before ``i`` have
    been yielded, as a serial loop would; its worker stops. Close the iterator (or let it
    finish) to stop and reap every worker: it is a generator with a ``finally``.

    Raises:
        WorkerLost: a worker died before sending every result it took.
        ValueError: ``count`` exceeds :data:`MAX_TASKS`.
    """
    if count > MAX_TASKS:
        raise ValueError(f"{count} tasks: at most {MAX_TASKS}")
    tasks_r, tasks_w = os.pipe()
    readers: dict[int, bytearray] = {}
    pids: list[int] = []
    parent = os.getpid()
    finished = False
    try:
        os.write(tasks_w, b"".join(_TASK.pack(i) for i in range(count)))
        # Objects that exist now are never collected by the workers: freezing them keeps the
        # collector from touching (and so copying) the pages they share with the parent.
        gc.freeze()
        for _ in range(workers):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child; coverage does not follow
                _child(func, tasks_r, tasks_w, read_fd, write_fd, readers, parent)
            os.close(write_fd)
            pids.append(pid)
            readers[read_fd] = bytearray()
        gc.unfreeze()
        os.close(tasks_w)
        tasks_w = -1
        yield from _collect(readers, count)
        finished = True
    finally:
        gc.unfreeze()
        for fd in (tasks_r, tasks_w, *readers):
            if fd >= 0:
                os.close(fd)
        _reap(pids, stop=not finished)


def _child(
    func: Callable[[int], T],
    tasks_r: int,
    tasks_w: int,
    read_fd: int,
    write_fd: int,
    siblings: dict[int, bytearray],
    parent: int,
) -> None:  # pragma: no cover - runs in the child
    code = 1
    try:
        _end_with_parent(parent)
        # Only the parent may hold the task pipe's write end, or no worker ever sees EOF.
        os.close(tasks_w)
        os.close(read_fd)
        for fd in siblings:
            os.close(fd)
        try:
            import fcntl

            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except (ImportError, AttributeError, OSError):
            pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default still works
        _serve(func, tasks_r, write_fd)
        code = 0
    except BaseException:
        pass  # KeyboardInterrupt or a broken pipe: the parent is already failing
    finally:
        # Never return into the parent's stack (its finally blocks, atexit, buffered stdout).
        os._exit(code)


def _end_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child
    """Have the kernel kill this worker when the parent dies (Linux; elsewhere a no-op)."""
    # A parent ended by SIGTERM (`kill PID`) or SIGKILL (the OOM killer) runs no finally, so
    # _reap never stops its workers: they went on signing the rest of their chunk, orphaned,
    # minutes of CPU with RSA-4096 keys, until their first write to the closed pipe failed.
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # no prctl in this libc: the closed pipe still ends the worker, later
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was set: nothing would send it


def _serve(func: Callable[[int], T], tasks_r: int, out: int) -> None:  # pragma: no cover
    while True:
        raw = os.read(tasks_r, _TASK.size)
        if not raw:
            return  # every task is taken
        (index,) = _TASK.unpack(raw)
        try:
            payload = pickle.dumps((index, True, func(index)), pickle.HIGHEST_PROTOCOL)
            failed = False
        except Exception as exc:
            payload = _error_payload(index, exc)
            failed = True
        _write_all(out, _FRAME.pack(len(payload)) + payload)
        if failed:
            return


def _error_payload(index: int, exc: Exception) -> bytes:  # pragma: no cover - in the child
    import traceback

    trace = "".join(traceback.format_exception(exc))
    try:
        return pickle.dumps((index, False, (exc, trace)), pickle.HIGHEST_PROTOCOL)
    except Exception:  # an exception that does not pickle still gets its message across
        stand_in = RuntimeError(f"{type(exc).__name__}: {exc}")
        return pickle.dumps((index, False, (stand_in, trace)), pickle.HIGHEST_PROTOCOL)


def _write_all(fd: int, data: bytes) -> None:  # pragma: no cover - in the child
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _collect(readers: dict[int, bytearray], count: int) -> Iterator[T]:
    done: dict[int, tuple[bool, Any]] = {}
    open_fds = list(readers)
    next_index = 0
    while next_index < count:
        while next_index in done:
            ok, value = done.pop(next_index)
            if not ok:
                exc, trace = value
                exc.__cause__ = _RemoteTraceback(trace)
                raise exc
            yield value
            next_index += 1
        if next_index >= count:
            return
        if not open_fds:
            raise WorkerLost(
                "a worker process ended before returning its certificates "
                "(killed, or out of memory?)"
            )
        ready, _, _ = select.select(open_fds, [], [])
        for fd in ready:
            data = os.read(fd, _READ_SIZE)
            if not data:
                open_fds.remove(fd)
                continue
            buffer = readers[fd]
            buffer += data
            while len(buffer) >= _FRAME.size:
                (size,) = _FRAME.unpack_from(buffer)
                end = _FRAME.size + size
                if len(buffer) < end:
                    break
                index, ok, value = pickle.loads(buffer[_FRAME.size : end])
                del buffer[:end]
                done[index] = (ok, value)


def _reap(pids: list[int], *, stop: bool) -> None:
    for pid in pids:
        try:
            # After a failure the other workers are mid-task: stop them rather than wait.
            # A pid stays ours until waitpid() reaps it, so the signal cannot hit a stranger.
            if stop and os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
