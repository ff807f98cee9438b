"""Multi-host: the master in one network namespace, two workers in each of two others.

The master binds its namespace's address, so it needs RINGFLOW_SERVICE_TOKEN; a client
without it is refused.  A `ps` job and an `allreduce` job (the ringflow backend between
the worker hosts, meeting through the master's protocol) both finish; the workers cannot see
the master's state directory, so the allreduce job's versions reach it through the protocol."""

from __future__ import annotations

import sqlite3

import pytest

import netns
from ringflow.versions.store import Store
from service_procs import Service, blobs, run_cli, write_job

why_not = netns.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(bool(why_not), reason=why_not)]

TOKEN = "netns-test-secret"


def test_master_and_workers_on_three_hosts(tmp_path):
    npz = blobs(str(tmp_path / "blobs.npz"))
    with netns.Hosts(3) as hosts:
        exec_in = [["ip", "netns", "exec", name] for name in hosts.names]
        # clients run in a worker host too: from the root namespace, another session's
        # test bridge on the same subnet could take the route
        with Service(str(tmp_path), bind=hosts.addrs[0], prefix=exec_in[0], client_prefix=exec_in[1],
                     env={"RINGFLOW_SERVICE_TOKEN": TOKEN}) as svc:
            # the workers' mount namespace hides the master's state directory: the allreduce
            # job's versions reach the master's store through the protocol, not a shared disk
            hide = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    f'mount -t tmpfs none {tmp_path}/state && exec "$@"', "sh"]
            for h in (1, 1, 2, 2):
                svc.add_worker(prefix=exec_in[h] + hide, env={"RINGFLOW_HOST_ID": hosts.names[h]})
            refused = run_cli("jobs", master=svc.address, check=False, prefix=exec_in[2],
                              env={"RINGFLOW_SERVICE_TOKEN": ""})
            assert refused.returncode == 1
            assert "without RINGFLOW_SERVICE_TOKEN: refused" in refused.stderr
            svc.cli("data", "add", "blobs", npz)
            common = dict(dataset="blobs", entry="ringflow.jobs.mlp:build", workers=4, steps=4,
                          batch_size=40, seed=2, lr=0.05)
            ps = svc.submit(write_job(str(tmp_path / "ps.toml"), name="ps", mode="ps", **common))
            ar = svc.submit(write_job(str(tmp_path / "ar.toml"), name="ar", mode="allreduce",
                                      **common))
            for job_id in (ps, ar):
                j = svc.wait_job(job_id, timeout=240)
                assert j["state"] == "done", (j, svc.logs())
                assert j["metrics"]["step"] == 4
            store = Store(f"{tmp_path}/state/jobs/{ar}/versions", create=False)
            assert sorted(c["step"] for c in store.log()) == [0, 4]
            assert store.resolve("HEAD") == j["head"]
            db = sqlite3.connect(f"{tmp_path}/state/master.sqlite3")
            peers = dict(db.execute("SELECT id, host FROM workers").fetchall())
            used = {peers[w].rsplit("@", 1)[1] for (w,) in
                    db.execute("SELECT DISTINCT worker FROM sample_log WHERE job_id = ?", (ps,))}
    assert used == {hosts.addrs[1], hosts.addrs[2]}, used
