"""Real `ringflow master` / `ringflow worker` processes for the service tests.

Each process is a subprocess of this interpreter (`python -m ringflow.cli`),
so SIGKILL is a real crash; every wait has a deadline and everything started
is killed at the end of the `with` block, even after a failure.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import torch

CLI = [sys.executable, "-m", "ringflow.cli"]


def run_cli(*args, master: str | None = None, check: bool = True, timeout: float = 120,
            env: dict | None = None, prefix: list | None = None) -> subprocess.CompletedProcess:
    cmd = (prefix or []) + CLI + [str(a) for a in args] + (["--master", master] if master else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


class Service:
    """A master on DIR and `workers` workers; `.address` is HOST:PORT."""

    def __init__(self, directory: str, workers: int = 0, worker_args: tuple = (),
                 bind: str = "127.0.0.1", env: dict | None = None, prefix: list | None = None,
                 client_prefix: list | None = None, master_args: tuple = ()):
        self.directory, self.worker_args, self.bind = directory, list(worker_args), bind
        self.master_args = list(master_args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.prefix = prefix or []
        self.client_prefix = client_prefix   # where client commands run (default: here)
        self.master = None
        self.workers: list[subprocess.Popen] = []
        self.port = 0
        self.n_workers = workers

    def __enter__(self):
        try:
            self.start_master()
            for _ in range(self.n_workers):
                self.add_worker()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start_master(self, port: int = 0, timeout: float = 60) -> None:
        log = open(os.path.join(self.directory, "master.log"), "a")
        self.master = subprocess.Popen(
            self.prefix + CLI + ["master", "--state", os.path.join(self.directory, "state"),
                                 "--port", str(port or self.port), "--bind", self.bind]
            + self.master_args,
            stdout=subprocess.PIPE, stderr=log, text=True, env=self.env)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and self.master.poll() is None:
            line = self.master.stdout.readline()
            m = re.search(r"serving \S+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                return
        raise AssertionError(f"the master did not start within {timeout} s: {line!r}, "
                             f"log: {open(log.name).read()[-2000:]}")

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.bind in ("127.0.0.1", "0.0.0.0") else self.bind
        return f"{host}:{self.port}"

    def add_worker(self, prefix: list | None = None, master: str | None = None,
                   env: dict | None = None) -> subprocess.Popen:
        i = len(self.workers)
        log = open(os.path.join(self.directory, f"worker{i}.log"), "a")
        p = subprocess.Popen((prefix if prefix is not None else self.prefix) + CLI + [
            "worker", "--master", master or self.address, "--master-timeout-s", "60",
            "--cache", os.path.join(self.directory, f"cache{i}")] + self.worker_args,
            stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})})
        self.workers.append(p)
        return p

    def kill_master(self) -> None:
        self.master.send_signal(signal.SIGKILL)
        self.master.wait(timeout=30)

    def cli(self, *args, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("env", {k: v for k, v in self.env.items() if k == "RINGFLOW_SERVICE_TOKEN"})
        return run_cli(*args, master=self.address, prefix=self.client_prefix, **kw)

    def job(self, job_id, wait: float = 0) -> dict:
        """`ringflow job ID --json [--wait S]` (a process); without a wait, a direct request."""
        if not wait:
            from ringflow.service.protocol import call, parse_address

            return call(parse_address(self.address), "job", job=job_id)[0]["job"]
        r = self.cli("job", job_id, "--json", "--wait", wait, check=False,
                     timeout=wait + 60)
        assert r.stdout.strip(), f"`ringflow job` printed nothing: {r.stderr}"
        return json.loads(r.stdout.strip().splitlines()[-1])

    def wait_job(self, job_id, timeout: float = 120) -> dict:
        """Polls in process (a CLI process costs seconds of imports on a loaded host)."""
        if self.client_prefix:
            return self._ended(self.job(job_id, wait=timeout), timeout)
        deadline = time.monotonic() + timeout
        while (j := self.job(job_id))["state"] not in ("done", "failed") \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        return self._ended(j, timeout)

    def wait_step(self, job_id, step: int, timeout: float = 120) -> dict:
        """Polls in process until the job reaches `step` (or ends); its status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            j = self.job(job_id)
            if j["step"] >= step or j["state"] in ("done", "failed"):
                return j
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not reach step {step} in {timeout} s\n" + self.logs())

    def _ended(self, j: dict, timeout: float) -> dict:
        job_id = j["id"]
        if j["state"] not in ("done", "failed"):
            raise AssertionError(f"job {job_id} still {j['state']} after {timeout} s: {j}\n"
                                 + self.logs())
        return j

    def logs(self) -> str:
        out = []
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".log"):
                out.append(f"--- {name}\n" + open(os.path.join(self.directory, name)).read()[-1500:])
        return "\n".join(out)

    def submit(self, path: str, via_cli: bool = True) -> int:
        if via_cli:
            return int(self.cli("submit", path).stdout.strip().splitlines()[-1])
        from ringflow.service import jobspec
        from ringflow.service.protocol import call, parse_address

        with open(path) as f:
            return call(parse_address(self.address), "submit", spec=jobspec.parse(f.read()))[0]["job"]

    def __exit__(self, *exc):
        for p in self.workers + ([self.master] if self.master else []):
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


