"""The cost model's newer terms on synthetic links (no processes): recursive
doubling priced by a hand count of its rounds (folded for a world that is
not a power of two), chosen for latency-bound sizes and not for large ones;
the aggregator a candidate only once calibrated, and chosen per size where
its fitted line is cheaper; the per-call and latency terms fitted back from
timings the model itself would predict."""

import pytest

from ringflow.tune.calibrate import fit_latency
from ringflow.tune.cost import CostModel, Overheads
from ringflow.tune.pattern import BUCKETS, Links, Pattern


def uniform(n, bw=100e6, lat=1e-3):
    """n ranks on n hosts, every link `bw` bytes/s and `lat` seconds."""
    hosts = tuple(f"h{r}" for r in range(n))
    return Links(hosts, tuple(tuple(0.0 if a == b else lat for b in range(n)) for a in range(n)),
                 tuple(tuple(0.0 if a == b else bw for b in range(n)) for a in range(n)))


def doubling(n, algorithms=((0, "recursive_doubling"),)):
    return Pattern(tuple(range(n)), None, 64 << 10, algorithms)


@pytest.mark.parametrize("n", [4, 8, 6])
def test_recursive_doubling_matches_a_hand_count(n):
    links = uniform(n)
    model = CostModel(links)
    over = model.over
    s = 4 << 10
    # Every round swaps the whole message on every pair's own link (one
    # rank per host, so no two pairs share one) and reduces all of it.
    swap = 1e-3 + s / 100e6 + over.piece_s
    rounds = (n.bit_length() - 1)
    want = rounds * (swap + s / over.reduce_bandwidth)
    if n & (n - 1):  # folded: one more swap in (with its reduction), one out
        want += (swap + s / over.reduce_bandwidth) + swap
    assert model.predict(doubling(n), s) == pytest.approx(want, rel=1e-12)
    ring = 2 * (n - 1) * 1e-3
    assert model.predict(doubling(n), s) < model.predict(doubling(n, ((0, "ring"),)), s)
    assert model.predict(doubling(n), s) < ring  # fewer latencies than the ring pays


def test_search_picks_recursive_doubling_small_and_the_ring_large():
    model = CostModel(uniform(8, bw=1e9, lat=200e-6))
    _, completed = model.complete(Pattern(tuple(range(8))))
    assert completed.algorithm_for(BUCKETS[0]) == "recursive_doubling"
    assert completed.algorithm_for(BUCKETS[-1]) == "ring"


def test_aggregator_is_a_candidate_only_when_calibrated():
    links = uniform(4)
    assert "aggregate" not in CostModel(links).candidates(Pattern((0, 1, 2, 3)))
    # A service cheaper than any ring at large sizes, dearer at small ones.
    agg = Overheads(agg_fixed_s=0.5, agg_per_byte_s=1e-10)
    model = CostModel(links, agg)
    assert "aggregate" in model.candidates(Pattern((0, 1, 2, 3)))
    _, completed = model.complete(Pattern((0, 1, 2, 3)))
    assert completed.algorithm_for(BUCKETS[-1]) == "aggregate"
    assert completed.algorithm_for(BUCKETS[0]) != "aggregate"
    s = BUCKETS[-1]
    assert model.predict(completed, s) == pytest.approx(0.5 + 1e-10 * s, rel=1e-12)


@pytest.mark.parametrize("call_s,scale", [(300e-6, 1.0), (0.0, 0.4), (150e-6, 2.5)])
def test_fit_latency_recovers_the_terms_it_is_given(call_s, scale):
    links = uniform(4, bw=1e9, lat=100e-6)
    truth = CostModel(links, Overheads(call_s=call_s, latency_scale=scale), shm=False)
    runs = [("ring", 4 << 10), ("ring", 64 << 10), ("recursive_doubling", 4 << 10)]
    measured = {(a, b): truth.predict(Pattern((0, 1, 2, 3), algorithms=((0, a),)), b)
                for a, b in runs}
    fitted = fit_latency(links, Overheads(), measured)
    assert fitted.call_s == pytest.approx(call_s, abs=1e-9)
    assert fitted.latency_scale == pytest.approx(scale, rel=1e-6)


def test_fit_latency_keeps_both_terms_non_negative():
    links = uniform(4, bw=1e9, lat=100e-6)
    # Faster than the links' latency alone allows: no negative call cost.
    fitted = fit_latency(links, Overheads(), {("ring", 4 << 10): 1e-5, ("ring", 64 << 10): 2e-5,
                                              ("recursive_doubling", 4 << 10): 1e-5})
    assert fitted.call_s >= 0 and fitted.latency_scale >= 0


@pytest.mark.parametrize("rules,cut,want", [
    # recursive doubling below 256 KiB; cut at 16 KiB: the next rule's from there
    (((0, "recursive_doubling"), (262144, "hierarchical")), 16384,
     ((0, "recursive_doubling"), (16384, "hierarchical"))),
    # cut at 0: gone
    (((0, "recursive_doubling"), (16384, "hierarchical")), 0, ((0, "hierarchical"),)),
    # the last rule: the ring takes over
    (((0, "ring"), (4096, "recursive_doubling")), 65536,
     ((0, "ring"), (4096, "recursive_doubling"), (65536, "ring"))),
    # a rule in the middle, cut at its start: dropped, neighbours merge
    (((0, "ring"), (4096, "recursive_doubling"), (65536, "ring")), 4096, ((0, "ring"),)),
])
def test_ending_a_rule_below_a_size(rules, cut, want):
    p = Pattern((0, 1, 2), None, 65536, rules)
    q = p.ending_below(cut)
    assert q.algorithms == want
    q.check(3)
    for b in (0, 1000, 4096, 16384, 65536, 1 << 20):
        if b < cut:
            assert q.algorithm_for(b) == p.algorithm_for(b)
