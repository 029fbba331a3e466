"""nbval runs these chapters in kernels that inherit this process's environment: one OpenMP thread per
kernel unless the caller chose otherwise (tests/conftest.py says why)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

# The Chinese edition (notebooks/zh/) carries the English notebooks' code and outputs unchanged (tests/test_translation.py
# checks that cell for cell), so running it again would only double CI's notebook time.
collect_ignore = ["zh"]