def write_job(path: str, **keys) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def blobs(path: str, n: int = 240, features: int = 6, classes: int = 3, seed: int = 0) -> str:
    """A small tabular classification set (x float32, y int64) saved as NPZ."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = rng.normal(0, 3, (classes, features))
    x = (centers[y] + rng.normal(0, 1, (n, features))).astype(np.float32)
    np.savez(path, x=x, y=y.astype(np.int64))
    return path


def reference_ps(npz: str, samples: list, lr: float, seed: int, batch_size: int) -> str:
    """Plain torch: per step, the parts' gradients (weight x mean loss) summed in part order."""
    from ringflow.jobs.mlp import build
    from ringflow.versions.training import model_digest

    torch.set_num_threads(1)
    with np.load(npz) as z:
        job = build(data={"x": z["x"], "y": z["y"]}, seed=seed, lr=lr, batch_size=batch_size)
    model, (x, y) = job.model, job.train
    opt = job.make_optimizer(model.parameters())
    steps = collections.defaultdict(lambda: collections.defaultdict(list))
    for _epoch, sample, step, part, _worker in samples:
        steps[step][part].append(sample)
    for step in sorted(steps):
        parts = steps[step]
        total = sum(len(v) for v in parts.values())
        acc = None
        for part in sorted(parts):
            idx = torch.tensor(parts[part])
            model.zero_grad(set_to_none=True)
            (job.loss_fn(model(x[idx]), y[idx]) * (len(idx) / total)).backward()
            g = torch.nn.utils.parameters_to_vector(p.grad for p in model.parameters())
            acc = g.clone() if acc is None else acc.add_(g)
        off = 0
        for p in model.parameters():
            p.grad = acc[off:off + p.numel()].view_as(p).clone()
            off += p.numel()
        opt.step()
    return model_digest(model)


def samples_of(svc: Service, job_id: int) -> list:
    from ringflow.service.protocol import call, parse_address

    return call(parse_address(svc.address), "samples", job=job_id)[0]["samples"]


def exactly_once(samples: list, n_train: int, batch: int, steps: int) -> None:
    """Every epoch the log covers fully has each training sample exactly once."""
    per_epoch = collections.defaultdict(list)
    for epoch, sample, *_ in samples:
        per_epoch[epoch].append(sample)
    steps_per_epoch = -(-n_train // batch)
    for epoch, got in per_epoch.items():
        assert len(got) == len(set(got)), f"epoch {epoch}: a sample used twice"
        if (epoch + 1) * steps_per_epoch <= steps:
            assert sorted(got) == list(range(n_train)), f"epoch {epoch}: samples missing"
