"""Reference jobs.  Each module has `build(**config) -> Job` (the entry-point contract,
e.g. "ringflow.jobs.gru:build"), so services and benchmarks can name a job by string.

The training service calls `build(seed=, lr=, batch_size=, data=)` where `data` is the
job's dataset as {field: numpy array} (e.g. 'x' and 'y'); the Job it returns gives the
model (initialised from `seed`, equal in every process), `make_optimizer`, `loss_fn`
(mean over a batch) and `train`/`test` tensors built deterministically from `data`:
the service's sample ids index `train`.  Jobs: gru (8x8 digits read row by row),
mlp (tabular x/y, classes = the distinct values of y).
"""


from .base import Job, load_entry_point

__all__ = ["Job", "load_entry_point"]
