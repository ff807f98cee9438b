import os
import sys

# Tests run against the in-tree package (python/ringflow with a built _C*.so
# copied in), even when some other ringflow is installed; set
# RINGFLOW_TEST_INSTALLED=1 to test whatever `import ringflow` finds instead
# (e.g. a CUDA build placed on PYTHONPATH).
_PY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "python"))
if not os.environ.get("RINGFLOW_TEST_INSTALLED") and os.path.isdir(_PY):
    sys.path.insert(0, _PY)
