"""`ringflow master --state DIR [--port P] [--bind ADDR]`: the one process that holds the service.

It serves the protocol (protocol.py) on a thread per request and runs a
housekeeping loop: leases that ran out go back to the queue, workers
silent for longer than WORKER_TIMEOUT_S are declared dead (their
calculations go back to the queue; an allreduce job they were in re-forms
its group without them, arjob.py),
and the pool admits the next job when enough workers are free.  A job that
cannot go on fails with a message naming why; the master keeps serving.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time

from . import jobspec, pool
from .arjob import AllreduceJob
from .arops import AllreduceRequests
from .kvstore import RendezvousSpaces
from .calcqueue import CalcQueue, StaleLease
from .datasets import Repository, load_arrays
from .protocol import Server
from .psjob import JobFailed, PsJob, store_dir
from .state import State
from .uploads import DEFAULT_LIMIT, Uploads

log = logging.getLogger("ringflow.service")
WORKER_TIMEOUT_S = 10.0    # a worker heartbeats every second; slack for a loaded host
HOUSEKEEPING_S = 0.2


class Master(AllreduceRequests):
    def __init__(self, directory: str, bind: str = "127.0.0.1", port: int = 0,
                 max_upload_bytes: int = DEFAULT_LIMIT):
        self.state = State(directory)
        self.repo = Repository(self.state)
        self.uploads = Uploads(directory, max_upload_bytes)
        self.bind = bind
        self.runtimes: dict[int, PsJob | AllreduceJob] = {}
        self.spaces = RendezvousSpaces()   # the allreduce generations' rendezvous
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._resume()
        self.server = Server(self.handle, bind, port)
        self.port = self.server.port
        self._housekeeper = threading.Thread(target=self._housekeeping, name="housekeeping",
                                             daemon=True)

    def start(self) -> "Master":
        self.server.start()
        self._housekeeper.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        self._housekeeper.join(timeout=5)

    # --- restart ------------------------------------------------------------------------------
    def _resume(self) -> None:
        """After a restart: workers get a fresh grace period; every running job continues from
        its last commit (an allreduce job in a new generation of its group, arjob.py)."""
        with self.state.tx() as db:
            db.execute("UPDATE workers SET last_seen = ? WHERE alive = 1", (time.time(),))
        for job in self.state.jobs("running"):
            self._start_runtime(job)
            rt = self.runtimes.get(job["id"])
            if isinstance(rt, PsJob):
                log.info("job %s resumes at step %s, its last commit (%s)", job["id"], rt.step,
                         rt.store.refs.head())
            elif rt is not None:
                log.info("job %s resumes at step %s, its last confirmed commit (%s), in "
                         "generation %s", job["id"], *rt.restore, rt.gen)

    # --- requests -----------------------------------------------------------------------------
    def handle(self, header: dict, payload: bytes, peer: str) -> tuple[dict, bytes]:
        op = header.get("op")
        fn = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if fn is None:
            raise ValueError(f"unknown request {op!r}")
        return fn(header, payload, peer)

    def op_ping(self, h, p, peer):
        return {"port": self.port}, b""

    def op_data_add(self, h, p, peer):
        """From a path the master reads, a generator, or an upload (uploads.py)."""
        if h.get("upload") is None:
            return {"manifest": self.repo.add(h["name"], h["source"], h.get("annotate"))}, b""
        path = self.uploads.finish(str(h["upload"]), str(h.get("sha256")))
        try:
            m = self.repo.add(h["name"], path, h.get("annotate"), source_name=h.get("source"))
        finally:
            self.uploads.drop(str(h["upload"]))
        return {"manifest": m}, b""

    def op_upload_begin(self, h, p, peer):
        return {"upload": self.uploads.begin(str(h["filename"]), int(h["size"]))}, b""

    def op_upload_chunk(self, h, p, peer):
        return {"got": self.uploads.chunk(str(h["upload"]), int(h["offset"]), p)}, b""

    def op_data_ls(self, h, p, peer):
        return {"datasets": self.repo.list()}, b""

    def op_data_show(self, h, p, peer):
        return {"manifest": self.repo.manifest(h["dataset"])}, b""

    def op_data_verify(self, h, p, peer):
        return {"problems": self.repo.verify(h["dataset"])}, b""

    def op_data_rm(self, h, p, peer):
        return {"removed": self.repo.remove(h["dataset"])}, b""

    def op_data_file(self, h, p, peer):
        return {}, self.repo.read_file(h["dataset"], int(h["shard"]), h["file"])

    def op_submit(self, h, p, peer):
        spec = jobspec.check(h["spec"])
        manifest = self.repo.manifest(spec["dataset"])   # an unknown dataset fails here
        spec["dataset"] = f"{manifest['name']}@{manifest['version']}"
        return {"job": self.state.add_job(spec)}, b""

    def op_jobs(self, h, p, peer):
        return {"jobs": [_public(j) for j in self.state.jobs()]}, b""

    def op_job(self, h, p, peer):
        job = self.state.job(int(h["job"]))
        if job is None:
            raise LookupError(f"no job {h['job']}")
        return {"job": _public(job)}, b""

    def op_samples(self, h, p, peer):
        rows = self.state.query("SELECT epoch, sample, step, part, worker FROM sample_log "
                                "WHERE job_id = ? ORDER BY step, part, rowid", int(h["job"]))
        return {"samples": [[r["epoch"], r["sample"], r["step"], r["part"], r["worker"]]
                            for r in rows]}, b""

    def op_register(self, h, p, peer):
        with self.state.tx() as db:
            wid = db.execute("INSERT INTO workers (host, pid, last_seen) VALUES (?, ?, ?)",
                             (f"{h.get('host', '?')}@{peer}", int(h.get("pid", 0)), time.time())).lastrowid
        return {"worker": wid}, b""

    def _worker(self, h) -> dict:
        w = self.state.one("SELECT * FROM workers WHERE id = ?", int(h["worker"]))
        if w is None or not w["alive"]:
            raise LookupError(f"unknown worker {h['worker']} (declared dead or never registered): "
                              "register again")
        return w

    def op_heartbeat(self, h, p, peer):
        self._worker(h)
        with self.state.tx() as db:
            db.execute("UPDATE workers SET last_seen = ? WHERE id = ?", (time.time(), int(h["worker"])))
        return {}, b""

    def op_next(self, h, p, peer):
        w = self._worker(h)
        with self.state.tx() as db:    # asking for work is a sign of life too
            db.execute("UPDATE workers SET last_seen = ? WHERE id = ?", (time.time(), w["id"]))
        if w["job_id"] is None:
            # A free worker joins a running ps job that lost workers (or never needed to
            # wait for them): its calculations go to whoever is there.
            ps = sorted(i for i, rt in list(self.runtimes.items()) if isinstance(rt, PsJob))
            if not ps:
                return {"kind": "idle"}, b""
            with self.state.tx() as db:
                db.execute("UPDATE workers SET job_id = ? WHERE id = ?", (ps[0], w["id"]))
            w["job_id"] = ps[0]
        rt = self.runtimes.get(w["job_id"])
        if rt is None:
            job = self.state.job(w["job_id"])
            if job and job["state"] == "running":
                return {"kind": "wait"}, b""     # admitted, its runtime still starting
            self._free_worker(w["id"])           # the job ended: the worker is free again
            return {"kind": "idle"}, b""
        if isinstance(rt, AllreduceJob):
            return self._guarded(rt, rt.join, w["id"]), b""
        calc = rt.lease(w["id"])
        if calc is None:
            return {"kind": "wait"}, b""
        return {"kind": "calc", "job": rt.id, "spec": rt.spec, "step": calc["step"],
                "part": calc["part"], "samples": calc["samples"], "weight": calc["weight"],
                "lease": calc["lease"]}, b""

    def op_params(self, h, p, peer):
        rt = self._runtime(h, PsJob)
        return {"step": int(h["step"])}, rt.params(int(h["step"]))

    def op_grad(self, h, p, peer):
        w = self._worker(h)
        rt = self._runtime(h, PsJob)
        try:
            finished = rt.gradient(w["id"], h, p)
        except StaleLease as e:
            return {"stale": str(e)}, b""
        except JobFailed as e:
            self._fail(rt.id, str(e))
            raise
        if finished:
            self._finish(rt.id)
        return {}, b""

    def op_report(self, h, p, peer):
        """A worker's news about its job: `step` metrics, `done` with results, `failed`, and for
        an allreduce job `commit` (the samples consumed up to a commit) and `abandon` (its group
        broke); a reply with `abandon` tells the worker its generation is over (arjob.py)."""
        w = self._worker(h)
        job_id = int(h["job"])
        job = self.state.job(job_id)
        if job is None or job["state"] != "running":
            return {}, b""
        kind = h.get("kind")
        rt = self.runtimes.get(job_id)
        ar = isinstance(rt, AllreduceJob)
        # a generation is known by its prefix, a secret unique across master restarts
        gen = h.get("prefix")
        if ar and kind in ("failed", "step") and gen is not None and gen != rt.prefix:
            return {"abandon": True}, b""      # news from a generation that is over
        if kind == "failed":
            self._fail(job_id, f"worker {w['id']} (rank {w['rank']}): {h.get('error')}")
        elif kind == "step":
            fields = {"metrics": {**job["metrics"], **h.get("metrics", {})}}
            if not ar:   # an allreduce job's step is its last confirmed commit (arjob.py)
                fields["step"] = int(h.get("metrics", {}).get("step", job["step"]))
            if job["first_step"] is None:
                fields["first_step"] = time.time()
            self.state.update_job(job_id, **fields)
        elif ar and kind in ("commit", "abandon", "done"):
            return self._report_allreduce(rt, w, job, kind, h, p), b""
        else:
            raise ValueError(f"report kind {kind!r} is not step, commit, abandon, done or failed"
                             + ("" if ar else f" of an allreduce job (job {job_id} is {job['spec']['mode']})"))
        return {}, b""

    def _runtime(self, h, kind):
        rt = self.runtimes.get(int(h["job"]))
        if not isinstance(rt, kind):
            job = self.state.job(int(h["job"]))
            raise LookupError(f"job {h['job']} is not running"
                              + (f" (it is {job['state']})" if job else " (no such job)"))
        return rt

    # --- job life -----------------------------------------------------------------------------
    def _start_runtime(self, job: dict) -> None:
        try:
            if job["spec"]["mode"] == "ps":
                m = self.repo.manifest(job["spec"]["dataset"])
                data = load_arrays(self.repo.directory(m), m)
                rt = PsJob(job, data, self.state, store_dir(self.state.directory, job["id"]))
            else:
                problems = self.repo.verify(job["spec"]["dataset"])
                if problems:
                    raise JobFailed("; ".join(problems))
                rt = AllreduceJob(job, self.state, self.spaces,
                                  store_dir(self.state.directory, job["id"]))
        except (ValueError, LookupError, OSError, TypeError, RuntimeError) as e:
            self._fail(job["id"], f"cannot start: {e}")
            return
        with self.lock:
            self.runtimes[job["id"]] = rt
        if isinstance(rt, PsJob) and rt.step == job["spec"]["steps"]:
            self._finish(job["id"])

    def _finish(self, job_id: int) -> None:
        self.state.update_job(job_id, state="done", finished=time.time())
        self._end(job_id)

    def _fail(self, job_id: int, error: str) -> None:
        log.warning("job %s failed: %s", job_id, error)
        self.state.update_job(job_id, state="failed", finished=time.time(), error=error)
        self._end(job_id)

    def _end(self, job_id: int) -> None:
        with self.lock:
            rt = self.runtimes.pop(job_id, None)
        if isinstance(rt, AllreduceJob):
            rt.close()
        CalcQueue(self.state).drop_job(job_id)

    def _free_worker(self, worker: int) -> None:
        with self.state.tx() as db:
            db.execute("UPDATE workers SET job_id = NULL, rank = NULL WHERE id = ?", (worker,))

    def _housekeeping(self) -> None:
        queue = CalcQueue(self.state)
        while not self._stop.wait(HOUSEKEEPING_S):
            try:
                queue.expire()
                for w in self.state.query("SELECT * FROM workers WHERE alive = 1 AND last_seen < ?",
                                          time.time() - WORKER_TIMEOUT_S):
                    self._bury(queue, w)
                while (admitted := pool.admit(self.state)) is not None:
                    self._start_runtime(admitted[0])
            except Exception:  # noqa: BLE001 - the loop must outlive one bad round
                log.exception("housekeeping round failed")

    def _bury(self, queue, w: dict) -> None:
        log.warning("worker %s (%s pid %s) stopped heartbeating", w["id"], w["host"], w["pid"])
        with self.state.tx() as db:
            db.execute("UPDATE workers SET alive = 0, job_id = NULL WHERE id = ?", (w["id"],))
        queue.release_worker(w["id"])
        rt = self.runtimes.get(w["job_id"])
        if isinstance(rt, AllreduceJob):
            self._guarded(rt, rt.lost, w["id"])


def _public(job: dict) -> dict:
    out = {k: job[k] for k in ("id", "name", "state", "metrics", "error", "params_sha256", "step",
                               "head", "submitted", "started", "finished", "spec")}
    out["first_step_s"] = job["first_step"] - job["submitted"] if job["first_step"] else None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ringflow master", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state", required=True, metavar="DIR", help="state directory (created if new)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: any free one, printed)")
    p.add_argument("--bind", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; others need RINGFLOW_SERVICE_TOKEN)")
    p.add_argument("--max-upload-bytes", type=int, default=DEFAULT_LIMIT,
                   help=f"largest source file a client may stream (default {DEFAULT_LIMIT})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s master: %(message)s")
    master = Master(args.state, args.bind, args.port, args.max_upload_bytes).start()
    print(f"ringflow master: serving {args.bind}:{master.port}, state in {os.path.abspath(args.state)}",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    master.close()
    return 0
