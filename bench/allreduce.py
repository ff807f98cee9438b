"""Allreduce benchmark, ringflow vs gloo; see bench/README.md.  Runs against
the installed package (pip install .), like every script here."""
import sys

import ringflow.benchmark

if __name__ == "__main__":
    sys.exit(ringflow.benchmark.main())
