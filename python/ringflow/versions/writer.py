"""Background commits: the training loop pays only for a snapshot of the state.

Three kinds of snapshot (`BackgroundCommitter(snapshot=...)`):
  copy  (the default) `submit` copies every tensor, so the loop may go on
        changing its parameters at once, and hands the copy to a writer
        thread that hashes, writes, syncs and moves HEAD (hashing and file
        I/O release the GIL, so the thread runs beside the loop).  The loop
        waits for one copy of the state, into the previous snapshot's memory.
  fork  `submit` forks; the child commits the state as it was at the fork
        (copy-on-write, forked.py).  The loop waits for the fork (page
        tables, not bytes), but then pays a copy-on-write fault for every
        page it updates while the child still reads it: on the 2-vCPU VM of
        bench/RESULTS.md, 1 GiB forked in 36-105 ms against a 148-191 ms copy,
        and the next update of the state took 2.2-2.3 s longer.  For loops
        that commit rarely and must never be held long.  One forked commit is
        in flight at a time, which keeps the commits in submission order.
  overlap `submit` takes references; a thread copies them while the loop's
        next forward and backward run, and the loop waits for that copy only
        before it next writes the state (`attach(optimizer)`, or
        `wait_snapshot()`); a tensor written too early fails the commit
        instead of tearing it (overlapped.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future, wait

import torch

from .errors import StoreError
from .forked import commit_forked
from .overlapped import check_unchanged, references
from .store import Store

SNAPSHOTS = ("copy", "fork", "overlap")


def snapshot(state, into=None):
    """A deep copy of the tensors in a nested state (modules become their state_dict).

    `into`, an earlier snapshot of the same structure, is reused where shapes
    and dtypes match: copying into memory already faulted in is several times
    faster than into fresh pages, and that copy is all the training loop waits for.
    """
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    if isinstance(state, torch.Tensor):
        src = state.detach()
        if (isinstance(into, torch.Tensor) and into.shape == src.shape and into.dtype == src.dtype
                and into.device.type == "cpu"):
            return into.copy_(src)
        return src.to("cpu", copy=True)
    if isinstance(state, dict):
        other = into if isinstance(into, dict) else {}
        return {k: snapshot(v, other.get(k)) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        other = into if isinstance(into, type(state)) and len(into) == len(state) else [None] * len(state)
        return type(state)(snapshot(v, o) for v, o in zip(state, other))
    return state


class BackgroundCommitter:
    """Commits snapshots on a thread; at most `max_pending` commits wait to be written."""

    def __init__(self, store: Store, max_pending: int = 2, timeout_s: float = 600.0,
                 snapshot: str = "copy"):
        if snapshot not in SNAPSHOTS:
            raise ValueError(f"snapshot must be one of {', '.join(SNAPSHOTS)}, got {snapshot!r}")
        if snapshot == "fork" and not hasattr(os, "fork"):
            raise ValueError("snapshot='fork' needs os.fork, which this platform lacks")
        self.snapshot = snapshot
        self.store = store
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        self._queue: deque = deque()
        self._cv = threading.Condition()
        self._pending: deque[Future] = deque()
        self._closed = False
        self._free: list = []   # snapshots already written, reused as copy targets
        self.last_stall_s = 0.0   # the loop's wait in the last submit
        self.last_wait_s = 0.0    # overlap: its wait in the last wait_snapshot
        self._copied = threading.Event()   # overlap: the last submit's copy is done
        self._copied.set()
        # The writer thread serves copies; a forked commit writes in its child.
        self._thread = None
        if snapshot != "fork":
            self._thread = threading.Thread(target=self._run, name="ringflow-versions-writer",
                                            daemon=True)
            self._thread.start()

    def submit(self, state, **commit_kwargs) -> Future:
        """Snapshots `state` and returns a Future of the commit id (see Store.commit)."""
        t0 = time.perf_counter()
        if self.snapshot == "fork":
            while self._pending:  # one commit in flight: the commits stay in submission order
                self._wait(self._pending.popleft())
            if self._closed:
                raise StoreError("the background committer is closed")
            fut = commit_forked(self.store, state, self.timeout_s, **commit_kwargs)
            self._pending.append(fut)
            self.last_stall_s = time.perf_counter() - t0
            return fut
        while len(self._pending) >= self.max_pending:  # back-pressure, bounded memory
            self._wait(self._pending.popleft())
        if self.snapshot == "overlap":
            return self._submit_overlapped(state, commit_kwargs, t0)
        with self._cv:
            reuse = self._free.pop() if self._free else None
        snap = snapshot(state, reuse)
        rng = commit_kwargs.pop("rng", None)
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise StoreError("the background committer is closed")
            self._queue.append((snap, snapshot(rng), commit_kwargs, fut))
            self._pending.append(fut)
            self._cv.notify()
        self.last_stall_s = time.perf_counter() - t0
        return fut

    def _submit_overlapped(self, state, commit_kwargs: dict, t0: float) -> Future:
        self.wait_snapshot()  # one copy in flight: the commits stay in submission order
        refs, checks = references(state)
        rng = snapshot(commit_kwargs.pop("rng", None))
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise StoreError("the background committer is closed")
            self._pending.append(fut)
        self._copied = threading.Event()
        threading.Thread(target=self._copy, args=(refs, checks, rng, commit_kwargs, fut, self._copied),
                         name="ringflow-versions-snapshot", daemon=True).start()
        self.last_stall_s = time.perf_counter() - t0
        return fut

    def _copy(self, refs, checks, rng, kwargs: dict, fut: Future, copied: threading.Event) -> None:
        try:
            with self._cv:
                reuse = self._free.pop() if self._free else None
            snap = snapshot(refs, reuse)
            check_unchanged(checks)
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on it
            fut.set_exception(e)
            copied.set()
            return
        with self._cv:
            self._queue.append((snap, rng, kwargs, fut))
            self._cv.notify()
        copied.set()

    def wait_snapshot(self) -> None:
        """Overlap: waits until the last submitted state has been copied, so the
        loop may write it (a no-op for the other snapshot kinds)."""
        t0 = time.perf_counter()
        if not self._copied.wait(self.timeout_s):
            raise StoreError(f"the state's snapshot was not copied within {self.timeout_s:g} s")
        self.last_wait_s = time.perf_counter() - t0

    def attach(self, optimizer):
        """Makes `optimizer.step()` wait for the snapshot copy first; returns the hook's handle."""
        return optimizer.register_step_pre_hook(lambda *_: self.wait_snapshot())

    def _wait(self, fut: Future) -> None:
        """Waits for an earlier commit; its failure stays on its own Future."""
        if not wait([fut], timeout=self.timeout_s).done:
            raise StoreError(f"an earlier commit did not finish within {self.timeout_s:g} s")

    def flush(self) -> list[str]:
        """Waits for every pending commit; returns their ids (raises the first failure)."""
        ids = []
        while self._pending:
            ids.append(self._pending.popleft().result(timeout=self.timeout_s))
        return ids

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._cv:
                self._closed = True
                self._cv.notify()
            if self._thread is not None:
                self._thread.join(timeout=self.timeout_s)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                snap, rng, kwargs, fut = self._queue.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                cid = self.store.commit(snap, rng=rng, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits on it
                fut.set_exception(e)
                continue
            with self._cv:  # written: its memory may take the next snapshot
                self._free = [snap]
            fut.set_result(cid)
