"""The probe of every autograded part of the assignments: grade_id -> ``probes.Probe``.

Each probe builds its inputs from ``seed`` with a ``torch.Generator`` (several cases, including the
edge cases the part's hints are about), calls the learner's function and sets ``result``. The same
code runs against the instructor source, whose result is the reference.
"""

from __future__ import annotations

from mtl_tutorial.grading.probes import Probe

PROBES: dict[str, Probe] = {
    "a06_pcgrad": Probe("pcgrad_two_tasks", """
import torch
g = torch.Generator().manual_seed(seed)
result = []
for _ in range(3):
    v = torch.randn(2, 5, generator=g)
    result.append(pcgrad_two_tasks(v @ v.T))
"""),
}
