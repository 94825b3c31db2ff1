"""Child exit notification: per-child threads (ordinary process) or one reaper for all (PID 1).

Both give ``watch(pid) -> fd`` (readable once the child's status is known) and ``status(pid)``
(the raw wait status, once). The PID 1 reaper also reaps orphans, as an init must.
"""

from __future__ import annotations

import os
import threading


class ThreadWaiter:
    """waitpid(pid) in a thread per child; never touches other children (safe outside PID 1)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[int, int] = {}

    def watch(self, pid: int) -> int:
        r, w = os.pipe2(os.O_CLOEXEC)

        def wait() -> None:
            while True:
                try:
                    _, st = os.waitpid(pid, 0)
                    break
                except InterruptedError:
                    continue
                except ChildProcessError:
                    st = 255 << 8
                    break
            with self._lock:
                self._done[pid] = st
            os.write(w, b"x")
            os.close(w)

        threading.Thread(target=wait, name=f"wait-{pid}", daemon=True).start()
        return r

    def status(self, pid: int) -> int:
        with self._lock:
            return self._done.pop(pid)


class Reaper:
    """PID 1: one thread reaps every child; statuses of watched pids are kept for their session."""

    MAX_ORPHANS = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[int, int] = {}
        self._pipes: dict[int, int] = {}
        self._kick = threading.Event()
        threading.Thread(target=self._run, name="reaper", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                pid, st = os.waitpid(-1, 0)
            except ChildProcessError:  # no children now: wait for a spawn (or re-check orphans)
                self._kick.wait(0.5)
                self._kick.clear()
                continue
            except InterruptedError:
                continue
            with self._lock:
                w = self._pipes.pop(pid, None)
                if w is None and len(self._done) >= self.MAX_ORPHANS:
                    self._done.clear()  # unclaimed orphans: nobody asks for them
                self._done[pid] = st
            if w is not None:
                os.write(w, b"x")
                os.close(w)

    def watch(self, pid: int) -> int:
        r, w = os.pipe2(os.O_CLOEXEC)
        with self._lock:
            if pid in self._done:  # reaped before we asked
                os.write(w, b"x")
                os.close(w)
            else:
                self._pipes[pid] = w
        self._kick.set()
        return r

    def status(self, pid: int) -> int:
        with self._lock:
            return self._done.pop(pid)
