"""`ringflow demo`: the GRU reference job on local processes, with versions and a rollback.

Spawns `--world` processes that train ringflow.jobs.gru with DDP over the
ringflow backend, committing a version every N steps; one NaN is injected on
one rank (`--inject-nan STEP`) so the guard rolls every rank back.  Then the
same job runs over gloo, in the same run, for the wall-time comparison.
Prints the held-out accuracy and writes a PNG loss curve with the rollback
marked.  `--json` ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys

from .benchmark import harness

# Generous: the whole demo takes about two minutes on 2 CPUs.
WORLD_TIMEOUT_S = 900
# Imported once by a forkserver, so each rank starts in milliseconds.  DDP's
# constructor imports torch._dynamo lazily, which alone takes 5-10 s per
# process on a busy 2-CPU host.
PRELOAD = ["torch", "torch.distributed", "torch.nn.parallel", "torch._dynamo", "numpy", "ringflow",
           "ringflow.versions.training", "ringflow.jobs.gru"]


def _worker(rank, world, backend, opts):
    """One rank (run by benchmark.harness, which sets MASTER_ADDR/PORT)."""
    import torch

    torch.set_num_threads(1)  # `world` processes share the machine's cores
    from datetime import timedelta

    import torch.distributed as dist

    import ringflow  # noqa: F401 - registers the backend
    from ringflow.jobs.gru import build
    from ringflow.versions.guard import GuardConfig
    from ringflow.versions.training import TrainConfig, train

    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=120))
    job = build(batch_size=opts["batch_size"])
    inject = {opts["inject_nan"]: (opts["inject_rank"], "nan")} if opts["inject_nan"] >= 0 else {}
    cfg = TrainConfig(steps=opts["steps"], commit_every=opts["commit_every"],
                      store=opts["store"] + "-" + backend, inject=inject,
                      guard=GuardConfig(max_rollbacks=opts["max_rollbacks"]))
    bar = None
    if rank == 0 and opts["progress"]:
        from tqdm import tqdm

        bar = tqdm(total=opts["steps"], desc=f"{backend:>8}", file=sys.stderr, leave=True,
                   dynamic_ncols=True)
    acc = [float("nan")]

    def on_step(step, loss, rollbacks, evaluate):
        if bar is None:
            return
        if step % opts["commit_every"] == 0:
            acc[0] = evaluate()["accuracy"]
        bar.n = step
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc[0]:.3f}", rollbacks=rollbacks)

    res = train(job, cfg, on_step)
    if bar is not None:
        bar.close()
    dist.destroy_process_group()
    return res.__dict__


def run_world(world: int, backend: str, opts: dict, timeout_s: float = WORLD_TIMEOUT_S) -> list[dict]:
    """Runs `world` training processes (forked from a server that has
    imported torch once); returns their results or raises WorldError naming
    the failed ranks."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return harness.run_world(_worker, world, (backend, opts), timeout=timeout_s, context=ctx)


