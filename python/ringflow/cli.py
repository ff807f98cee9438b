"""The `ringflow` command: `ringflow info`, `ringflow bench ...`, `ringflow aggregator ...`,
`ringflow versions ...`, `ringflow demo ...`."""

from __future__ import annotations

import argparse
import sys


def info() -> int:
    import ringflow

    b = ringflow.build_info()
    print(f"ringflow {b['version']}")
    print(f"  CUDA kernels compiled: {'yes' if b['cuda'] else 'no'}")
    print(f"  CPU SIMD level:        {b['simd']}")
    print(f"  transports:            {', '.join(b['transports'])}")
    try:
        import torch

        registered = "yes" if "ringflow" in torch.distributed.Backend.backend_list else "no"
        print(f"  torch:                 {torch.__version__} (backend registered: {registered})")
    except ImportError:
        print("  torch:                 not installed (the torch.distributed backend needs it)")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="ringflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what this build contains")
    sub.add_parser("bench", help="allreduce benchmark beside gloo (see `ringflow bench --help`)",
                   add_help=False)
    sub.add_parser("aggregator", help="run the gradient-packet aggregator service "
                   "(see `ringflow aggregator --help`)", add_help=False)
    sub.add_parser("versions", help="inspect a version store: log, show, diff, checkout, rollback, "
                   "tag, fsck, gc (see `ringflow versions --help`)", add_help=False)
    sub.add_parser("demo", help="train the GRU reference job on 4 local processes with versions "
                   "and an automatic rollback (see `ringflow demo --help`)", add_help=False)
    args, rest = parser.parse_known_args(argv)
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
    if args.command == "demo":
        from . import demo

        return demo.main(rest)
    from . import benchmark

    return benchmark.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
