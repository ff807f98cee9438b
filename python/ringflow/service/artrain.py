"""One worker's part in one generation of an `allreduce` job (the master's side: arjob.py).

The worker meets its generation at the master (kvstore.ServiceStore),
forms a torch.distributed group over the ringflow backend, loads the
commit the generation restores from, and trains DistributedDataParallel:
at step s it takes part `rank` of the step's batch (distribution.py, split
into `world` parts), its loss scaled by the part's share times `world` so
that DDP's average is the gradient of the whole batch's mean loss whatever
the split.  Every `commit_every` steps rank 0 commits a version (cursor:
the step) and every rank reports the sample ids it consumed since the last
boundary; the master's answer says whether the generation is still
current, and the ranks agree on it with one allreduce, so they leave
together.  A peer that fails (ringflow's PeerError or TimeoutError) or a
re-formed group ends the generation with `Abandon`; any other error fails
the job.

Where versions go: a job with a `store` path (which every worker must
see) is committed there by rank 0 directly; by default rank 0 sends the
state to the master, which commits it to its own DIR/jobs/ID/versions, and
a generation's workers fetch the commit they restore from the same way, so
workers on other hosts need no shared filesystem.
"""

from __future__ import annotations

import io
import random
import time
from datetime import timedelta

import numpy as np
import torch

from .distribution import Distribution
from .jobspec import build_job
from .kvstore import ServiceStore
from .protocol import ServiceError

STEP_REPORT_S = 0.5


class Abandon(Exception):
    """This generation is over; the worker asks the master for the next one."""


def train_generation(worker, task: dict) -> dict:
    import torch.distributed as dist

    import ringflow

    spec = task["spec"]
    data = worker._data(spec["dataset"])
    job = build_job(spec, data)
    store = ServiceStore(lambda op, payload=b"", **f: worker.call(op, payload, worker=worker.id, **f),
                         task["job"], task["gen"], task["prefix"], task["timeout_s"],
                         worker.master[0])
    try:
        dist.init_process_group("ringflow", store=store, rank=task["rank"],
                                world_size=task["world"],
                                timeout=timedelta(seconds=task["timeout_s"]))
    except Exception as e:  # noqa: BLE001 - a member that never came, a closed rendezvous
        raise Abandon(f"the group did not form: {type(e).__name__}: {e}") from e
    try:
        return _Generation(worker, task, job, dist).run()
    except Abandon:
        raise
    except Exception as e:
        err = ringflow.error_of(e)
        if isinstance(err, (ringflow.PeerError, ringflow.TimeoutError)):
            # the first line names the peer; the rest is the backend's stack
            raise Abandon(f"{type(err).__name__}: {str(err).splitlines()[0]}") from e
        raise
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a broken group may not shut down cleanly; it is gone
            pass


