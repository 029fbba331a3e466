"""Shared pytest set-up: fixture notebooks are inputs of CLI tests, not chapters for nbval.

One OpenMP thread per process unless the caller chose otherwise: on a loaded 2-core machine torch's
spinning threads made a fast-mode cell of chapter 06 take 3 minutes instead of a second (the notebooks'
kernels inherit this variable; so do pytest-xdist's workers).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

collect_ignore_glob = ["fixtures/*"]
