"""examples/gru_plain.py with three lines added: every rank trains its own
replica and averages asynchronously with its Halton peers (ringflow.malt).

    torchrun --nproc-per-node 4 examples/gru_malt.py --epochs 8
"""

import argparse
import json
import os

import torch

import ringflow.malt
from ringflow.jobs.gru import build


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)
    rank, size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    job = build(seed=0)
    model = job.model
    opt = job.make_optimizer(model.parameters())
    torch.distributed.init_process_group("ringflow")
    opt = ringflow.malt.Optimizer(opt, model)
    x, y = job.train[0][rank::size], job.train[1][rank::size]
    torch.manual_seed(rank)
    for _ in range(args.epochs):
        for idx in torch.randperm(len(y)).split(job.batch_size):
            opt.zero_grad()
            job.loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model(job.test[0]).argmax(1) == job.test[1]).float().mean().item()
    print(json.dumps({"rank": rank, "accuracy": accuracy}), flush=True)


if __name__ == "__main__":
    main()
