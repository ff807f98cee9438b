"""The `ringflow demo` job under torchrun: GRU on scikit-learn digits, versions, rollback.

    torchrun --nproc-per-node 4 examples/train_gru.py --store gru-versions --inject-nan 160
    ringflow versions --store gru-versions log

Every rank trains with DDP over the ringflow backend (or --backend gloo);
rank 0 commits a version every --commit-every steps; with --inject-nan the
loss of rank 1 becomes NaN at that batch and every rank rolls back.
"""

import argparse
import json

import torch
import torch.distributed as dist

from ringflow.jobs.gru import build
from ringflow.versions.guard import GuardConfig
from ringflow.versions.training import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="ringflow")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--commit-every", type=int, default=25)
    p.add_argument("--store", default="gru-versions")
    p.add_argument("--inject-nan", type=int, default=-1, metavar="BATCH")
    p.add_argument("--max-rollbacks", type=int, default=3)
    args = p.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group(args.backend)
    inject = {args.inject_nan: (min(1, dist.get_world_size() - 1), "nan")} if args.inject_nan >= 0 else {}
    cfg = TrainConfig(steps=args.steps, commit_every=args.commit_every, store=args.store,
                      inject=inject, guard=GuardConfig(max_rollbacks=args.max_rollbacks))
    res = train(build(batch_size=args.batch_size), cfg)
    if dist.get_rank() == 0:
        for r in res.rollbacks:
            print(f"rollback at step {r['at_step']} to commit {r['commit'][:12]} "
                  f"(step {r['to_step']}): {r['reason']}")
        print(json.dumps({"accuracy": res.test["accuracy"], "final_loss": res.final_loss,
                          "rollbacks": len(res.rollbacks), "wall_s": res.wall_s, "head": res.head}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
