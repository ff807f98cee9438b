"""`ringflow versions --store DIR log|show|diff|checkout|rollback|tag|fsck|gc`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .errors import StoreError


def _fmt_metrics(m: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())


def _log(store, args) -> int:
    entries = store.log(args.rev, limit=args.limit)
    if args.json:
        print(json.dumps(entries))
        return 0
    print(f"{'id':<12}  {'step':>6}  {'time':<19}  {'metrics':<24}  message")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
        print(f"{e['id'][:12]}  {e['step']:>6}  {when}  {_fmt_metrics(e['metrics']):<24}  {e['message']}")
        for r in e["rollbacks"]:
            print(f"{'':12}  ^ ROLLBACK to here at step {r['step']} from {r['from'][:12]}: {r['reason']}")
    return 0


def _diff(store, args) -> int:
    d = store.diff(args.a, args.b)
    if args.json:
        print(json.dumps(d))
        return 0
    print(f"diff {d['a'][:12]} -> {d['b'][:12]}")
    print(f"{'tensor':<40} {'changed':<8} {'max|Δ|':>12} {'rel L2':>12}")
    for name, t in d["tensors"].items():
        mx = "-" if t["max_abs"] is None else f"{t['max_abs']:.6g}"
        rl = "-" if t["rel_l2"] is None else f"{t['rel_l2']:.6g}"
        note = f"  ({t['note']})" if "note" in t else ""
        print(f"{name:<40} {'yes' if t['changed'] else 'no':<8} {mx:>12} {rl:>12}{note}")
    for k, m in d["metrics"].items():
        delta = "-" if m["delta"] is None else f"{m['delta']:+.6g}"
        print(f"metric {k}: {m['a']} -> {m['b']} ({delta})")
    return 0


def _checkout(store, args) -> int:
    from .tree import flatten

    state = store.checkout(args.rev)          # verifies every object's hash
    _, tensors = flatten(state)
    cid = store.resolve(args.rev)
    if args.out:
        import torch

        torch.save(state, args.out)
        print(f"wrote the state of {cid[:12]} ({len(tensors)} tensors) to {args.out}")
    else:
        print(f"commit {cid}: {len(tensors)} tensors verified")
        for n, t in tensors.items():
            print(f"  {n:<40} {str(t.dtype).removeprefix('torch.'):<9} {list(t.shape)}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="ringflow versions", description=__doc__)
    p.add_argument("--store", required=True, help="the store's directory")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("log", help="commits reachable from HEAD, newest first; rollbacks marked")
    s.add_argument("rev", nargs="?", default="HEAD")
    s.add_argument("--limit", type=int)
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("show", help="one commit: metadata and manifest")
    s.add_argument("rev", nargs="?", default="HEAD")
    s = sub.add_parser("diff", help="per tensor: changed?, max |Δ|, relative L2 change; metric deltas")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("checkout", help="verify and list (or --out FILE: torch.save) a commit's state")
    s.add_argument("rev")
    s.add_argument("--out")
    s = sub.add_parser("rollback", help="move HEAD back to a commit (the old line stays under refs/abandoned)")
    s.add_argument("rev")
    s.add_argument("--reason", default="manual rollback")
    s = sub.add_parser("tag", help="name a commit")
    s.add_argument("name")
    s.add_argument("rev", nargs="?", default="HEAD")
    sub.add_parser("fsck", help="verify every hash; exit status 1 when anything is wrong")
    sub.add_parser("gc", help="remove unreachable objects and stray temporary files")
    args = p.parse_args(argv)

    from .store import Store

    try:
        store = Store(args.store, create=False)
        if args.cmd == "log":
            return _log(store, args)
        if args.cmd == "show":
            print(json.dumps(store.show(args.rev), indent=1))
            return 0
        if args.cmd == "diff":
            return _diff(store, args)
        if args.cmd == "checkout":
            return _checkout(store, args)
        if args.cmd == "rollback":
            e = store.rollback(args.rev, reason=args.reason)
            print(f"HEAD {e['from'][:12]} -> {e['to'][:12]}" +
                  (f" (old line kept as {e['saved_as']})" if e["saved_as"] else ""))
            return 0
        if args.cmd == "tag":
            print(f"refs/tags/{args.name} -> {store.tag(args.name, args.rev)}")
            return 0
        if args.cmd == "fsck":
            problems = store.fsck()
            for pr in problems:
                print(pr)
            print("clean" if not problems else f"{len(problems)} problem(s)")
            return 1 if problems else 0
        if args.cmd == "gc":
            print(json.dumps(store.gc()))
            return 0
    except StoreError as e:
        print(f"ringflow versions: {e}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
