"""The client commands: `ringflow submit`, `ringflow jobs`, `ringflow job`, `ringflow data`.

Each takes `--master HOST:PORT` (default: RINGFLOW_MASTER) and makes one
request.  `submit` returns at once with the job id as its last line; it
never waits on training (`ringflow job ID --wait S` waits, with a limit).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import jobspec
from .protocol import ServiceError, call, parse_address


def _master_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--master", default=None, help="HOST:PORT (default: RINGFLOW_MASTER)")


def submit(argv) -> int:
    p = argparse.ArgumentParser(prog="ringflow submit", description="queue a job; prints its id")
    p.add_argument("job_file", metavar="JOB.toml")
    _master_arg(p)
    args = p.parse_args(argv)
    with open(args.job_file, encoding="utf-8") as f:
        spec = jobspec.parse(f.read(), args.job_file)
    reply, _ = call(parse_address(args.master), "submit", spec=spec)
    print(reply["job"])
    return 0


def jobs(argv) -> int:
    p = argparse.ArgumentParser(prog="ringflow jobs", description="every job and its state")
    _master_arg(p)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = call(parse_address(args.master), "jobs")[0]["jobs"]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'id':>5}  {'name':<20} {'mode':<9} {'state':<8} {'step':>7}  error")
    for j in rows:
        print(f"{j['id']:>5}  {j['name'][:20]:<20} {j['spec']['mode']:<9} {j['state']:<8} "
              f"{j['step']:>4}/{j['spec']['steps']:<4} {j['error'] or ''}")
    return 0


def job(argv) -> int:
    p = argparse.ArgumentParser(prog="ringflow job", description="one job's state and metrics")
    p.add_argument("id", type=int)
    _master_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for the job to end (done or failed)")
    args = p.parse_args(argv)
    address, deadline = parse_address(args.master), time.monotonic() + args.wait
    while True:
        j = call(address, "job", job=args.id)[0]["job"]
        if j["state"] in ("done", "failed") or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if args.json:
        print(json.dumps(j))
    else:
        print(f"job {j['id']} {j['name']}: {j['state']} at step {j['step']}/{j['spec']['steps']} "
              f"({j['spec']['mode']}, {j['spec']['workers']} workers, dataset {j['spec']['dataset']})")
        if j["error"]:
            print(f"  error: {j['error']}")
        for k, v in sorted(j["metrics"].items()):
            print(f"  {k}: {v}")
        for k in ("params_sha256", "head"):
            if j[k]:
                print(f"  {k}: {j[k]}")
    # --json says the state itself; the plain form's exit status does (1: the job failed)
    return 0 if args.json or j["state"] != "failed" else 1


def data(argv) -> int:
    p = argparse.ArgumentParser(prog="ringflow data", description="the dataset repository")
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="ingest SOURCE (.csv .npy .npz .jsonl or module:function)")
    add.add_argument("name")
    add.add_argument("source", help="a file (streamed to the master unless it is on this host's "
                     "loopback), or module:function (a generator the master runs)")
    add.add_argument("--upload", action="store_true",
                     help="stream the file even to a master on loopback")
    add.add_argument("--annotate", metavar="module:function",
                     help="called on every record: returns it (changed or not) or None to reject it")
    for action in ("ls", "show", "verify", "rm"):
        s = sub.add_parser(action)
        if action != "ls":
            s.add_argument("dataset", help="NAME or NAME@VERSION")
    for s in sub.choices.values():
        _master_arg(s)
        s.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    address = parse_address(args.master)
    if args.action == "add":
        out = _data_add(address, args)
        text = (f"{out['name']}@{out['version']}: {out['records']} records in {len(out['shards'])} "
                f"shard(s), {out['rejected']} rejected by the annotation hook")
    elif args.action == "ls":
        out = call(address, "data_ls")[0]["datasets"]
        text = "\n".join(f"{d['name']}@{d['version']}: {d['records']} records, {d['shards']} shard(s), "
                         f"{d['bytes']} bytes, {d['rejected']} rejected" for d in out) or "(none)"
    elif args.action == "show":
        out = call(address, "data_show", dataset=args.dataset)[0]["manifest"]
        text = json.dumps(out, indent=1)
    elif args.action == "verify":
        out = call(address, "data_verify", dataset=args.dataset, timeout=3600)[0]["problems"]
        text = "\n".join(out) or f"{args.dataset}: every shard matches its hash"
    else:
        out = call(address, "data_rm", dataset=args.dataset)[0]["removed"]
        text = f"removed {args.dataset} version(s) {', '.join(map(str, out))}"
    print(json.dumps(out) if args.json else text)
    return 1 if args.action == "verify" and out else 0


def _data_add(address, args) -> dict:
    """A master on loopback reads a local file itself (the fast path); any other gets its bytes."""
    import os

    from .protocol import is_loopback
    from .uploads import send

    fields = dict(name=args.name, annotate=args.annotate, timeout=3600)
    if not os.path.exists(args.source):   # module:function, or a name the master reports unknown
        return call(address, "data_add", source=args.source, **fields)[0]["manifest"]
    source = os.path.abspath(args.source)
    if is_loopback(address[0]) and not args.upload and os.access(source, os.R_OK):
        return call(address, "data_add", source=source, **fields)[0]["manifest"]
    uid, sha256 = send(lambda op, payload, **f: call(address, op, payload, **f), source)
    return call(address, "data_add", source=source, upload=uid, sha256=sha256,
                **fields)[0]["manifest"]


COMMANDS = {"submit": submit, "jobs": jobs, "job": job, "data": data}


def main(command: str, argv) -> int:
    """Runs one client command (or `master`/`worker`); a refused request prints one line, exits 1."""
    try:
        if command == "master":
            from . import master

            return master.main(argv)
        if command == "worker":
            from . import worker

            return worker.main(argv)
        return COMMANDS[command](argv)
    except ServiceError as e:
        print(f"ringflow {command}: error: {e}", file=sys.stderr)
        return 1
