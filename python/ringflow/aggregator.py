"""The gradient-packet aggregator service (SwitchML-style in-network aggregation), from Python.

`Aggregator(workers=N)` binds a UDP port on 127.0.0.1 and serves on a
thread of its own; workers reach it with RINGFLOW_ALGO=aggregate and
RINGFLOW_AGGREGATOR=host:port.  `ringflow aggregator --port P --workers N`
runs one in the foreground, on 127.0.0.1 unless --host says otherwise.
Listening beyond loopback (--host 0.0.0.0, or an interface's address)
needs a token, RINGFLOW_AGG_TOKEN, in the aggregator's environment and
every worker's; it then authenticates every packet.

A job's entry (one of --jobs) frees when every worker of it has shut down
its communicator, or after --job-idle-s seconds without packets.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from . import _C

__all__ = ["Aggregator", "main"]


class Aggregator:
    """A running aggregator.  Stop it with close() or a `with` block."""

    def __init__(self, workers: int, host: str = "127.0.0.1", port: int = 0, jobs: int = 4,
                 slots: int = _C.DEFAULT_SLOTS, packet_elems: int = _C.DEFAULT_PACKET_ELEMS,
                 token: str | None = None, faults: str = "", job_idle_s: float = 60.0):
        if token is None:
            token = os.environ.get("RINGFLOW_AGG_TOKEN", "")
        self._core = _C.Aggregator(workers, host=host, port=port, jobs=jobs, slots=slots,
                                   packet_elems=packet_elems, token=token, faults=faults,
                                   job_idle_s=job_idle_s)
        self.host = host
        self._core.start()

    @property
    def port(self) -> int:
        return self._core.port

    @property
    def address(self) -> str:
        """What workers put in RINGFLOW_AGGREGATOR."""
        return f"{self.host}:{self.port}"

    def stats(self) -> dict:
        return self._core.stats()

    def close(self) -> None:
        if self._core is not None:
            self._core.stop()
            self._core = None  # joins the service thread

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ringflow aggregator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="UDP port (0: any free one)")
    p.add_argument("--workers", type=int, required=True, help="workers per job (0: any, up to 64)")
    p.add_argument("--jobs", type=int, default=4, help="jobs served side by side (default 4)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; others need RINGFLOW_AGG_TOKEN)")
    p.add_argument("--slots", type=int, default=_C.DEFAULT_SLOTS,
                   help=f"slots per job, the workers' window (default {_C.DEFAULT_SLOTS})")
    p.add_argument("--packet-elems", type=int, default=_C.DEFAULT_PACKET_ELEMS,
                   help=f"largest payload in int32 values (default {_C.DEFAULT_PACKET_ELEMS})")
    p.add_argument("--job-idle-s", type=float, default=60.0,
                   help="a job silent this long gives its entry back (default 60; a job "
                        "whose workers all shut down cleanly gives it back at once)")
    p.add_argument("--stats-every", type=float, default=0,
                   help="print the counters as JSON every this many seconds (default: only at exit)")
    args = p.parse_args(argv)
    try:
        core = _C.Aggregator(args.workers, host=args.host, port=args.port, jobs=args.jobs,
                             slots=args.slots, packet_elems=args.packet_elems,
                             token=os.environ.get("RINGFLOW_AGG_TOKEN", ""),
                             faults=os.environ.get("RINGFLOW_AGG_FAULTS", ""),
                             job_idle_s=args.job_idle_s)
    except (ValueError, _C.Error) as e:
        # A user's mistake (no token beyond loopback, a port in use, a bad
        # flag): one line, as argparse reports its own, not a traceback.
        message = " ".join(str(e).split()).removeprefix("aggregator: ")
        p.exit(2, f"{p.prog}: error: {message}\n")
    print(f"ringflow aggregator listening on {args.host}:{core.port} "
          f"(workers={args.workers}, jobs={args.jobs}, slots={args.slots}, "
          f"packet_elems={args.packet_elems})", flush=True)
    done = threading.Event()

    def stop(*_):
        done.set()
        core.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if args.stats_every > 0:
        def report():
            while not done.wait(args.stats_every):
                print(json.dumps(core.stats()), flush=True)

        threading.Thread(target=report, daemon=True).start()
    core.start()
    while not done.wait(0.5):
        pass
    print(json.dumps(core.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
