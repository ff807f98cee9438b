"""close()'s tail average (ringflow.malt.tail) against an explicit weighted
sum in numpy; its argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ringflow.malt.tail import TailAverage


@pytest.mark.parametrize("steps,taken", [(20, 57), (20, 3), (4, 9), (1.5, 6)])
def test_the_average_weighs_each_step_by_beta_to_its_age(steps, taken):
    rng = np.random.default_rng(int(steps * 100) + taken)
    models = [rng.standard_normal(1000).astype(np.float32) for _ in range(taken)]
    tail = TailAverage(torch.zeros(1000), steps)
    for m in models:
        tail.track(torch.from_numpy(m))
    out = torch.full((1000,), 7.0)
    tail.apply(out)
    beta = 1 - 1 / steps
    ages = np.arange(taken)[::-1]
    weights = beta ** ages
    want = (weights[:, None] * np.stack(models).astype(np.float64)).sum(0) / weights.sum()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-5)


def test_off_or_untouched_leaves_the_model():
    """0 and 1 step (an average of the last model alone) leave the model as
    it is, and so does an average that has taken no step yet."""
    model = torch.arange(6, dtype=torch.float32)
    for tail in (TailAverage(model, 0), TailAverage(model, 1), TailAverage(model, 20)):
        tail.apply(model)
        np.testing.assert_array_equal(model.numpy(), np.arange(6))
    for off in (TailAverage(model, 0), TailAverage(model, 1)):
        off.track(torch.zeros(6))
        off.apply(model)
        np.testing.assert_array_equal(model.numpy(), np.arange(6))


@pytest.mark.parametrize("bad", [0.5, -1, float("nan")])
def test_a_bad_tail_is_named(bad):
    with pytest.raises(ValueError, match="tail_average must be 0"):
        TailAverage(torch.zeros(3), bad)
