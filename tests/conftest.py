import os
import sys

# Tests run against the in-tree package (python/ringflow with a built _C*.so)
# unless an installed ringflow is already importable.
_PY = os.path.join(os.path.dirname(__file__), "..", "python")
if os.path.isdir(_PY) and _PY not in sys.path:
    sys.path.insert(0, os.path.abspath(_PY))
