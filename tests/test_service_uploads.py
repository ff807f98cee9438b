"""`ringflow data add NAME FILE` streams the file's bytes over the authenticated protocol
(chunked, hashed, with a size limit) unless the master is on this host's loopback and can read
the file itself.  Here: the upload's checks on their own, a streamed ingest equal to the
path ingest, the size limit's error, and the master in another network namespace (and mount
namespace: it cannot see the client's file at all) ingesting what the client streamed."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

import netns
from service_procs import Service, blobs, run_cli
from ringflow.service.datasets import load_arrays
from ringflow.service.uploads import Uploads


def test_an_upload_checks_offsets_size_and_hash(tmp_path):
    ups = Uploads(str(tmp_path), limit=100)
    with pytest.raises(ValueError, match="101 bytes is over the master's limit of 100 bytes"):
        ups.begin("big.npy", 101)
    data = bytes(range(90))
    uid = ups.begin("a.npy", 90)
    assert ups.chunk(uid, 0, data[:50]) == 50
    with pytest.raises(ValueError, match="a chunk at byte 0, the file has 50 bytes so far"):
        ups.chunk(uid, 0, data[:50])
    with pytest.raises(ValueError, match="50 of 90 bytes arrived"):
        ups.finish(uid, hashlib.sha256(data).hexdigest())
    ups.chunk(uid, 50, data[50:])
    path = ups.finish(uid, hashlib.sha256(data).hexdigest())
    assert path.endswith(".npy") and open(path, "rb").read() == data
    ups.drop(uid)
    assert not os.listdir(os.path.join(tmp_path, "uploads"))
    uid = ups.begin("b.npy", 3)
    ups.chunk(uid, 0, b"abc")
    with pytest.raises(ValueError, match=r"does not match the client.s .* \(corrupted in transit\)"):
        ups.finish(uid, hashlib.sha256(b"abd").hexdigest())
    with pytest.raises(LookupError, match="no upload"):   # a failed upload is gone
        ups.chunk(uid, 3, b"")
    with pytest.raises(ValueError, match="more than the 3 bytes announced"):
        uid = ups.begin("c.npy", 3)
        ups.chunk(uid, 0, b"abcd")


def test_a_streamed_ingest_equals_the_path_ingest_and_the_limit_is_named(tmp_path):
    from ringflow.service.protocol import call, parse_address

    npz = blobs(str(tmp_path / "blobs.npz"), n=5000)
    with Service(str(tmp_path), master_args=("--max-upload-bytes", "100000")) as svc:
        small = blobs(str(tmp_path / "small.npz"), n=200)
        out = svc.cli("data", "add", "small", small, "--upload").stdout
        assert "small@1: 200 records" in out
        big = svc.cli("data", "add", "big", npz, "--upload", check=False)
        assert big.returncode == 1
        assert "bytes is over the master's limit of 100000 bytes" in big.stderr
        # the path ingest of the same file (the master is on loopback and can read it)
        assert "small@2: 200 records" in svc.cli("data", "add", "small", small).stdout
        address = parse_address(svc.address)
        m1, m2 = (call(address, "data_show", dataset=f"small@{v}")[0]["manifest"] for v in (1, 2))
        assert m1["source"] == m2["source"] == os.path.abspath(small)
        assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
        d = os.path.join(tmp_path, "state", "datasets", "small", "v1")
        got = load_arrays(d, m1)
        with np.load(small) as z:
            np.testing.assert_array_equal(got["x"], z["x"])
            np.testing.assert_array_equal(got["y"], z["y"])
        assert os.listdir(os.path.join(tmp_path, "state", "uploads")) == []


why_not = netns.available()


@pytest.mark.netns
@pytest.mark.skipif(bool(why_not), reason=why_not)
def test_a_master_on_another_host_ingests_a_file_it_cannot_see(tmp_path):
    token = {"RINGFLOW_SERVICE_TOKEN": "upload-test-secret"}
    private = str(tmp_path / "client-only")
    os.makedirs(private)
    npz = blobs(str(tmp_path / "blobs.npz"), n=3000)
    with netns.Hosts(2) as hosts:
        # the client's own mount namespace: a tmpfs over `private` holding the file, which the
        # master (and everyone else) sees as an empty directory
        client = ["ip", "netns", "exec", hosts.names[1], "unshare", "-m", "--propagation",
                  "private", "sh", "-c",
                  f'mount -t tmpfs none {private} && cp {npz} {private}/ && exec "$@"', "sh"]
        with Service(str(tmp_path), bind=hosts.addrs[0], env=token,
                     prefix=["ip", "netns", "exec", hosts.names[0]]) as svc:
            out = run_cli("data", "add", "blobs", f"{private}/blobs.npz", master=svc.address,
                          prefix=client, env=token).stdout
            assert "blobs@1: 3000 records" in out
            assert os.listdir(private) == []     # nothing there for the master to read
            refused = run_cli("data", "add", "blobs", f"{private}/blobs.npz", master=svc.address,
                              prefix=client, env={"RINGFLOW_SERVICE_TOKEN": ""}, check=False)
            assert refused.returncode == 1 and "without RINGFLOW_SERVICE_TOKEN" in refused.stderr
            d = os.path.join(tmp_path, "state", "datasets", "blobs", "v1")
            got = load_arrays(d, json.load(open(os.path.join(d, "manifest.json"))))
    with np.load(npz) as z:
        np.testing.assert_array_equal(got["x"], z["x"])
        np.testing.assert_array_equal(got["y"], z["y"])
