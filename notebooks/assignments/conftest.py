"""The assignments are instructor sources, not chapters: nbval does not collect them.

tests/test_grading.py covers them instead: it grades each instructor version (full points), each
student version (every graded cell fails cleanly) and runs `nbgrader validate` on them.
"""

collect_ignore_glob = ["*.ipynb"]
