"""Reductions of random non-integer floats against gloo.

Small integers (collective_cases.py) sum to the same bits in any order, so
they cannot show a reduction order that differs from gloo's.  Here every
value is a random real number, and:

- allreduce sum of float32/float64 on the shared-memory arena's copy-in
  steps (messages up to RINGFLOW_SHM_SMALL_BYTES, 256 KiB) must be
  bit-identical to ringflow's ring, as algo/shm_allreduce.cc claims (it
  reduces every block in the ring's order b+1, b+2, ..., b);
- the same sums must be bit-identical to gloo where gloo adds in the ring's
  order too: messages of at least 128 KiB whose count the world size
  divides.  This test found the two exceptions: gloo reduces smaller
  messages in another order, and it cuts ring blocks differently (ringflow
  gives the remainder's elements one to each of the first blocks, gloo makes
  the last block short), so the elements between the two cuts add in
  another order;
- everything else (counts the world size does not divide, the arena's
  single-copy path, which adds the owner's data first so the output may
  alias it, reduce, reduce_scatter, avg, float16/bfloat16) must agree within
  the bound of a sum of n terms in any order: each result is within
  (n-1)*u*sum|x_i| of the exact sum (u the unit roundoff of the dtype), so
  two of them within twice that, plus one rounding of each result (a final
  division, a cast).
"""

from __future__ import annotations

import hashlib

import pytest

from worlds import init_torch, run_world

SMALL_BYTES = 256 << 10  # RINGFLOW_SHM_SMALL_BYTES' default: the arena's copy-in steps
GLOO_RING_BYTES = 128 << 10  # from here up gloo adds in the ring's order (measured)
# Counts per rank: the world size times these, and these plus one (not divisible).
MULTIPLES = [1, 7, 333, 1 << 14, 1 << 18]


def _inputs(torch, rank, n, dtype, salt):
    g = torch.Generator().manual_seed(7919 * rank + 31 * n + salt)
    # Mixed signs and magnitudes: rounding then depends on the order.
    x = torch.randn(n, generator=g, dtype=torch.float64) * torch.exp2(
        torch.randint(-8, 9, (n,), generator=g).to(torch.float64))
    return x.to(dtype)


def _unit_roundoff(torch, dtype):
    return {torch.float32: 2.0**-24, torch.float64: 2.0**-53,
            torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]


def _bound(torch, inputs_abs_sum, result, size, dtype):
    """Largest difference two summation orders of `size` terms may give."""
    u = _unit_roundoff(torch, dtype)
    return 2 * (size - 1) * u * inputs_abs_sum + 2 * u * result.abs().to(torch.float64)


def _beyond_bound(torch, what, ours, ref, bound):
    diff = (ours.to(torch.float64) - ref.to(torch.float64)).abs()
    if diff.numel() == 0:
        return []
    worst = int(torch.argmax(diff - bound))
    if diff[worst] <= bound[worst]:
        return []
    return [f"{what}: element {worst} differs by {float(diff[worst])}, "
            f"beyond the order bound {float(bound[worst])}"]


def compare(rank, size, algo):
    import torch
    import torch.distributed as dist

    dist_ = init_torch(rank, size)
    gloo = dist_.new_group(backend="gloo")
    failures, count, digests = [], 0, {}
    # Allreduce sum, float32 and float64: bit-identical where the order is
    # gloo's, else within the order bound.
    for dtype in (torch.float32, torch.float64):
        for n in [m * size + extra for m in MULTIPLES for extra in (0, 1)]:
            x = _inputs(torch, rank, n, dtype, 1)
            ours, ref = x.clone(), x.clone()
            dist.all_reduce(ours)
            dist.all_reduce(ref, group=gloo)
            count += 1
            nbytes = n * x.element_size()
            if nbytes <= SMALL_BYTES:
                digests[f"{dtype} n={n}"] = hashlib.sha256(ours.numpy().tobytes()).hexdigest()
            ring_order = algo == "ring" or nbytes <= SMALL_BYTES
            gloos_order = ring_order and n % size == 0 and nbytes >= GLOO_RING_BYTES
            if gloos_order or size == 2:  # two terms add alike in either order
                if not torch.equal(ours, ref):
                    bad = int((ours != ref).sum())
                    failures.append(f"all_reduce sum {dtype} n={n}: {bad} elements differ from gloo's bits")
                continue
            abs_sum = sum(_inputs(torch, r, n, dtype, 1).abs().to(torch.float64) for r in range(size))
            failures += _beyond_bound(torch, f"all_reduce sum {dtype} n={n}", ours, ref,
                                      _bound(torch, abs_sum, ref, size, dtype))
    # Within the order bound: the rest.
    cases = [("all_reduce avg", dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16)]
    cases += [("all_reduce sum", dtype) for dtype in (torch.float16, torch.bfloat16)]
    cases += [("reduce sum", torch.float32), ("reduce_scatter sum", torch.float32)]
    for what, dtype in cases:
        for n in (7, 1001, 1 << 16):
            per_rank = [_inputs(torch, r, n * size, dtype, 2) for r in range(size)]
            x = per_rank[rank]
            abs_sum = sum(t.abs().to(torch.float64) for t in per_rank)
            if what.startswith("all_reduce"):
                op = dist.ReduceOp.AVG if "avg" in what else dist.ReduceOp.SUM
                ours, ref = x.clone(), x.clone()
                dist.all_reduce(ours, op=op)
                dist.all_reduce(ref, op=op, group=gloo)
                if op == dist.ReduceOp.AVG:
                    abs_sum = abs_sum / size
            elif what.startswith("reduce_scatter"):
                ours, ref = torch.empty(n, dtype=dtype), torch.empty(n, dtype=dtype)
                dist.reduce_scatter_tensor(ours, x)
                dist.reduce_scatter_tensor(ref, x, group=gloo)
                abs_sum = abs_sum[rank * n:(rank + 1) * n]
            else:
                ours, ref = x.clone(), x.clone()
                dist.reduce(ours, 0)
                dist.reduce(ref, 0, group=gloo)
                if rank != 0:
                    continue
            count += 1
            failures += _beyond_bound(torch, f"{what} {dtype} n={n}", ours, ref,
                                      _bound(torch, abs_sum, ref, size, dtype))
    dist.destroy_process_group()
    return count, failures, digests


@pytest.mark.parametrize("size", [2, 3])
def test_random_floats_match_gloo_and_the_arena_matches_the_ring(size):
    by_algo = {algo: run_world(size, compare, algo, timeout=300, env={"RINGFLOW_ALGO": algo})
               for algo in ("auto", "ring")}
    failures = []
    for algo, results in by_algo.items():
        assert all(count > 0 for count, _, _ in results)
        failures += [f"{algo}, rank {r}: {f}" for r, (_, fs, _) in enumerate(results) for f in fs]
    arena, ring = by_algo["auto"][0][2], by_algo["ring"][0][2]
    assert arena.keys() == ring.keys() and arena
    failures += [f"arena and ring differ in bits: all_reduce sum {case}"
                 for case in arena if arena[case] != ring[case]]
    assert not failures, "\n".join(failures[:20])
