"""The master's requests that belong to allreduce jobs (arjob.py): their rendezvous, the state
rank 0 commits through the master, the commit a generation restores, and the reports that
confirm commits, abandon a generation or finish the job.  A mixin of master.Master."""

from __future__ import annotations

from .arjob import AllreduceJob
from .psjob import JobFailed


class AllreduceRequests:
    def op_kv(self, h, p, peer):
        """The allreduce rendezvous (kvstore.py), served to the generation's members only."""
        w = self._worker(h)
        rt = self._runtime(h, AllreduceJob)
        rt.check_rendezvous(w["id"], int(h["gen"]), str(h["prefix"]))
        return self.spaces.serve(str(h["prefix"]), str(h["action"]), str(h["key"]), p,
                                 float(h.get("wait_s", 0)), bytes.fromhex(h.get("expected", "")))

    def op_commit(self, h, p, peer):
        """Rank 0 of an allreduce generation hands its state in (arjob.commit_state)."""
        w = self._worker(h)
        rt = self._runtime(h, AllreduceJob)
        head = rt.commit_state(w["id"], h, p)
        return {"head": head, "abandon": head is None}, b""

    def op_checkpoint(self, h, p, peer):
        w = self._worker(h)
        return {}, self._runtime(h, AllreduceJob).checkout_state(w["id"], h)

    def _guarded(self, rt: AllreduceJob, fn, *args):
        """Runs a change of the job's generation; a job out of restarts fails."""
        try:
            reply = fn(*args)
        except JobFailed as e:
            self._fail(rt.id, str(e))
            return {"kind": "idle"}
        if isinstance(reply, dict) and reply.pop("free", False):
            self._free_worker(args[0])
        return reply

    def _report_allreduce(self, rt: AllreduceJob, w: dict, job: dict, kind: str, h: dict,
                          p: bytes) -> dict:
        gen = h.get("prefix")
        if kind == "commit":
            return {"abandon": self._guarded(rt, rt.commit_report, w["id"], h, p)}
        if kind == "abandon":
            self._guarded(rt, rt.abandoned, w["id"], gen, str(h.get("error")))
            return {}
        verdict = rt.report_done(w["id"], gen)
        if verdict is None:
            return {"abandon": True}
        all_done, rank = verdict
        if rank == 0:
            self.state.update_job(job["id"], metrics={**job["metrics"], **h.get("metrics", {})})
        if all_done:
            for m in rt.members:
                self._free_worker(m)
            self._finish(job["id"])
        return {}
