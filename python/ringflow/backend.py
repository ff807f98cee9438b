"""The torch.distributed adapter: a Python ProcessGroup named "ringflow".

The only module that touches torch's distributed internals.  Tensors cross
into the C++ core as (address, element count, dtype code), staged through
contiguous CPU memory where they are not already (staging.py).
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from . import _C
from . import timeline as _timeline
from ._dtypes import REDUCE_OP_CODE, torch_dtype_code
from .rendezvous import Communicator, close_all
from .staging import Staged, check_dense, check_output, flatten, in_place, unflatten
from .tune import tuner as _tuner

# Keyed by the enum value (ReduceOp.RedOpType), hashable, so a lookup is one
# dict access; the options carry a ReduceOp object whose .op is that value.
_REDUCE_OPS = {
    dist.ReduceOp.SUM: REDUCE_OP_CODE["sum"],
    dist.ReduceOp.PRODUCT: REDUCE_OP_CODE["product"],
    dist.ReduceOp.MIN: REDUCE_OP_CODE["min"],
    dist.ReduceOp.MAX: REDUCE_OP_CODE["max"],
    dist.ReduceOp.AVG: REDUCE_OP_CODE["avg"],
    dist.ReduceOp.BAND: REDUCE_OP_CODE["band"],
    dist.ReduceOp.BOR: REDUCE_OP_CODE["bor"],
    dist.ReduceOp.BXOR: REDUCE_OP_CODE["bxor"],
}
_SUM = REDUCE_OP_CODE["sum"]
_SUM_OP = dist.ReduceOp.SUM


def _op_code(op) -> int:
    # Comparing with SUM costs a fraction of hashing the enum for the lookup,
    # and SUM is nearly every call.
    if op == _SUM_OP:
        return _SUM
    code = _REDUCE_OPS.get(getattr(op, "op", op))
    if code is None:
        raise ValueError(f"ringflow does not support reduce op {op} (PREMUL_SUM is not implemented)")
    return code


def _blocking(opts) -> bool:
    """torch waits on the Work at once (async_op=False): the core may then run
    a small call on this thread before returning."""
    return opts is not None and not getattr(opts, "asyncOp", True)


def _one(tensors, what: str) -> torch.Tensor:
    if len(tensors) != 1:
        raise ValueError(f"ringflow {what} takes exactly one tensor per call, got {len(tensors)}")
    return tensors[0]


class Work(dist.Work):
    """Wraps the core's Work; runs the copy-back once, on wait or completion."""

    def __init__(self, pg: "ProcessGroup", core_works, result, finish=None, keep=()):
        super().__init__()
        self._pg = pg
        self._core = list(core_works)
        self._result = result
        self._finish = finish
        self._keep = keep  # tensors the core reads or writes until done
        self._lock = threading.Lock()
        self._done = False
        self._error: BaseException | None = None
        # RINGFLOW_TIMELINE: one attribute test when it is off.
        if _timeline.ACTIVE is not None and self._core:
            _timeline.ACTIVE.collective(self._core, pg.rank())

    def _complete(self) -> None:
        with self._lock:
            if self._done:
                return
            try:
                for w in self._core:
                    w.wait()
                if self._finish is not None:
                    self._finish()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                self._error = e
            self._done = True
            self._keep = None

    def wait(self, timeout: timedelta | None = None) -> bool:
        if timeout is not None and timeout.total_seconds() > 0:
            for w in self._core:
                if not w.wait(timeout.total_seconds()):
                    raise _C.TimeoutError(f"{w.what}: wait() gave up after {timeout}")
        self._complete()
        if self._error is not None:
            raise self._error
        return True

    def is_completed(self) -> bool:
        if not self._done and all(w.is_completed() for w in self._core):
            self._complete()
        return self._done

    def is_success(self) -> bool:
        return self.is_completed() and self._error is None

    def exception(self):
        return self._error

    def result(self):
        self.wait()
        return self._result

    def get_future(self) -> torch.futures.Future:
        # Torch crashes when DDP's future carries an exception, so the raw
        # future carries the error as its value and a then() re-raises it.
        raw = torch.futures.Future()
        if threading.current_thread().name == "ringflow-futures":
            # Asked from a then-callback the completer thread is running
            # (PowerSGD's hook waits on a new allreduce there): queued behind
            # that callback it could never complete, so complete it here.
            self._complete()
        if self.is_completed():
            raw.set_result(self._error if self._error is not None else self._result)
        else:
            self._pg._completer.put((self, raw))
        return raw.then(_unwrap)

    def synchronize(self) -> None:
        self.wait()

    def _source_rank(self) -> int:
        """The sender of a receive (torch asks after recv from any source)."""
        self.wait()
        return self._core[0].source if self._core else -1


