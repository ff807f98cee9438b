"""JOB.toml: what a job request holds, checked before it reaches the pool.

Required: `name`, `dataset` (NAME or NAME@VERSION), `entry` (module:function).
Optional, with defaults: `workers` 1, `mode` "allreduce" (or "ps"), `steps` 100,
`batch_size` 32, `seed` 0, `lr` 0.01, `priority` 0 (higher first),
`commit_every` 10 (steps between version commits), `lease_s` 30 (a calculation
returns to the queue when its worker holds it longer), `micro_batches`
(ps: calculations per step, default `workers`; fixed, so the result does not
depend on how many workers run), `store` (allreduce: the version store's
path, default the master's DIR/jobs/ID/versions, which the workers must see),
`max_restarts` 10 (allreduce: how often the group may be re-formed after a
lost worker or a master restart before the job fails).
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11: the same parser, packaged
    import tomli as tomllib

_KEYS = {  # key: (type(s), default; None = required)
    "name": (str, None), "dataset": (str, None), "entry": (str, None),
    "workers": (int, 1), "mode": (str, "allreduce"), "steps": (int, 100),
    "batch_size": (int, 32), "seed": (int, 0), "lr": ((float, int), 0.01),
    "priority": (int, 0), "commit_every": (int, 10), "lease_s": ((float, int), 30.0),
    "micro_batches": (int, 0), "store": (str, ""), "max_restarts": (int, 10),
}
MODES = ("allreduce", "ps")


def parse(text: str, where: str = "job file") -> dict:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where}: not valid TOML: {e}") from None
    return check(raw, where)


def check(raw: dict, where: str = "job") -> dict:
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(_KEYS))})")
    spec = {}
    for key, (types, default) in _KEYS.items():
        if key not in raw:
            if default is None:
                raise ValueError(f"{where}: missing required key {key!r}")
            spec[key] = default
            continue
        v = raw[key]
        if isinstance(v, bool) or not isinstance(v, types):
            want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise ValueError(f"{where}: {key} = {v!r} must be {want}")
        spec[key] = v
    if spec["mode"] not in MODES:
        raise ValueError(f"{where}: mode = {spec['mode']!r} must be one of {', '.join(MODES)}")
    for key in ("workers", "steps", "batch_size", "commit_every"):
        if spec[key] < 1:
            raise ValueError(f"{where}: {key} = {spec[key]} must be >= 1")
    if spec["lr"] <= 0 or spec["lease_s"] <= 0 or spec["micro_batches"] < 0 \
            or spec["max_restarts"] < 0:
        raise ValueError(f"{where}: lr and lease_s must be > 0, micro_batches and max_restarts >= 0")
    if ":" not in spec["entry"]:
        raise ValueError(f"{where}: entry = {spec['entry']!r} must look like module:function")
    spec["micro_batches"] = spec["micro_batches"] or spec["workers"]
    spec["lr"] = float(spec["lr"])
    spec["lease_s"] = float(spec["lease_s"])
    return spec


def build_job(spec: dict, data: dict):
    """The job's entry point called with the service's arguments (see ringflow.jobs)."""
    from ..jobs import load_entry_point

    return load_entry_point(spec["entry"])(seed=spec["seed"], lr=spec["lr"],
                                           batch_size=spec["batch_size"], data=data)
