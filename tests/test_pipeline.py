"""The multi-model pipeline (mechanism 5) and the Chrome-trace timeline."""

import json
import os
import signal

import pytest

from worlds import init_torch, run_world

ROUNDS = 6
WIDTHS = (24, 40, 16)  # three models of different sizes: their buckets differ in length


def _members(widths=WIDTHS, seed=0, inputs=12):
    """Fresh models, each with its own optimizer and loss."""
    import torch

    from ringflow.pipeline import Member

    torch.manual_seed(seed)
    out = []
    for k, w in enumerate(widths):
        model = torch.nn.Sequential(torch.nn.Linear(inputs, w), torch.nn.Tanh(), torch.nn.Linear(w, 3))
        opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if k % 2 == 0
               else torch.optim.Adam(model.parameters(), lr=0.01))
        loss = (lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])) if k % 2 == 0 else \
               (lambda m, b: torch.nn.functional.l1_loss(m(b[0]), b[1]))
        out.append(Member(f"model{k}", model, opt, loss))
    return out


def _batches(rank, rounds=ROUNDS, models=len(WIDTHS), rows=8):
    """Per round, one batch per model; each rank its own data, same every call."""
    import torch

    g = torch.Generator().manual_seed(1000 + rank)
    return [[(torch.randn(rows, 12, generator=g), torch.randn(rows, 3, generator=g)) for _ in range(models)]
            for _ in range(rounds)]


def _reference(members, batches, group, world):
    """The models trained one after another, written without the pipeline:
    each model's whole gradient in one tensor, summed, divided by the world
    size (as DDP averages), stepped, before the next model computes."""
    import torch
    import torch.distributed as dist

    for round_batches in batches:
        for m, batch in zip(members, round_batches):
            m.optimizer.zero_grad()
            m.loss(m.model, batch).backward()
            params = list(reversed(list(m.model.parameters())))
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat, group=group)
            flat.div_(world)
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.numel()].view(p.shape))
                offset += p.numel()
            m.optimizer.step()
    return [[p.detach().clone() for p in m.model.parameters()] for m in members]


def _pipelined(members, batches, group, **kw):
    from ringflow.pipeline import Pipeline

    pipe = Pipeline(members, group=group, **kw)
    for round_batches in batches:
        pipe.round(round_batches)
    pipe.finish()
    return [[p.detach().clone() for p in m.model.parameters()] for m in members], pipe


def pipeline_equals_sequential(rank, size, backend):
    import torch
    import torch.distributed as dist

    init_torch(rank, size)
    group = None if backend == "ringflow" else dist.new_group(backend=backend)
    batches = _batches(rank)
    # A small bucket cap cuts every model into several buckets, all in flight at once.
    ours, pipe = _pipelined(_members(), batches, group, bucket_bytes=512)
    ref = _reference(_members(), batches, group, size)
    exact = [all(torch.equal(a, b) for a, b in zip(x, y)) for x, y in zip(ours, ref)]
    worst = max(float((a - b).abs().max()) for x, y in zip(ours, ref) for a, b in zip(x, y))
    flat = torch.cat([p.reshape(-1) for x in ours for p in x])
    first = flat.clone()
    dist.broadcast(first, 0)
    moved = not all(torch.equal(a, b) for a, b in zip(ours[0], [p.detach() for p in _members()[0].model.parameters()]))
    buckets = [len(b) for b in pipe.buckets]
    return exact, worst, torch.equal(flat, first), moved, buckets


@pytest.mark.parametrize("backend", ["ringflow", "gloo"])
def test_pipeline_bitwise_equal_to_models_trained_one_after_another(backend):
    # Two ranks: each sum has two terms, so the bucket layout cannot change the bits.
    for exact, worst, replicas_agree, moved, buckets in run_world(2, pipeline_equals_sequential, backend,
                                                                   timeout=180):
        assert all(exact), f"{backend}: weights differ from the sequential reference by up to {worst}"
        assert replicas_agree
        assert moved, "training did not change the weights: the comparison proves nothing"
        assert all(n > 1 for n in buckets), buckets


def pipeline_schedules_agree(rank, size):
    """Three ranks (sums whose order matters): the trainer's own pipelined
    and sequential schedules give the same bits."""
    import torch

    init_torch(rank, size)
    batches = _batches(rank, rounds=4)
    a, _ = _pipelined(_members(), batches, None, overlap=True)
    b, seq = _pipelined(_members(), batches, None, overlap=False)
    same = all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))
    return same, seq.times.overlapped, seq.times.computations


def test_pipelined_and_sequential_schedules_agree_on_three_ranks():
    for same, overlapped, computations in run_world(3, pipeline_schedules_agree, timeout=180):
        assert same
        # The sequential schedule never computes while a sync is in flight.
        assert overlapped == 0 and computations == 4 * len(WIDTHS)


# -- the timeline ---------------------------------------------------------------
BIG = (256, 192)  # large enough that a sync is still in flight when the next model starts


def pipeline_with_timeline(rank, size, path):
    import torch

    from ringflow import timeline

    init_torch(rank, size)
    tl = timeline.enable(path, rank)
    members = _members(widths=BIG, inputs=256)  # ~66k and ~50k parameters
    g = torch.Generator().manual_seed(rank)
    batches = [[(torch.randn(8, 256, generator=g), torch.randn(8, 3, generator=g)) for _ in BIG] for _ in range(4)]
    from ringflow.pipeline import Pipeline

    pipe = Pipeline(members, bucket_bytes=1 << 30)
    for b in batches:
        pipe.round(b)
    pipe.finish()
    counts = {m.name: sum(p.numel() for p in m.model.parameters()) for m in members}
    # The watcher stamps each call as it ends; all have ended after finish().
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = sum(1 for e in tl.events if e.get("tid") == timeline.COLLECTIVES and not e["name"].endswith("queued"))
        if done >= len(batches) * len(BIG):
            break
        time.sleep(0.05)
    return tl.flush(), counts


