"""DDP over ringflow, as a gloo, NCCL or Horovod user would write it.

    torchrun --nproc-per-node 2 examples/ddp_torchrun.py

The only ringflow-specific line is the backend name.  A failed peer surfaces
under DDP as a RuntimeError; ringflow.error_of() recovers the ringflow error.
"""

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import ringflow


def main() -> None:
    dist.init_process_group("ringflow")            # instead of "gloo" / "nccl"
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DDP(torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(rank)
    w_true = torch.randn(32, 1, generator=torch.Generator().manual_seed(42))
    for step in range(200):
        x = torch.randn(64, 32, generator=data)
        loss = torch.nn.functional.mse_loss(model(x), x @ w_true)
        opt.zero_grad()
        try:
            loss.backward()                        # gradients are all-reduced here
        except RuntimeError as e:
            err = ringflow.error_of(e)             # ringflow.PeerError, TimeoutError, ...
            raise SystemExit(f"rank {rank}: training stopped: {type(err).__name__ if err else 'error'}: {err or e}")
        opt.step()
        if rank == 0 and step % 50 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}", flush=True)
    if rank == 0:
        print(f"done: {world} ranks, final loss {loss.item():.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