def plot(path: str, runs: dict, rollbacks: list, abandoned: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, losses in runs.items():
        ax.plot([s for s, _ in losses], [v for _, v in losses], label=name, lw=1.2,
                ls="-" if name.startswith("ringflow") else "--")
    if abandoned:
        ax.plot([s for s, _ in abandoned], [v for _, v in abandoned], ".", color="grey", ms=3,
                label="steps undone by the rollback")
    for i, r in enumerate(rollbacks):
        what = "loss spike" if "spike" in r["reason"] else "NaN"
        ax.axvline(r["at_step"], color="red", lw=1, ls=":")
        ax.axvspan(r["to_step"], r["at_step"], color="red", alpha=0.08)
        ax.annotate(f"{what} at step {r['at_step']}:\nevery rank rolled back to step {r['to_step']}",
                    (r["at_step"], 0.95 - 0.12 * i), xycoords=("data", "axes fraction"),
                    color="red", fontsize=8, ha="left", va="top")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over ranks)")
    ax.set_title("GRU on scikit-learn digits, DDP over 4 processes")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ringflow demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=4, help="processes to spawn (default 4)")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps (default 400)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--commit-every", type=int, default=25, help="steps between commits (default 25)")
    p.add_argument("--inject-nan", type=int, default=None, metavar="STEP",
                   help="batch at which one rank's loss becomes NaN (default: 40%% of --steps; -1: none)")
    p.add_argument("--inject-rank", type=int, default=1, help="the rank that gets the NaN (default 1)")
    p.add_argument("--max-rollbacks", type=int, default=3)
    p.add_argument("--out", default="ringflow-demo", help="directory for the stores and the plot")
    p.add_argument("--no-gloo", action="store_true", help="skip the gloo run (no wall-time comparison)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    args = p.parse_args(argv)
    if args.world < 1 or args.steps < 1 or args.commit_every < 1:
        p.error("--world, --steps and --commit-every must be >= 1")
    if args.batch_size % args.world:
        p.error(f"--batch-size {args.batch_size} does not split evenly over --world {args.world}")
    if not 0 <= args.inject_rank < args.world:
        p.error(f"--inject-rank {args.inject_rank} is not a rank of a world of {args.world}")
    inject = int(args.steps * 0.4) if args.inject_nan is None else args.inject_nan
    import importlib.util

    for mod in ("tqdm", "matplotlib", "sklearn"):
        if importlib.util.find_spec(mod) is None:
            p.error(f"the demo needs {mod}: pip install 'ringflow[demo]' "
                    "(tqdm, matplotlib, scikit-learn)")
    import shutil

    out = os.path.abspath(args.out)
    for b in ("ringflow", "gloo"):
        shutil.rmtree(os.path.join(out, f"versions-{b}"), ignore_errors=True)
    opts = {"steps": args.steps, "batch_size": args.batch_size, "commit_every": args.commit_every,
            "inject_nan": inject, "inject_rank": args.inject_rank, "max_rollbacks": args.max_rollbacks,
            "store": os.path.join(out, "versions"), "progress": True}
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    say(f"ringflow demo: GRU on scikit-learn digits, {args.world} processes, {args.steps} steps, "
        f"a commit every {args.commit_every} steps" +
        (f", NaN injected on rank {args.inject_rank} at batch {inject}" if inject >= 0 else ""))
    rf = run_world(args.world, "ringflow", opts)
    gl = None if args.no_gloo else run_world(args.world, "gloo", opts)
    r0 = rf[0]
    png = os.path.join(out, "loss.png")
    curves = {"ringflow": r0["losses"]}
    if gl:
        curves["gloo"] = gl[0]["losses"]
    plot(png, curves, r0["rollbacks"], r0["abandoned"])
    same_rollbacks = all(r["rollbacks"] == r0["rollbacks"] for r in rf)
    summary = {
        "accuracy": r0["test"]["accuracy"], "test_loss": r0["test"]["loss"],
        "final_loss": r0["final_loss"], "rollbacks": len(r0["rollbacks"]),
        "rollback_events": r0["rollbacks"], "all_ranks_same_rollbacks": same_rollbacks,
        "ringflow_s": r0["wall_s"], "gloo_s": gl[0]["wall_s"] if gl else None,
        "gloo_final_loss": gl[0]["final_loss"] if gl else None,
        "gloo_accuracy": gl[0]["test"]["accuracy"] if gl else None,
        "steps": r0["steps"], "world": args.world, "store": opts["store"] + "-ringflow",
        "plot": png,
    }
    for e in r0["rollbacks"]:
        say(f"rollback: {e['reason']} at step {e['at_step']} -> every rank back to commit "
            f"{e['commit'][:12]} (step {e['to_step']})")
    say(f"held-out accuracy: {summary['accuracy']:.4f} (test loss {summary['test_loss']:.4f}), "
        f"final training loss {summary['final_loss']:.4f}")
    if gl:
        say(f"wall time: ringflow {summary['ringflow_s']:.1f} s, gloo {summary['gloo_s']:.1f} s "
            f"(ratio {summary['gloo_s'] / summary['ringflow_s']:.2f}x); gloo final loss "
            f"{summary['gloo_final_loss']:.4f}, accuracy {summary['gloo_accuracy']:.4f}")
    say(f"loss curve: {png}")
    say(f"versions: ringflow versions --store {summary['store']} log")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
