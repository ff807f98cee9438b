"""Cached schedules as an NCCL-tuner-style CSV table (the format of NCCL's
example tuner plugin: collective_type,min_bytes,max_bytes,algorithm,
protocol,channels,nNodes,nRanks,numPipeOps,regBuff), one row per size
rule, with the ring order, groups and piece size as comment lines above
each topology's rows -- a static table users of NCCL and Open MPI know,
here filled from measurement and search."""

from __future__ import annotations

import io

HEADER = "collective_type,min_bytes,max_bytes,algorithm,protocol,channels,nNodes,nRanks,numPipeOps,regBuff"
_MAX = 2 ** 63 - 1


def rows(entry: dict) -> list[str]:
    pattern = entry.get("pattern")
    world, nodes = entry["world"], len(set(entry["hosts"]))
    rules = [(0, "auto")] if pattern is None else [tuple(r) for r in pattern["algorithms"]]
    out = []
    for i, (lo, name) in enumerate(rules):
        hi = rules[i + 1][0] - 1 if i + 1 < len(rules) else _MAX
        out.append(f"allreduce,{lo},{hi},{name},simple,-1,{nodes},{world},-1,-1")
    return out


def to_csv(entries: dict) -> str:
    buf = io.StringIO()
    buf.write(f"# ringflow tuned schedules; {HEADER}\n")
    for key, entry in sorted(entries.items()):
        pattern = entry.get("pattern")
        buf.write(f"# topology {key}: {entry['world']} ranks on hosts {','.join(entry['hosts'])}\n")
        if pattern is None:
            buf.write("# untuned auto measured fastest: no schedule\n")
        else:
            groups = "none" if pattern["groups"] is None else ",".join(map(str, pattern["groups"]))
            buf.write(f"# ring order {','.join(map(str, pattern['order']))}; groups {groups}; "
                      f"piece {pattern['piece_bytes']} bytes; "
                      f"deterministic {str(pattern.get('deterministic', False)).lower()}\n")
        for row in rows(entry):
            buf.write(row + "\n")
    return buf.getvalue()