class _Finished(dist.Work):
    """The Work of a blocking call that the core ran to completion, without
    error, before returning (a small call run inline).  torch waits on it at
    once and drops it, so one instance per group serves every such call:
    building a Work per call (torch's C++ Work, its Python object, a lock) is
    a measurable share of a 4 KiB allreduce after computation, when every
    path it touches is cold.  It holds its last call's tensor weakly: the
    caller's memory (a shared buffer, say) is freed when the caller drops it."""

    def __init__(self):
        super().__init__()
        self._tensor: weakref.ref | None = None

    def wait(self, timeout: timedelta | None = None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True

    def is_success(self) -> bool:
        return True

    def exception(self):
        return None

    def result(self):
        t = self._tensor() if self._tensor is not None else None
        return [] if t is None else [t]

    def get_future(self) -> torch.futures.Future:
        fut = torch.futures.Future()
        fut.set_result(self.result())
        return fut

    def synchronize(self) -> None:
        pass


def _unwrap(fut):
    value = fut.value()
    if isinstance(value, BaseException):
        raise value
    return value


class ProcessGroup(dist.ProcessGroup):
    """ringflow as a torch.distributed process group (CPU tensors; CUDA
    tensors are staged through host memory)."""

    def __init__(self, store, rank: int, size: int, timeout: timedelta):
        super().__init__(rank, size)
        self._comm_owner = Communicator(store, rank, size, timeout.total_seconds())
        self._comm = self._comm_owner.comm
        _tuner.at_init(self._comm_owner)  # RINGFLOW_TUNE, RINGFLOW_DETERMINISTIC
        self._group_name = ""
        self._group_desc = ""
        self._finished = _Finished()
        self._completer: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_complete_futures, args=(self._completer,), daemon=True,
                         name="ringflow-futures").start()
        weakref.finalize(self, _shutdown, self._comm_owner, self._completer)

    # -- identity ------------------------------------------------------------
    def name(self) -> str:
        return "ringflow"

    def getBackendName(self) -> str:  # noqa: N802 - torch's spelling
        return "ringflow"

    def _set_group_name(self, name: str) -> None:
        self._group_name = name

    def _set_group_desc(self, desc: str) -> None:
        self._group_desc = desc

    @property
    def group_name(self) -> str:
        return self._group_name

    @property
    def group_desc(self) -> str:
        return self._group_desc

    def shutdown(self) -> None:
        _shutdown(self._comm_owner, self._completer)

    # -- helpers -------------------------------------------------------------
    def _work(self, core_works, result, staged=(), finish=None, keep=()):
        def done():
            for s in staged:
                s.finish()
            if finish is not None:
                finish()

        return Work(self, core_works, result, done, (tuple(staged), keep))

    def _done_work(self, core, tensors):
        """The shared finished Work when the core already ran the call (and
        no timeline records it); otherwise a Work that waits on it."""
        if core.succeeded and _timeline.ACTIVE is None:
            self._finished._tensor = weakref.ref(tensors[0]) if tensors else None
            return self._finished
        return Work(self, (core,), tensors)

    # -- collectives -----------------------------------------------------------
    def _coalesced(self, single, outputs, inputs, opts):
        """One Work over several single-tensor calls, in order."""
        works = [single(o, i, opts) for o, i in zip(outputs, inputs)]
        return self._work([], outputs, finish=lambda: [w.wait() for w in works], keep=works)

    def allreduce(self, tensors, opts=None):
        # The hot path of small blocking calls: a few Python steps here cost
        # as much as the core's whole call, so the common case (a contiguous
        # CPU tensor) skips staging and the finish closure.  With blocking
        # (async_op=False) the core may run the call before returning.
        t = _one(tensors, "allreduce")
        if opts is None:
            op, blocking = _SUM, False
        else:
            op, blocking = _op_code(opts.reduceOp), not opts.asyncOp  # _blocking(), inlined
        if in_place(t):
            core = self._comm.allreduce(t.data_ptr(), t.numel(), torch_dtype_code(t.dtype), op, blocking)
            if blocking:
                return self._done_work(core, tensors)
            return Work(self, (core,), tensors)
        s = Staged(t, write_back=True)
        return self._work([self._comm.allreduce(s.ptr, s.count, s.code, op, blocking)], tensors, [s])

    def allreduce_coalesced(self, tensors, opts=None):
        op = _op_code(opts.reduceOp if opts is not None else dist.ReduceOp.SUM)
        works, staged = [], []
        for t in tensors:
            s = Staged(t, write_back=True)
            staged.append(s)
            works.append(self._comm.allreduce(s.ptr, s.count, s.code, op))
        return self._work(works, tensors, staged)

    def broadcast(self, tensors, opts):
        t = Staged(_one(tensors, "broadcast"), write_back=True)
        w = self._comm.broadcast(t.ptr, t.count, t.code, opts.rootRank, _blocking(opts))
        return self._work([w], tensors, [t])

    def reduce(self, tensors, opts):
        t = Staged(_one(tensors, "reduce"), write_back=True)
        w = self._comm.reduce(t.ptr, t.count, t.code, opts.rootRank, _op_code(opts.reduceOp), _blocking(opts))
        return self._work([w], tensors, [t])

    def allgather(self, output_lists, input_tensors, opts=None):
        inp = Staged(_one(input_tensors, "allgather"), write_back=False)
        outs = _one(output_lists, "allgather")
        self._check_list(outs, inp.tensor, "allgather output", output=True)
        flat = torch.empty(self.size() * inp.count, dtype=inp.buf.dtype)
        w = self._comm.allgather(inp.ptr, inp.count, flat.data_ptr(), inp.code, _blocking(opts))
        return self._work([w], output_lists, [inp], lambda: unflatten(flat, outs), keep=flat)

    def all_gather_single(self, output, input, opts=None):  # noqa: A002 - torch's name
        inp = Staged(input, write_back=False)
        out = Staged(output, write_back=True)
        self._check_numel(out.count, self.size() * inp.count, "all_gather_into_tensor output")
        self._check_dtype(out, inp, "all_gather_into_tensor")
        w = self._comm.allgather(inp.ptr, inp.count, out.ptr, inp.code, _blocking(opts))
        return self._work([w], [output], [inp, out])

    _allgather_base = all_gather_single

    def allgather_coalesced(self, output_lists, input_tensors, opts=None):
        """output_lists[r][j] receives rank r's input_tensors[j]: one
        allgather of all inputs packed together."""
        if len(output_lists) != self.size():
            raise ValueError(f"all_gather_coalesced needs {self.size()} output lists, got {len(output_lists)}")
        for outs in output_lists:
            if len(outs) != len(input_tensors):
                raise ValueError(f"all_gather_coalesced: each output list needs {len(input_tensors)} "
                                 f"tensors, got {len(outs)}")
            for o, i in zip(outs, input_tensors):
                check_output(o)
                if o.numel() != i.numel() or o.dtype != i.dtype:
                    raise ValueError(f"all_gather_coalesced outputs must match their inputs "
                                     f"({i.numel()} x {i.dtype}), got {o.numel()} x {o.dtype}")
        flat_in = flatten(input_tensors)
        total = flat_in.numel()
        flat = torch.empty(self.size() * total, dtype=flat_in.dtype)
        w = self._comm.allgather(flat_in.data_ptr(), total, flat.data_ptr(),
                                 torch_dtype_code(flat_in.dtype), _blocking(opts))

        def scatter_back():
            for r, outs in enumerate(output_lists):
                unflatten(flat[r * total:(r + 1) * total], outs)

        return self._work([w], output_lists, (), scatter_back, keep=(flat_in, flat))

    def allgather_into_tensor_coalesced(self, outputs, inputs, opts=None):
        return self._coalesced(self.all_gather_single, outputs, inputs, opts)

    all_gather_single_coalesced = allgather_into_tensor_coalesced

    def reduce_scatter(self, outputs, input_lists, opts=None):
        out = Staged(_one(outputs, "reduce_scatter"), write_back=True)
        ins = _one(input_lists, "reduce_scatter")
        self._check_list(ins, out.tensor, "reduce_scatter input")
        flat = flatten(ins)
        op = _op_code(opts.reduceOp if opts is not None else dist.ReduceOp.SUM)
        w = self._comm.reduce_scatter(flat.data_ptr(), out.ptr, out.count, out.code, op, _blocking(opts))
        return self._work([w], outputs, [out], keep=flat)

    def reduce_scatter_single(self, output, input, opts=None):  # noqa: A002
        out = Staged(output, write_back=True)
        inp = Staged(input, write_back=False)
        self._check_numel(inp.count, self.size() * out.count, "reduce_scatter_tensor input")
        self._check_dtype(out, inp, "reduce_scatter_tensor")
        op = _op_code(opts.reduceOp if opts is not None else dist.ReduceOp.SUM)
        w = self._comm.reduce_scatter(inp.ptr, out.ptr, out.count, out.code, op, _blocking(opts))
        return self._work([w], [output], [out, inp])

    _reduce_scatter_base = reduce_scatter_single

    def reduce_scatter_tensor_coalesced(self, outputs, inputs, opts=None):
        return self._coalesced(self.reduce_scatter_single, outputs, inputs, opts)

    reduce_scatter_single_coalesced = reduce_scatter_tensor_coalesced

    def gather(self, output_lists, input_tensors, opts):
        inp = Staged(_one(input_tensors, "gather"), write_back=False)
        root = opts.rootRank
        if self.rank() != root:
            w = self._comm.gather(inp.ptr, inp.count, 0, inp.code, root, _blocking(opts))
            return self._work([w], output_lists, [inp])
        outs = _one(output_lists, "gather")
        self._check_list(outs, inp.tensor, "gather output", output=True)
        flat = torch.empty(self.size() * inp.count, dtype=inp.buf.dtype)
        w = self._comm.gather(inp.ptr, inp.count, flat.data_ptr(), inp.code, root, _blocking(opts))
        return self._work([w], output_lists, [inp], lambda: unflatten(flat, outs), keep=flat)

    def scatter(self, output_tensors, input_lists, opts):
        out = Staged(_one(output_tensors, "scatter"), write_back=True)
        root = opts.rootRank
        flat = None
        if self.rank() == root:
            ins = _one(input_lists, "scatter")
            self._check_list(ins, out.tensor, "scatter input")
            flat = flatten(ins)
        ptr = flat.data_ptr() if flat is not None else 0
        w = self._comm.scatter(ptr, out.ptr, out.count, out.code, root, _blocking(opts))
        return self._work([w], output_tensors, [out], keep=flat)

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):  # noqa: A002
        out = Staged(output, write_back=True)
        inp = Staged(input, write_back=False)
        self._check_dtype(out, inp, "all_to_all_single")
        in_counts = self._split_counts(input, input_split_sizes, "input")
        out_counts = self._split_counts(output, output_split_sizes, "output")
        w = self._comm.alltoall(inp.ptr, out.ptr, inp.code, in_counts, out_counts, _blocking(opts))
        return self._work([w], [output], [out, inp])

    alltoall_base = all_to_all_single

    def alltoall(self, output_tensors, input_tensors, opts=None):
        if len(output_tensors) != self.size() or len(input_tensors) != self.size():
            raise ValueError(f"all_to_all needs {self.size()} input and output tensors, got "
                             f"{len(input_tensors)} and {len(output_tensors)}")
        for t in output_tensors:
            check_output(t)
        dtypes = {t.dtype for t in list(input_tensors) + list(output_tensors)}
        if len(dtypes) != 1:
            raise ValueError(f"all_to_all tensors must share one dtype, got {sorted(map(str, dtypes))}")
        flat_in = flatten(input_tensors)
        flat_out = torch.empty(sum(t.numel() for t in output_tensors), dtype=flat_in.dtype)
        w = self._comm.alltoall(flat_in.data_ptr(), flat_out.data_ptr(), torch_dtype_code(flat_in.dtype),
                                [t.numel() for t in input_tensors], [t.numel() for t in output_tensors],
                                _blocking(opts))
        return self._work([w], output_tensors, (), lambda: unflatten(flat_out, output_tensors),
                          keep=(flat_in, flat_out))

    def barrier(self, opts=None):
        if _blocking(opts):
            return self._done_work(self._comm.barrier(True), [])
        return Work(self, (self._comm.barrier(False),), [])

    def monitored_barrier(self, opts=None, wait_all_ranks=False):
        return self.barrier(opts)

    # -- point to point --------------------------------------------------------
    def send(self, tensors, dst_rank, tag=0):
        t = Staged(_one(tensors, "send"), write_back=False)
        return self._work([self._comm.send(t.ptr, t.count, t.code, dst_rank, tag)], tensors, [t])

    def recv(self, tensors, src_rank, tag=0):
        t = Staged(_one(tensors, "recv"), write_back=True)
        return self._work([self._comm.recv(t.ptr, t.count, t.code, src_rank, tag)], tensors, [t])

    def recv_anysource(self, tensors, tag=0):
        t = Staged(_one(tensors, "recv"), write_back=True)
        return self._work([self._comm.recv_any(t.ptr, t.count, t.code, tag)], tensors, [t])

    # -- checks ----------------------------------------------------------------
    def _check_list(self, tensors, like, what, output=False):
        if len(tensors) != self.size():
            raise ValueError(f"{what} needs {self.size()} tensors, got {len(tensors)}")
        for t in tensors:
            if output:
                check_output(t)
            else:
                check_dense(t)
            if t.numel() != like.numel() or t.dtype != like.dtype:
                raise ValueError(f"{what} tensors must match the input ({like.numel()} x {like.dtype}), "
                                 f"got {t.numel()} x {t.dtype}")

    @staticmethod
    def _check_numel(got, want, what):
        if got != want:
            raise ValueError(f"{what} has {got} elements, expected {want}")

    @staticmethod
    def _check_dtype(a: Staged, b: Staged, what):
        if a.buf.dtype != b.buf.dtype:
            raise ValueError(f"{what}: input is {b.buf.dtype} but output is {a.buf.dtype}")

    def _split_counts(self, tensor, splits, what):
        rows = tensor.shape[0] if tensor.dim() > 0 else 1
        row = tensor.numel() // rows if rows else 0
        if not splits:
            if rows % self.size():
                raise ValueError(f"all_to_all_single {what} has {rows} rows, not divisible by {self.size()} ranks")
            return [rows // self.size() * row] * self.size()
        if len(splits) != self.size() or sum(splits) != rows:
            raise ValueError(f"all_to_all_single {what} splits {list(splits)} do not cover {rows} rows "
                             f"over {self.size()} ranks")
        return [s * row for s in splits]


def set_groups(group, labels) -> None:
    """Gives a ringflow group (None: the default group) a hierarchical layout:
    labels[r] names the lower-order group (e.g. host) of group rank r.  Call
    it on every rank with the same labels, between calls."""
    pg = dist.distributed_c10d._get_default_group() if group is None else group
    if not isinstance(pg, ProcessGroup):
        raise ValueError(f"set_groups needs a ringflow group, got {type(pg).__name__}")
    pg._comm_owner.set_groups(labels)


def set_compress(group, mode: str) -> None:
    """Low-bit compression of a ringflow group's cross-host level (None: the
    default group): "none", "int8", "4bit", "2bit", "1bit", or "" to follow
    RINGFLOW_COMPRESS.  Every rank passes the same mode, between calls."""
    pg = dist.distributed_c10d._get_default_group() if group is None else group
    if not isinstance(pg, ProcessGroup):
        raise ValueError(f"set_compress needs a ringflow group, got {type(pg).__name__}")
    _C.set_compress(pg._comm, mode)


@dataclass
class Options:
    """A ringflow group's pg_options, e.g.
    ``dist.new_group(backend="ringflow", pg_options=Options(compress="2bit"))``.

    compress: low-bit compression of the group's cross-host level (see
    set_compress); "" follows RINGFLOW_COMPRESS."""

    compress: str = ""


def _complete_futures(q: "queue.SimpleQueue") -> None:
    while True:
        item = q.get()
        if item is None:
            return
        work, raw = item
        work._complete()
        raw.set_result(work._error if work._error is not None else work._result)


def _shutdown(owner: Communicator, completer: "queue.SimpleQueue") -> None:
    completer.put(None)
    owner.close()


def create(opts, options: Options | None = None) -> ProcessGroup:
    """torch's extended backend API: opts carries store, rank, size and
    timeout; options is the group's pg_options."""
    pg = ProcessGroup(opts.store, opts.group_rank, opts.group_size, opts.timeout)
    if options is not None:
        if not isinstance(options, Options):
            raise ValueError(f"ringflow pg_options must be ringflow.backend.Options, got {type(options).__name__}")
        _C.set_compress(pg._comm, options.compress)
    return pg


_registered = False


def register() -> None:
    """Makes `backend="ringflow"` work in init_process_group / new_group."""
    global _registered
    if _registered:
        return
    if "ringflow" not in dist.Backend.backend_list:
        dist.Backend.register_backend("ringflow", create, extended_api=True, devices=["cpu", "cuda"])
    _registered = True


atexit.register(close_all)
