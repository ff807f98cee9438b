import os
import sys

# Let `import worlds` work from every test module and from forked children.
sys.path.insert(0, os.path.dirname(__file__))
