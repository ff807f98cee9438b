"""`ringflow worker --master HOST:PORT`: registers, heartbeats, and runs what the master hands it.

A `calc` (ps mode) is one calculation: the gradient of weight x mean loss
of the job's model, at the parameters of its step, over the samples it
names, sent back under its lease.  An `allreduce` assignment makes this
worker one rank of a torch.distributed group over the ringflow backend,
met through the master's protocol; it trains one generation of the job
(artrain.py) and asks for the next when the group breaks.  Data comes from the master's repository,
each shard checked against its manifest hash.  The worker gives up when
the master stays unreachable longer than --master-timeout-s.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import tempfile
import threading
import time

from .datasets import load_arrays
from .jobspec import build_job
from .protocol import ServiceError, call_retrying, parse_address

IDLE_POLL_S = 0.1
WAIT_POLL_S = 0.02
HEARTBEAT_S = 1.0


class Worker:
    def __init__(self, master: tuple[str, int], cache: str, master_timeout_s: float = 120.0,
                 inject_delay_ms: float = 0.0):
        self.master, self.cache, self.timeout_s = master, cache, master_timeout_s
        self.inject_delay_ms = inject_delay_ms
        self.jobs: dict[int, object] = {}   # job id -> built Job (ps mode)
        self.params: dict[int, tuple[int, object]] = {}
        self.id = None
        self._stop = threading.Event()
        self._register()
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()

    def call(self, op: str, payload: bytes = b"", **fields):
        return call_retrying(self.master, op, payload, within_s=self.timeout_s, **fields)

    def _register(self) -> None:
        self.id = self.call("register", host=socket.gethostname(), pid=os.getpid())[0]["worker"]

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.call("heartbeat", worker=self.id)
            except ServiceError as e:
                if "register again" in str(e):
                    self._register()
                else:
                    print(f"ringflow worker: {e}", file=sys.stderr, flush=True)
                    self._stop.set()

    def run(self) -> int:
        while not self._stop.is_set():
            try:
                task, _ = self.call("next", worker=self.id)
            except ServiceError as e:
                if "register again" in str(e):
                    self._register()
                    continue
                raise
            if task["kind"] == "calc":
                self._calc(task)
            elif task["kind"] == "allreduce":
                self._allreduce(task)
            else:
                time.sleep(IDLE_POLL_S if task["kind"] == "idle" else WAIT_POLL_S)
        return 1

    # --- data and jobs ------------------------------------------------------------------------
    def _data(self, ref: str) -> dict:
        manifest = self.call("data_show", dataset=ref)[0]["manifest"]
        d = os.path.join(self.cache, manifest["name"], f"v{manifest['version']}")
        os.makedirs(d, exist_ok=True)
        for i, shard in enumerate(manifest["shards"]):
            for f in shard["files"]:
                path = os.path.join(d, f)
                if not os.path.exists(path):
                    data = self.call("data_file", dataset=ref, shard=i, file=f)[1]
                    with open(path + ".tmp", "wb") as out:
                        out.write(data)
                    os.replace(path + ".tmp", path)
        return load_arrays(d, manifest)   # raises naming a shard whose hash does not match

    def _job(self, task: dict):
        job = self.jobs.get(task["job"])
        if job is None:
            job = self.jobs[task["job"]] = build_job(task["spec"], self._data(task["spec"]["dataset"]))
        return job

    def _report_failure(self, task: dict, e: BaseException) -> None:
        try:
            self.call("report", worker=self.id, job=task["job"], kind="failed",
                      prefix=task.get("prefix"), error=f"{type(e).__name__}: {e}")
        except ServiceError as err:
            print(f"ringflow worker: could not report a failure: {err}", file=sys.stderr)

    # --- ps -----------------------------------------------------------------------------------
    def _calc(self, task: dict) -> None:
        import torch

        try:
            job = self._job(task)
            model = job.model
            have = self.params.get(task["job"])
            if have is None or have[0] != task["step"]:
                flat = self.call("params", job=task["job"], step=task["step"])[1]
                have = self.params[task["job"]] = (task["step"], torch.frombuffer(bytearray(flat),
                                                                               dtype=torch.float32))
            torch.nn.utils.vector_to_parameters(have[1], model.parameters())
            model.zero_grad(set_to_none=True)
            idx = torch.tensor(task["samples"], dtype=torch.int64)
            x, y = job.train
            loss = job.loss_fn(model(x[idx]), y[idx]) * task["weight"]
            loss.backward()
            grad = torch.nn.utils.parameters_to_vector(p.grad for p in model.parameters())
        except ServiceError as e:   # e.g. the step moved on while this lease ran out
            print(f"ringflow worker {self.id}: calculation dropped: {e}", file=sys.stderr, flush=True)
            return
        except (ValueError, LookupError, RuntimeError, TypeError, OSError) as e:
            self._report_failure(task, e)
            return
        if self.inject_delay_ms:
            time.sleep(random.uniform(0, self.inject_delay_ms) / 1000)
        try:
            self.call("grad", grad.numpy().tobytes(), worker=self.id, job=task["job"],
                      step=task["step"], part=task["part"], lease=task["lease"], dtype="float32",
                      shape=list(grad.shape), loss=loss.item() / task["weight"])
        except ServiceError as e:   # the job ended or failed meanwhile; the master knows why
            print(f"ringflow worker {self.id}: {e}", file=sys.stderr, flush=True)

    # --- allreduce ----------------------------------------------------------------------------
    def _allreduce(self, task: dict) -> None:
        from .artrain import Abandon, train_generation

        try:
            result = train_generation(self, task)
        except Abandon as e:   # the group broke or was re-formed: say so, then ask for the next
            print(f"ringflow worker {self.id}: job {task['job']} generation {task['gen']} "
                  f"abandoned: {e}", file=sys.stderr, flush=True)
            try:
                self.call("report", worker=self.id, job=task["job"], kind="abandon",
                          prefix=task["prefix"], error=str(e))
            except ServiceError as err:
                print(f"ringflow worker {self.id}: {err}", file=sys.stderr, flush=True)
            return
        except Exception as e:  # noqa: BLE001 - reported to the master, which fails the job
            self._report_failure(task, e)
            return
        try:
            self.call("report", worker=self.id, job=task["job"], kind="done", prefix=task["prefix"],
                      metrics=result, head=result.get("head"))
        except ServiceError as e:   # the job failed meanwhile (another rank); the master knows
            print(f"ringflow worker {self.id}: {e}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ringflow worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--master", default=None, help="HOST:PORT (default: RINGFLOW_MASTER)")
    p.add_argument("--cache", default=None, help="where fetched shards go (default: a temp dir)")
    p.add_argument("--master-timeout-s", type=float, default=120.0,
                   help="give up when the master is unreachable this long (default 120)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--inject-delay-ms", type=float, default=0.0,
                   help="fault injection: sleep a random 0..N ms before sending each gradient")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cache = args.cache or tempfile.mkdtemp(prefix="ringflow-worker-")
    w = Worker(parse_address(args.master), cache, args.master_timeout_s, args.inject_delay_ms)
    print(f"ringflow worker {w.id}: serving master {args.master or os.environ.get('RINGFLOW_MASTER')}",
          flush=True)
    return w.run()
