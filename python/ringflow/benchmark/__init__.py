"""`ringflow bench` and what benchmarks share: measurement (measure,
memory), output (report) and the process harness (harness), which the test
suite runs its worlds with too."""

from .allreduce import main  # noqa: F401 - `ringflow bench`
