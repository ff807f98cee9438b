"""A plain training loop: the GRU reference job on this rank's shard of the
digits.  examples/gru_malt.py is this file with three lines added
(tests/test_malt_optimizer.py checks the difference and runs both).

    python examples/gru_plain.py --epochs 8
"""

import argparse
import json
import os

import torch

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
