"""Former name of `ringflow.kernels`, kept so `from ringflow import ops` works."""

import sys

from . import kernels

sys.modules[__name__] = kernels
