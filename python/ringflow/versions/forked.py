"""A commit written by a forked child: fork() is the snapshot.

The child sees the parent's memory as it was at the fork, copy-on-write, so
the training loop is held only for the fork itself (copying page tables, not
the state) and may change its parameters at once: the kernel copies each
page the parent writes before the child has read it.  The child hashes,
writes and syncs with Store.commit, reports the commit id on a pipe, and
leaves with os._exit (no atexit handlers, so nothing of the parent's --
process groups, sockets, shared memory -- is closed or announced by it).

The child runs torch on one thread, as DataLoader workers do: a parallel
region of the parent's OpenMP pool does not exist in the child.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
import warnings
from concurrent.futures import Future

from .errors import StoreError
from .store import Store


def _child(store: Store, state, kwargs: dict, w: int) -> None:
    code = 1
    try:
        import torch

        torch.set_num_threads(1)
        msg = {"id": store.commit(state, **kwargs)}
        code = 0
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        msg = {"error": f"{type(e).__name__}: {e}"}
    try:
        os.write(w, json.dumps(msg).encode())
    finally:
        os._exit(code)


def _reap(pid: int, r: int, fut: Future, timeout_s: float) -> None:
    """Reads the child's report, waits for it, and settles `fut`."""
    chunks, deadline = [], time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise StoreError(f"the commit process {pid} did not finish within {timeout_s:g} s (killed)")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except BaseException as e:  # noqa: BLE001
        fut.set_exception(e)
        return
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks) or b"{}")
    if "id" in report:
        fut.set_result(report["id"])
    elif "error" in report:
        fut.set_exception(StoreError(f"commit failed in the commit process: {report['error']}"))
    else:
        how = (f"signal {-os.waitstatus_to_exitcode(status)}" if os.WIFSIGNALED(status)
               else f"exit code {os.waitstatus_to_exitcode(status)}")
        fut.set_exception(StoreError(f"the commit process {pid} died ({how}) before the commit was durable"))


def commit_forked(store: Store, state, timeout_s: float, **kwargs) -> Future:
    """Forks; the child commits `state` as it is now.  Returns a Future of the
    commit id (StoreError if the child fails, dies or overruns `timeout_s`)."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns on fork() in a threaded process: the child here
        # runs only the store's code and torch on one thread (see above).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(store, state, kwargs, w)
    os.close(w)
    fut: Future = Future()
    fut.set_running_or_notify_cancel()
    threading.Thread(target=_reap, args=(pid, r, fut, timeout_s), name=f"ringflow-commit-{pid}",
                     daemon=True).start()
    return fut
