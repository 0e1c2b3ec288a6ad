"""Run a function over many argument tuples in worker processes, each call under a hard wall-clock limit.

Why processes: sympy can hang (or eat memory) on adversarial answers, and the usual guard,
signal.alarm, only works on the main thread — a Ray actor method runs elsewhere. Here the parent
never computes anything itself: it hands one call at a time to each process over a pipe and waits
on all pipes with a deadline. A process that overruns is killed and replaced (the replacement
starts in the background, so no other call waits for it); one that dies (a segfault) is replaced too. The call is reported as timed out or crashed, every
other call of the batch goes on, and the pool keeps its size.

Processes come from a forkserver that has already imported the function's module, so a replacement
starts in milliseconds and never inherits the threads of a Ray worker (plain fork would).
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import resource
import signal
import sys
import time
import types
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator, Sequence


_POLL_S = 0.02  # how often the loop looks for a finished background start
_NICE = 10  # verifier processes yield the CPU to their owner


@dataclass(frozen=True)
class Outcome:
    """One call's result. `value` is None unless the call returned; `error` holds a raised exception's repr."""

    value: Any = None
    timed_out: bool = False
    crashed: bool = False
    error: str | None = None
    seconds: float = 0.0


@dataclass
class _Process:
    proc: Any
    conn: Connection
    ready: bool = False


def _serve(conn: Connection, fn: Callable, memory_mb: int) -> None:
    """Worker loop: announce readiness, then answer `args` tuples with `(ok, value_or_repr)`."""
    limit = memory_mb * 2**20
    # Address-space cap: a huge integer raises MemoryError here instead of swapping the machine.
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # A worker stuck in sympy must not outlive a killed owner (a Ray actor) and spin on a core
    # forever. The forkserver exits once its owner is gone, unless a worker still holds the
    # "owner alive" pipe that multiprocessing hands every child: drop it, then die with the server.
    server = getattr(forkserver, "_forkserver", None)
    if getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    # A hung check spins a core; at normal priority it would delay the very loop that must kill it
    # on time (seen: seconds of lateness on a loaded 2-core machine). The owner stays at its priority.
    os.nice(_NICE)
    conn.send("ready")
    while True:
        try:
            args = conn.recv()
        except EOFError:
            return
        try:
            reply = (True, fn(*args))
        except BaseException as err:  # noqa: BLE001 - anything raised is this call's result, not the loop's end
            reply = (False, repr(err)[:500])
        conn.send(reply)


@contextmanager
def _bare_main() -> Iterator[None]:
    """Hide `__main__` while a process starts. multiprocessing re-runs the parent's main module in
    every child (in case the target was defined there); ours is importable, and re-running the
    main of a CLI or a Ray worker (datasets, ray...) costs seconds per replacement under load."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class Sandbox:
    """`processes` workers running `fn` (a module-level function); see the module docstring.

    Use as a context manager or call `close()`; counters in `stats()` feed the metrics."""

    def __init__(self, fn: Callable, processes: int, timeout_s: float, memory_mb: int = 2048):
        self._fn, self._timeout, self._memory_mb = fn, timeout_s, memory_mb
        self._ctx = mp.get_context("forkserver")
        # Only takes effect if this interpreter's forkserver is not running yet; otherwise the
        # module is imported in each worker instead (slower start, same behaviour).
        self._ctx.set_forkserver_preload([fn.__module__])
        self._dying: list[Any] = []  # killed processes not yet reaped
        self._starter = ThreadPoolExecutor(1, thread_name_prefix="sandbox-start")
        self._pool: list[_Process | Future] = [self._start() for _ in range(processes)]
        self._counts = {"calls": 0, "timeouts": 0, "crashes": 0, "errors": 0, "restarts": 0}
        self._max_seconds = 0.0
        self._await_ready(range(processes))

    def map(self, calls: Sequence[tuple]) -> list[Outcome]:
        """`fn(*args)` for each tuple in `calls`, in order; never raises for a single call's failure."""
        results: list[Outcome | None] = [None] * len(calls)
        queue = deque(range(len(calls)))
        running: dict[int, tuple[int, float]] = {}  # pool slot -> (call index, start time)
        while queue or running:
            self._settle()
            for slot, worker in enumerate(self._pool):
                if queue and isinstance(worker, _Process) and worker.ready and slot not in running:
                    index = queue.popleft()
                    try:
                        worker.conn.send(calls[index])
                    except OSError:  # it died while idle (the OOM killer): not this call's fault
                        queue.appendleft(index)
                        self._replace(slot)
                        continue
                    running[slot] = index, time.monotonic()
            procs = [(slot, w) for slot, w in enumerate(self._pool) if isinstance(w, _Process)]
            waiting = [w.conn for slot, w in procs if not w.ready or slot in running]
            deadline = min((start + self._timeout for _, start in running.values()), default=None)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if len(procs) < len(self._pool):  # a replacement is starting: look again soon
                timeout = _POLL_S if timeout is None else min(timeout, _POLL_S)
            ready = set(wait(waiting, timeout))
            for slot, worker in procs:
                if worker.conn in ready and slot not in running:
                    self._on_ready(slot)
            for slot, (index, start) in list(running.items()):
                worker, now = self._pool[slot], time.monotonic()
                if worker.conn in ready:
                    results[index] = self._receive(slot, now - start)
                elif now >= start + self._timeout:
                    self._counts["timeouts"] += 1
                    results[index] = Outcome(timed_out=True, seconds=now - start)
                    self._replace(slot)
                else:
                    continue
                self._max_seconds = max(self._max_seconds, results[index].seconds)
                del running[slot]
        self._counts["calls"] += len(calls)
        self._settle(block=True)
        self._reap()
        return results  # type: ignore[return-value]  # every index was filled above

    def stats(self) -> dict[str, float]:
        """Counters since start: calls, timeouts, crashes, errors, restarts, max_call_s, alive processes."""
        self._settle(block=True)
        alive = sum(w.proc.is_alive() for w in self._pool)
        return {**self._counts, "max_call_s": self._max_seconds, "alive": alive}

    def pids(self) -> list[int]:
        """Process ids of the current verifier processes (for monitoring and tests)."""
        self._settle(block=True)
        return [w.proc.pid for w in self._pool]

    def close(self) -> None:
        self._settle(block=True)
        self._starter.shutdown()
        for worker in self._pool:
            worker.proc.kill()
            worker.conn.close()
            self._dying.append(worker.proc)
        self._pool = []
        self._reap(block=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_pool", None):
            try:
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown: the daemon processes die with us
                pass

    def _start(self) -> _Process:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child, self._fn, self._memory_mb), daemon=True)
        with _bare_main():
            proc.start()
        child.close()
        return _Process(proc, parent)

    def _await_ready(self, slots: Iterable[int]) -> None:
        for slot in slots:
            worker = self._pool[slot]
            if worker.ready:
                continue
            if not worker.conn.poll(60):
                raise RuntimeError(f"verifier process {worker.proc.pid} did not start within 60 s")
            self._on_ready(slot)

    def _on_ready(self, slot: int) -> None:
        """A starting process said hello. One that dies first is a setup problem (an import error,
        no memory left), not a bad answer: retrying would loop, so raise."""
        worker = self._pool[slot]
        try:
            worker.conn.recv()
        except EOFError:
            raise RuntimeError(
                f"verifier process {worker.proc.pid} died on start (exit code {worker.proc.exitcode})"
            ) from None
        worker.ready = True

    def _receive(self, slot: int, seconds: float) -> Outcome:
        try:
            ok, value = self._pool[slot].conn.recv()
        except (EOFError, OSError):
            self._counts["crashes"] += 1
            self._replace(slot)
            return Outcome(crashed=True, seconds=seconds)
        if not ok:
            self._counts["errors"] += 1
            return Outcome(error=value, seconds=seconds)
        return Outcome(value=value, seconds=seconds)

    def _replace(self, slot: int) -> None:
        # Kill without waiting: tearing down a process that grabbed gigabytes can take seconds
        # under load, and every other running call's deadline would wait with it. Reaped later.
        old = self._pool[slot]
        old.proc.kill()
        old.conn.close()
        self._dying.append(old.proc)
        self._counts["restarts"] += 1
        # Started on a helper thread: the forkserver answers in milliseconds, but under load it can
        # take a second or more, and running calls past their deadline must not wait for it.
        self._pool[slot] = self._starter.submit(self._start)

    def _settle(self, block: bool = False) -> None:
        """Put processes whose background start has finished (all of them, with `block`) in their slots."""
        for slot, entry in enumerate(self._pool):
            if isinstance(entry, Future) and (block or entry.done()):
                self._pool[slot] = entry.result()
                if block:
                    self._await_ready([slot])

    def _reap(self, block: bool = False) -> None:
        for proc in self._dying:
            proc.join(None if block else 0)
        self._dying = [proc for proc in self._dying if proc.exitcode is None]

