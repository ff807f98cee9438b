"""Writes scikit-learn's digits as an NPZ the training service ingests (x: N x 64, y: N).

    python examples/service/digits.py digits.npz && ringflow data add digits digits.npz
"""

import sys

import numpy as np

from ringflow.jobs.gru import load_digits_arrays

x, y = load_digits_arrays()
np.savez(sys.argv[1] if len(sys.argv) > 1 else "digits.npz", x=x, y=y)
