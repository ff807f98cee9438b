"""The `ringflow` command: `info`, `bench`, `aggregator`, `versions`, `demo`, `tune` and the
training service (`master`, `worker`, `submit`, `jobs`, `job`, `data`)."""

from __future__ import annotations

import argparse
import sys


def _cuda_status() -> str:
    from . import _C

    if not _C.build_info()["cuda"]:
        return "not compiled (built without CUDA)"
    try:
        n = _C.kernels.cuda_devices()
    except _C.Error as e:
        return f"compiled, no usable device ({str(e).split(': ', 1)[-1]})"
    return f"compiled, {n} usable device{'s' if n != 1 else ''}" if n else "compiled, no device"


def _nccl_status() -> str:
    from . import nccl

    found = nccl.find()
    return f"found {found[1]} ({found[0]})" if found else "not found"


def info() -> int:
    import ringflow

    b = ringflow.build_info()
    print(f"ringflow {b['version']}")
    print(f"  CUDA:                  {_cuda_status()}")
    print(f"  NCCL:                  {_nccl_status()}")
    print(f"  CPU SIMD level:        {b['simd']}")
    print(f"  transports:            {', '.join(b['transports'])}")
    try:
        import torch

        registered = "yes" if "ringflow" in torch.distributed.Backend.backend_list else "no"
        print(f"  torch:                 {torch.__version__} (backend registered: {registered})")
    except ImportError:
        print("  torch:                 not installed (the torch.distributed backend needs it)")
    return 0


SERVICE_COMMANDS = {
    "master": "run the training service's master (see `ringflow master --help`)",
    "worker": "run a training-service worker (see `ringflow worker --help`)",
    "submit": "queue a job (JOB.toml) with the master; prints its id",
    "jobs": "list the master's jobs",
    "job": "one job's state and metrics (--json)",
    "data": "the master's dataset repository: add, ls, show, verify, rm",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringflow", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="what this build contains and what this machine can use")
    sub.add_parser("bench", help="allreduce benchmark beside gloo (see `ringflow bench --help`)",
                   add_help=False)
    sub.add_parser("aggregator", help="run the gradient-packet aggregator service "
                   "(see `ringflow aggregator --help`)", add_help=False)
    sub.add_parser("versions", help="inspect a version store: log, show, diff, checkout, rollback, "
                   "tag, fsck, gc (see `ringflow versions --help`)", add_help=False)
    sub.add_parser("demo", help="train the GRU reference job on 4 local processes with versions "
                   "and an automatic rollback (see `ringflow demo --help`)", add_help=False)
    sub.add_parser("timeline", help="join per-rank RINGFLOW_TIMELINE traces: "
                   "ringflow timeline merge OUT.json RANK.json...", add_help=False)
    sub.add_parser("tune", help="measure the links, search for the best schedule and cache it; "
                   "--show, --export (see `ringflow tune --help`)", add_help=False)
    for name, text in SERVICE_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _run(argv: list[str]) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0 if not argv else 2
    if args.command == "info":
        if rest:
            parser.error(f"unexpected arguments: {' '.join(rest)}")
        return info()
    if args.command == "aggregator":
        from . import aggregator

        return aggregator.main(rest)
    if args.command == "versions":
        from .versions import cli as versions_cli

        return versions_cli.main(rest)
    if args.command == "timeline":
        from . import timeline

        return timeline.main(rest)
    if args.command == "tune":
        from .tune import cli as tune_cli

        return tune_cli.main(rest)
    if args.command in SERVICE_COMMANDS:
        from .service import cli as service_cli

        return service_cli.main(args.command, rest)
    if args.command == "demo":
        from . import demo

        return demo.main(rest)
    from . import benchmark

    return benchmark.main(rest) or 0


def main(argv=None) -> int:
    """User errors (bad settings, bad arguments) print one line and exit 2;
    anything else is a bug and keeps its traceback."""
    from .errors import Error, InvalidArgument

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except (InvalidArgument, ValueError, Error, OSError) as e:
        print(f"ringflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
