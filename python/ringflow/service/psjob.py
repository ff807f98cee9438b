"""A `ps` job on the master: the model, the optimizer, the ordered collector and the cursor.

The master owns the parameters.  Each step's calculations go to the queue;
workers send back the gradient (of weight x mean loss) of their calculation
against the parameters of that step; when every part is in, the collector's
ordered sum becomes the gradient of one optimizer step.  Versions are
committed to DIR/jobs/ID/versions every `commit_every` steps; a master
restarted on the same directory resumes from the last commit: the cursor is
the step, and the batches of a step are a pure function of it.
"""

from __future__ import annotations

import json
import os
import threading
import time

import torch

from ..versions.store import Store
from ..versions.training import model_digest
from .collector import OrderedCollector
from .distribution import Distribution
from .jobspec import build_job
from .calcqueue import CalcQueue

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


class JobFailed(ValueError):
    """The job cannot go on; the message says why (the master keeps serving)."""


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


class PsJob:
    def __init__(self, row: dict, data: dict, state, store_dir: str):
        self.id, self.spec, self.state = row["id"], row["spec"], state
        self.lock = threading.Lock()
        self.job = build_job(self.spec, data)
        self.model = self.job.model
        dtypes = {p.dtype for p in self.model.parameters()}
        if len(dtypes) != 1:
            raise JobFailed(f"ps mode needs parameters of one dtype, the model has {dtypes}")
        self.opt = self.job.make_optimizer(self.model.parameters())
        self.dist = Distribution(len(self.job.train[1]), self.spec["batch_size"], self.spec["seed"],
                                 self.spec["micro_batches"])
        self.queue = CalcQueue(state)
        self.store = Store(store_dir)
        self.step = 0
        if self.store.refs.head():
            self._restore()
        else:
            self._commit("start")
        numel = sum(p.numel() for p in self.model.parameters())
        self.collector = OrderedCollector(len(self.dist.calculations(self.step)), numel, dtypes.pop())
        self.losses: dict[int, float] = {}
        self._params = (self.step, flat_params(self.model).numpy().tobytes())
        # Calculations of steps not yet applied are recomputed from the cursor.
        self.queue.forget_after(self.id, self.step - 1)
        with state.tx() as db:
            db.execute("DELETE FROM sample_log WHERE job_id = ? AND step >= ?", (self.id, self.step))
        if self.step < self.spec["steps"]:
            self.queue.put_step(self.id, self.step, self.dist.calculations(self.step))

    def _restore(self) -> None:
        c = self.store.read_commit("HEAD")
        saved = self.store.checkout("HEAD")
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optim"])
        self.step = int(c.cursor["step"])

    def _commit(self, message: str, loss: float | None = None) -> str:
        return self.store.commit({"model": self.model, "optim": self.opt.state_dict()},
                                 step=self.step, message=message, cursor=self.dist.cursor(self.step),
                                 metrics={} if loss is None else {"loss": loss},
                                 config={"job": self.spec})

    def params(self, step: int) -> bytes:
        with self.lock:
            if step != self._params[0]:
                raise ValueError(f"job {self.id}: parameters of step {step} are gone "
                                 f"(the job is at step {self._params[0]})")
            return self._params[1]

    def lease(self, worker: int) -> dict | None:
        return self.queue.lease(self.id, worker, self.spec["lease_s"])

    def gradient(self, worker: int, header: dict, payload: bytes) -> bool:
        """Takes a calculation's gradient; True when it finished the job.  Raises StaleLease
        (the calculation was handed on: ignored) or JobFailed (a wrong gradient)."""
        step, part = int(header["step"]), int(header["part"])
        with self.lock:
            calc = self.queue.complete(self.id, step, part, worker, str(header["lease"]))
            grad = self._decode(worker, header, payload, part)
            try:
                done = self.collector.add(part, grad)
            except ValueError as e:
                raise JobFailed(f"worker {worker} sent a wrong gradient: {e}") from None
            self.losses[part] = float(header.get("loss", float("nan"))) * calc["weight"]
            return self._apply(step) if done else False

    def _decode(self, worker: int, header: dict, payload: bytes, part: int) -> torch.Tensor:
        dtype, shape = header.get("dtype"), header.get("shape")
        if dtype not in DTYPES:
            raise JobFailed(f"worker {worker} sent a gradient of part {part} with dtype {dtype!r} "
                            f"(the model needs {str(self.collector.dtype).removeprefix('torch.')})")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise JobFailed(f"worker {worker} sent a gradient of part {part} with shape {shape!r}")
        t = DTYPES[dtype]
        want = torch.Size(shape).numel() * t.itemsize
        if len(payload) != want:
            raise JobFailed(f"worker {worker}: gradient of part {part} is {len(payload)} bytes, "
                            f"its header says {dtype}{shape} ({want} bytes)")
        grad = torch.frombuffer(bytearray(payload), dtype=t).reshape(shape) if want else \
            torch.empty(shape, dtype=t)
        try:
            self.collector.check(part, grad)
        except ValueError as e:
            raise JobFailed(f"worker {worker} sent a wrong gradient: {e}") from None
        return grad

    def _apply(self, step: int) -> bool:
        offset = 0
        for p in self.model.parameters():
            p.grad = self.collector.sum[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        self.opt.step()
        loss = sum(self.losses[k] for k in sorted(self.losses))
        self.step = step + 1
        finished = self.step == self.spec["steps"]
        with self.state.tx() as db:
            for c in db.execute("SELECT * FROM calcs WHERE job_id = ? AND step = ?",
                                (self.id, step)).fetchall():
                db.executemany("INSERT INTO sample_log VALUES (?, ?, ?, ?, ?, ?)",
                               [(self.id, c["epoch"], s, step, c["part"], c["worker"])
                                for s in json.loads(c["samples"])])
        if self.step % self.spec["commit_every"] == 0 or finished:
            self._commit(f"step {self.step}", loss)
        self._params = (self.step, flat_params(self.model).numpy().tobytes())
        metrics = self.state.job(self.id)["metrics"]
        metrics.update(self.dist.cursor(self.step), loss=loss)
        metrics.setdefault("first_loss", loss)
        fields = {"step": self.step, "metrics": metrics, "head": self.store.refs.head()}
        if self.state.job(self.id)["first_step"] is None:
            fields["first_step"] = time.time()
        if finished:
            metrics.update({f"test_{k}": v for k, v in self.job.evaluate(self.model).items()})
            fields["params_sha256"] = model_digest(self.model)
        self.state.update_job(self.id, **fields)
        self.losses.clear()
        if not finished:
            self.collector = OrderedCollector(len(self.dist.calculations(self.step)),
                                              self.collector.numel, self.collector.dtype)
            self.queue.put_step(self.id, self.step, self.dist.calculations(self.step))
        return finished


def store_dir(state_dir: str, job_id: int) -> str:
    return os.path.join(state_dir, "jobs", str(job_id), "versions")
