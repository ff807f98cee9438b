"""Reference jobs.  Each module has `build(**config) -> Job` (the entry-point contract,
e.g. "ringflow.jobs.gru:build"), so services and benchmarks can name a job by string."""

from .base import Job, load_entry_point

__all__ = ["Job", "load_entry_point"]
