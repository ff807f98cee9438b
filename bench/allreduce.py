"""Allreduce benchmark, ringflow vs gloo; see bench/README.md."""
import importlib.util, pathlib, sys
if importlib.util.find_spec("ringflow") is None:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "python"))
if __name__ == "__main__":
    import ringflow.benchmark; sys.exit(ringflow.benchmark.main())
