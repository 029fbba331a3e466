"""nbval runs these chapters in kernels that inherit this process's environment: one OpenMP thread per
kernel unless the caller chose otherwise (tests/conftest.py says why)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
