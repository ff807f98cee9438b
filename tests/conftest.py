import importlib.util
import os
import sys

# Tests run against the in-tree package (python/ringflow with a built _C*.so)
# unless a ringflow is already importable (installed, or on PYTHONPATH).
_PY = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "python"))
if importlib.util.find_spec("ringflow") is None and os.path.isdir(_PY):
    sys.path.insert(0, _PY)