def _spans(events, tid):
    return [e for e in events if e.get("ph") == "X" and e["tid"] == tid]


def test_timeline_is_a_chrome_trace_with_one_track_per_rank_and_the_overlaps_the_pipeline_reports(tmp_path):
    from ringflow import timeline

    results = run_world(2, pipeline_with_timeline, str(tmp_path / "trace.json"), timeout=180)
    files = [r[0] for r in results]
    assert files == [str(tmp_path / f"trace.rank{r}.json") for r in range(2)]
    counts = results[0][1]
    declared = 0
    for rank, path in enumerate(files):
        with open(path) as f:
            trace = json.load(f)  # well-formed JSON
        events = trace["traceEvents"]
        assert {e["pid"] for e in events} == {rank}, "each rank's events are on its own track"
        names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
        assert names[timeline.COMPUTE] == "compute" and names[timeline.COLLECTIVES] == "collectives"
        for e in events:
            assert e["ph"] in ("X", "M"), e
            if e["ph"] == "X":
                assert isinstance(e["ts"], float) and e["dur"] >= 0 and e["name"], e
        compute = [e for e in _spans(events, timeline.COMPUTE) if e["name"].endswith("forward+backward")]
        calls = [e for e in _spans(events, timeline.COLLECTIVES) if e["name"] == "allreduce"]
        queued = {e["args"]["op"]: e for e in _spans(events, timeline.COLLECTIVES) if e["name"].endswith("queued")}
        assert len(compute) == 4 * len(BIG)
        assert len(calls) == 4 * len(BIG), [c["args"]["op"] for c in calls]
        for c in calls:
            assert c["args"]["total_ms"] >= 0 and "aggregation_ms" in c["args"], c
        for span in compute:
            for model in span["args"]["in_flight"]:
                declared += 1
                want = f"count={counts[model]},"
                # The call's whole life, from submission (its queued span) to its end.
                mine = [(queued[c["args"]["op"]]["ts"] if c["args"]["op"] in queued else c["ts"], c["ts"] + c["dur"])
                        for c in calls if want in c["args"]["op"]]
                assert mine, f"no allreduce of {model} ({want}) in the trace"
                s0, s1 = span["ts"], span["ts"] + span["dur"]
                assert any(a < s1 and b > s0 for a, b in mine), \
                    f"{span['name']} says {model}'s sync was in flight, but no call of it overlaps the span"
    assert declared > 0, "the pipeline never reported a sync in flight during another model's computation"


def test_timeline_files_merge_into_one_trace(tmp_path):
    from ringflow.timeline import Timeline, merge, rank_path

    paths = []
    for r in range(3):
        tl = Timeline(str(tmp_path / "t.json"), r)
        tl.add("work", 1, 10.0 * r, 10.0 * r + 5)
        paths.append(tl.flush())
    assert paths[2] == rank_path(str(tmp_path / "t.json"), 2) == str(tmp_path / "t.rank2.json")
    with open(merge(str(tmp_path / "all.json"), paths)) as f:
        events = json.load(f)["traceEvents"]
    assert sorted({e["pid"] for e in events}) == [0, 1, 2]
    assert [e["ts"] for e in events if e["ph"] == "X"] == [0.0, 10.0, 20.0]


# -- failures ----------------------------------------------------------------------
def pipeline_rank_dies(rank, size):
    import ringflow
    from ringflow.pipeline import Pipeline

    init_torch(rank, size, timeout_s=20)
    from datetime import timedelta

    pipe = Pipeline(_members(), bucket_bytes=512, timeout=timedelta(seconds=30))
    try:
        for k, b in enumerate(_batches(rank, rounds=20)):
            if k == 4 and rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)  # mid-pipeline: syncs of the last round in flight
            pipe.round(b)
        pipe.finish()
    except Exception as e:  # noqa: BLE001 - the error is the result
        err = ringflow.error_of(e)
        return type(err).__name__, str(err)
    return None, ""


def test_a_rank_dying_mid_pipeline_gives_every_other_rank_an_error():
    results = run_world(3, pipeline_rank_dies, timeout=120, may_die=(1,))
    for rank in (0, 2):
        kind, msg = results[rank]
        assert kind is not None, f"rank {rank} trained on although rank 1 died"
        assert kind in ("PeerError", "TimeoutError"), (kind, msg)
        assert "rank 1" in msg or kind == "TimeoutError", msg


# -- pieces -----------------------------------------------------------------------
def test_buckets_follow_ddp_layout():
    import torch

    from ringflow.pipeline import make_buckets

    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10))  # 110 + 110 floats
    one = make_buckets(model)
    assert len(one) == 1 and [p.shape for p in one[0].params] == [p.shape for p in reversed(list(model.parameters()))]
    cut = make_buckets(model, bucket_bytes=110 * 4)  # a layer's weight and bias per bucket
    assert [len(b.params) for b in cut] == [2, 2]
    assert cut[0].params[0] is model[1].bias


def test_overlap_efficiency():
    from ringflow.pipeline import overlap_efficiency

    assert overlap_efficiency(2.0, 1.0, 1.0, 1.0) == 1.0   # the shorter half fully hidden
    assert overlap_efficiency(2.0, 2.0, 1.0, 1.0) == 0.0   # nothing hidden
    assert overlap_efficiency(3.0, 2.5, 1.0, 2.0) == 0.5
