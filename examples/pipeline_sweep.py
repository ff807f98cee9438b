"""A learning-rate sweep trained at once: three MLPs on scikit-learn's digits,
one model's gradients synchronising while the next model computes.

    torchrun --nproc-per-node 2 examples/pipeline_sweep.py
    RINGFLOW_TIMELINE=trace.json torchrun --nproc-per-node 2 examples/pipeline_sweep.py
    ringflow timeline merge trace.json trace.rank*.json   # one file for Perfetto

Each model has its own optimizer (a different learning rate) and loss; every
rank reads its own shard of the data.  --sequential trains the same models
one after another instead, for comparison; --backend gloo runs over gloo.
"""

import argparse

import torch
import torch.distributed as dist

import ringflow
from ringflow.jobs.gru import load_digits_arrays
from ringflow.pipeline import Member, Pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="ringflow")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lrs", default="0.3,0.1,0.03", help="one model per learning rate")
    p.add_argument("--sequential", action="store_true")
    a = p.parse_args()

    dist.init_process_group(a.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    pixels, labels = load_digits_arrays()
    x = torch.tensor(pixels[rank::world] / 16.0, dtype=torch.float32)   # this rank's shard
    y = torch.tensor(labels[rank::world], dtype=torch.long)

    torch.manual_seed(0)   # the same initial weights on every rank
    members = []
    for lr in (float(v) for v in a.lrs.split(",")):
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        members.append(Member(f"lr={lr}", model, torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
                              lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])))
    pipe = Pipeline(members, overlap=not a.sequential)

    order = torch.Generator().manual_seed(rank)
    try:
        for epoch in range(a.epochs):
            perm = torch.randperm(len(x), generator=order)
            for s in range(0, len(x) - a.batch_size + 1, a.batch_size):
                idx = perm[s:s + a.batch_size]
                losses = pipe.round([(x[idx], y[idx])] * len(members))
            if rank == 0:
                print(f"epoch {epoch}  " + "  ".join(f"{m.name}: {l:.3f}" for m, l in zip(members, losses)),
                      flush=True)
        pipe.finish()
    except Exception as e:  # noqa: BLE001 - a peer failure, named
        err = ringflow.error_of(e) or e
        raise SystemExit(f"rank {rank}: training stopped: {type(err).__name__}: {err}")
    t = pipe.times
    if rank == 0:
        print(f"done: {world} ranks, {t.rounds} rounds in {t.wall:.2f} s (compute {t.compute:.2f} s, "
              f"blocked on communication {t.waiting:.2f} s; {t.overlapped} of {t.computations} "
              f"computations ran beside another model's sync)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