class _Generation:
    def __init__(self, worker, task: dict, job, dist):
        from torch.nn.parallel import DistributedDataParallel as DDP

        from ..versions.store import Store

        self.worker, self.task, self.job, self.dist = worker, task, job, dist
        self.spec, self.rank, self.world = task["spec"], task["rank"], task["world"]
        self.step, head = int(task["restore_step"]), task["restore_head"]
        self.opt = job.make_optimizer(job.model.parameters())
        self.direct = bool(self.spec["store"])
        self.vstore = Store(task["store_path"]) if self.direct else None
        self.head = head
        if head:
            saved = self._checkout(head)
            job.model.load_state_dict(saved["model"])
            self.opt.load_state_dict(saved["optim"])
            # (through the master, the master rolled its store back when it formed the group)
            if self.direct and self.rank == 0 and self.vstore.refs.head() != head:
                # commits after the confirmed one were not reported by every rank: undone
                self.vstore.rollback(head, step=self.step, reason=(
                    f"generation {task['gen']} restores step {self.step}, the last commit every "
                    f"rank confirmed ({task['reason']})"))
        self.model = DDP(job.model)
        self.dist_ = Distribution(len(job.train[1]), self.spec["batch_size"], self.spec["seed"],
                                  self.world)
        self.consumed: list[tuple[int, int, np.ndarray]] = []
        self.loss = float("nan")
        self._last_report = 0.0

    def run(self) -> dict:
        t0 = time.perf_counter()
        if self.task["restore_head"] is None:
            self.boundary("start")
        while self.step < self.spec["steps"]:
            self.one_step()
            if self.step % self.spec["commit_every"] == 0 or self.step == self.spec["steps"]:
                self.boundary(f"step {self.step}")
        from ..versions.training import model_digest

        return {"step": self.step, "loss": self.loss, "world": self.world, "gen": self.task["gen"],
                **{f"test_{k}": v for k, v in self.job.evaluate(self.job.model).items()},
                "wall_s": time.perf_counter() - t0, "model_sha256": model_digest(self.job.model),
                "head": self.head}

    def _checkout(self, head: str) -> dict:
        if self.direct:
            return self.vstore.checkout(head)
        try:
            data = self.worker.call("checkpoint", worker=self.worker.id, job=self.task["job"],
                                    prefix=self.task["prefix"], head=head)[1]
        except ServiceError as e:   # the generation ended before it started
            raise Abandon(f"cannot fetch the commit to restore: {e}") from e
        return torch.load(io.BytesIO(data), weights_only=True)

    def _commit(self, message: str) -> str:
        cursor = self.dist_.cursor(self.step)
        metrics = {} if self.loss != self.loss else {"loss": self.loss}
        if self.direct:
            return self.vstore.commit(
                {"model": self.job.model, "optim": self.opt.state_dict()}, step=self.step,
                message=message, cursor=cursor, metrics=metrics,
                config={"job": self.spec, "world_size": self.world, "generation": self.task["gen"]})
        buf = io.BytesIO()
        torch.save({"model": self.job.model.state_dict(), "optim": self.opt.state_dict()}, buf)
        return self.worker.call("commit", buf.getvalue(), worker=self.worker.id,
                                job=self.task["job"], prefix=self.task["prefix"], step=self.step,
                                message=message, cursor=cursor, metrics=metrics)[0]["head"]

    def one_step(self) -> None:
        x, y = self.job.train
        parts = self.dist_.calculations(self.step)
        if self.rank < len(parts):
            epoch, ids, weight = parts[self.rank]
            idx = torch.from_numpy(ids)
            local = self.job.loss_fn(self.model(x[idx]), y[idx])
            scaled = local * (weight * self.world)
        else:   # a last batch smaller than the group: this rank adds a zero gradient
            epoch, ids, weight = self.step // self.dist_.steps_per_epoch, np.empty(0, np.int64), 0.0
            local = self.job.loss_fn(self.model(x[:1]), y[:1]) * 0.0
            scaled = local
        if self.worker.inject_delay_ms:   # fault injection: a slower step, so a kill lands mid-epoch
            time.sleep(random.uniform(0, self.worker.inject_delay_ms) / 1000)
        self.opt.zero_grad(set_to_none=True)
        scaled.backward()
        self.opt.step()
        mean = torch.tensor([local.item() * weight], dtype=torch.float64)
        self.dist.all_reduce(mean)
        self.loss = mean.item()
        self.consumed.append((self.step, epoch, ids))
        self.step += 1
        if self.rank == 0 and time.monotonic() - self._last_report > STEP_REPORT_S:
            self._last_report = time.monotonic()
            self.worker.call("report", worker=self.worker.id, job=self.task["job"], kind="step",
                             prefix=self.task["prefix"], metrics={"step": self.step, "loss": self.loss,
                                                            "world": self.world})

    def boundary(self, message: str) -> None:
        head = None
        if self.rank == 0:
            head = self._commit(message)     # None: the generation is over
            self.head = head or self.head
        ids = np.concatenate([c[2] for c in self.consumed]) if self.consumed else np.empty(0)
        reply, _ = self.worker.call(
            "report", ids.astype("<i8").tobytes(), worker=self.worker.id, job=self.task["job"],
            kind="commit", prefix=self.task["prefix"], step=self.step, head=head,
            consumed=[[s, e, len(i)] for s, e, i in self.consumed])
        over = torch.tensor([1.0 if reply.get("abandon") else 0.0])
        self.dist.all_reduce(over)
        if over.item():
            raise Abandon(f"generation {self.task['gen']} is over (the master re-formed the group "
                          "or restarted)")
        self.consumed.clear()
