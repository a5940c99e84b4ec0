import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
# The test-suite's compiled kernels and generated data sets go to the repository's ignored .cache/, not the
# user's ~/.cache (set before lovasz is imported; subprocesses inherit it).
os.environ.setdefault("LOVASZ_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "lovasz"))
