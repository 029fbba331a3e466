"""The probe of every autograded part of the assignments: grade_id -> ``probes.Probe``.

Each probe builds its inputs from ``seed`` with a ``torch.Generator`` (several cases, including the
edge cases the part's hints are about), calls the learner's function and sets ``result``. The same
code runs against the instructor source, whose result is the reference.

Every probe starts with ``PRELUDE``: ``g`` (the generator), ``draw(low, high)`` (an int in
[low, high]), ``uniform()`` (a float in [0, 1)), ``filled(module, scale)`` (a module's parameters
drawn from ``g``, so no probe depends on torch's global random state) and ``numeric(value)`` (a
result as a float64 tensor, read the way the visible tests' ``check_close`` reads it: a learner who
returns a list, a number or a float32 tensor where the tests accept one is not marked down).
Where the tests check that an input is left as it was, the probe returns that input after the call.
"""

from __future__ import annotations

from mtl_tutorial.grading.probes import Probe

PRELUDE = '''
import torch

g = torch.Generator().manual_seed(seed)


def draw(low, high):
    return int(torch.randint(low, high + 1, (), generator=g))


def uniform():
    return float(torch.rand((), generator=g, dtype=torch.float64))


def filled(module, scale=1.0):
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=g))
    return module


def numeric(value):
    return torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value).double()

'''

CHECK_CLOSE = {"rtol": 1e-4, "atol": 1e-5}  # check_close's defaults: what the visible tests accept
EXACT = {"rtol": 0.0, "atol": 0.0}  # counts


def _probe(function: str, body: str, tolerance: dict = CHECK_CLOSE) -> Probe:
    return Probe(function, PRELUDE + body.strip() + "\n", **tolerance)


PROBES: dict[str, Probe] = {
    # -- 01 the multi-task objective ------------------------------------------------------------------
    "a01_optimum": _probe("joint_optimum", """
result = []
for lam in (0.0, 0.1 + 0.35 * uniform(), 0.55 + 0.35 * uniform(), 1.0):
    D = draw(2, 5)
    optima = torch.randn(2, D, generator=g)
    factors = torch.randn(2, D, D, generator=g)
    curvatures = factors @ factors.transpose(1, 2) + 0.5 * torch.eye(D)  # full, unequal curvatures
    result.append(numeric(joint_optimum(lam, optima, curvatures)))
""", {"rtol": 1e-3, "atol": 1e-4}),
    "a01_pareto": _probe("pareto_mask", """
result = []
for n, grid in ((draw(20, 40), 5), (draw(5, 12), 2), (draw(8, 16), 0)):  # coarse grids: ties, duplicates
    points = torch.randint(0, grid + 1, (n, 2), generator=g).float() if grid else torch.rand(n, 2, generator=g)
    result.append(numeric(pareto_mask(points)))
result.append(numeric(pareto_mask(torch.full((3, 2), uniform()))))  # identical points: none dominates
""", EXACT),
    "a01_shared": _probe("shared_joint_optimum", """
result = []
for lam in (0.0, 0.1 + 0.35 * uniform(), 0.55 + 0.35 * uniform(), 1.0):
    n, D = draw(12, 30), draw(2, 4)
    x, y = torch.randn(n, D, generator=g), 3 * torch.randn(n, 2, generator=g)
    result.append(numeric(shared_joint_optimum(x, y, lam)))
""", {"rtol": 1e-4, "atol": 1e-4}),
    # -- 02 hard parameter sharing --------------------------------------------------------------------
    "a02_route": _probe("route_to_heads", """
from torch import nn

names = ("sentiment", "pos", "ner")
heads = {task: filled(nn.Linear(4, draw(2, 6))) for task in names}
batches = [[names[int(i)] for i in torch.randint(0, 3, (draw(8, 14),), generator=g)] for _ in range(2)]
batches.append(["pos"] * draw(2, 5))  # one task only: no entry for the others
batches.append([names[int(i)] for i in torch.randperm(6, generator=g) % 2])  # sentiment and pos mixed
result = []
with torch.no_grad():
    for tasks in batches:
        routed = route_to_heads(torch.randn(len(tasks), 4, generator=g), tasks, heads)
        result.append({task: (numeric(outputs), numeric(positions)) for task, (outputs, positions) in routed.items()})
"""),
    "a02_loss": _probe("per_task_losses", """
from torch import nn
from mtl_tutorial.models import HardSharingModel

model = HardSharingModel(nn.Identity(), {task: filled(nn.Linear(4, draw(3, 5))) for task in ("sentiment", "pos")})
result = []
with torch.no_grad():
    for _ in range(3):
        size = draw(8, 14)
        tasks = [("sentiment", "pos")[int(i)] for i in torch.randperm(size, generator=g) % 2]  # interleaved
        routed = model(torch.randn(size, 4, generator=g), tasks)
        losses = per_task_losses(routed, torch.randint(0, 3, (size,), generator=g))
        result.append({task: numeric(loss) for task, loss in losses.items()})
"""),
    "a02_evidence": _probe("paired_verdict", """
result = []
for n, effect, higher_is_better in ((draw(2, 3), 0.0, True), (draw(4, 10), 3.0, True), (draw(4, 10), -3.0, False),
                                    (draw(5, 12), 0.3 * uniform(), False)):
    b = 70 + 5 * torch.randn(n, generator=g, dtype=torch.float64)
    a = b + effect + torch.randn(n, generator=g, dtype=torch.float64)
    mean, low, high, words = paired_verdict(a, b, higher_is_better)
    result.append((numeric([mean, low, high]), words))
""", {"rtol": 1e-3, "atol": 1e-2}),  # the course's t table has 3 decimals; scipy's quantile is exact
    # -- 03 soft sharing and task relations -----------------------------------------------------------
    "a03_penalty": _probe("soft_sharing_penalty", """
from torch import nn

result = []
for num_towers in (2, draw(3, 5), draw(3, 5)):
    width = draw(2, 6)
    towers = [filled(nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))) for _ in range(num_towers)]
    penalty = soft_sharing_penalty(towers)
    (gradient,) = torch.autograd.grad(penalty, towers[-1][2].bias)  # differentiable, biases included
    result.append((numeric(penalty), gradient))
"""),
    "a03_cross_stitch": _probe("cross_stitch", """
result = []
for num_tasks in (2, draw(3, 4), draw(2, 5)):
    alpha = torch.softmax(torch.randn(num_tasks, num_tasks, generator=g), dim=1)  # not symmetric
    h = torch.randn(draw(1, 6), num_tasks, draw(2, 7), generator=g)
    result.append(numeric(cross_stitch(alpha, h)))
"""),
    "a03_gates": _probe("mmoe_mix", """
result = []
for num_tasks, num_experts in ((1, draw(2, 3)), (draw(2, 4), draw(2, 5)), (draw(2, 4), 1)):
    B, D, H = draw(1, 6), draw(2, 6), draw(1, 4)
    x = torch.randn(B, D, generator=g)
    expert_outputs = torch.randn(B, num_experts, H, generator=g)
    gate_weight = 2 * torch.randn(num_tasks, num_experts, D, generator=g)
    gate_bias = torch.randn(num_tasks, num_experts, generator=g)
    result.append(numeric(mmoe_mix(x, expert_outputs, gate_weight, gate_bias)))
"""),
    "a03_affinity": _probe("lookahead_affinity", """
result = []
for num_tasks in (2, draw(3, 4), draw(2, 4)):
    W = torch.randn(draw(2, 4), draw(3, 6), generator=g, dtype=torch.float64)
    heads = [torch.randn(W.shape[0], generator=g, dtype=torch.float64) for _ in range(num_tasks)]
    n = draw(6, 12)
    batches = [(torch.randn(n, W.shape[1], generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64))
               for _ in range(num_tasks)]
    result.append(numeric(lookahead_affinity(W, heads, batches, 0.01 + 0.1 * uniform())))
""", {"rtol": 1e-4, "atol": 1e-6}),
    # -- 04 training schedules ------------------------------------------------------------------------
    "a04_temperature": _probe("temperature_probabilities", """
result = []
for tau in (0.01, 0.3 + 2.7 * uniform(), 1.0, 100.0):
    sizes = torch.randint(10, 5000, (draw(2, 5),), generator=g)
    if tau == 0.01:  # close sizes above 1300: N^(1/τ) overflows float64, softmax(log N / τ) does not
        sizes = draw(1300, 5000) + torch.randint(0, 20, (draw(2, 5),), generator=g)
    result.append(numeric(temperature_probabilities(sizes, tau)))
"""),
    "a04_passes": _probe("expected_passes", """
result = []
for tau in (0.3 + 0.6 * uniform(), 1.0, 1.5 + 8 * uniform()):
    sizes = torch.randint(20, 8000, (draw(2, 5),), generator=g)
    result.append(numeric(expected_passes(sizes, tau, draw(2, 64), draw(10, 2000))))
"""),
    "a04_forgetting": _probe("forgetting_of", """
from mtl_tutorial.training import History

result = []
for metric, higher_is_better in (("A/accuracy", True), ("A/loss", False), ("B/accuracy", True), ("B/loss", False)):
    eval_steps = torch.cumsum(torch.randint(1, 30, (draw(6, 12),), generator=g), 0).tolist()  # irregular
    history = History(("A", "B"))
    for step in eval_steps:
        history.record_eval(step, {"A/accuracy": uniform(), "A/loss": 3 * uniform(), "B/accuracy": uniform(), "B/loss": uniform()})
    phase_end = eval_steps[draw(1, len(eval_steps) - 3)]
    result.append(numeric(forgetting_of(history, metric, phase_end, higher_is_better)))
"""),
    # -- 05 dynamic task weighting --------------------------------------------------------------------
    "a05_gradnorm": _probe("gradnorm_paper_step", """
result = []
# a step depends on the signs of G_t − target_t: the last case's losses fell far (ratios near 0.15), so
# targets from unnormalised ratios fall below every G_t while normalised ones do not
for alpha, fell in ((0.0, 0.2), (0.3 + 1.5 * uniform(), 0.2), (3.0, 0.2), (3.0, 0.05)):
    T, P = draw(3, 5), draw(1, 6)
    task_grads = torch.randn(T, P, generator=g, dtype=torch.float64) * (0.2 + 2 * torch.rand(T, 1, generator=g, dtype=torch.float64))
    weights = T * torch.softmax(torch.randn(T, generator=g, dtype=torch.float64), dim=0)
    initial_losses = 2 * torch.rand(T, generator=g, dtype=torch.float64) + 0.5
    losses = initial_losses * (fell + (1 if fell == 0.2 else 0.25) * torch.rand(T, generator=g, dtype=torch.float64))
    result.append(numeric(gradnorm_paper_step(task_grads, weights, losses, initial_losses, alpha, 0.02 + 0.1 * uniform())))
"""),
    "a05_optimum": _probe("optimal_log_variances", """
result = [numeric(optimal_log_variances(torch.exp(4 * torch.rand(draw(2, 5), generator=g) - 2))) for _ in range(3)]
"""),
    "a05_dwa": _probe("dwa_weights", """
result = []
for temperature in (0.2 + 0.7 * uniform(), 1.0, 1.5 + 4 * uniform()):
    T = draw(2, 5)
    before = 2 * torch.rand(T, generator=g) + 0.1
    last = before * (0.3 + torch.rand(T, generator=g))
    result.append(numeric(dwa_weights(last, before, temperature)))
"""),
    # -- 06 gradient alignment ------------------------------------------------------------------------
    "a06_pcgrad": _probe("pcgrad_two_tasks", """
result = []
for conflicting in (True, False, True):
    grads = torch.randn(2, draw(2, 6), generator=g, dtype=torch.float64)
    grads = grads * (0.1 + 3 * torch.rand(2, 1, generator=g, dtype=torch.float64))  # unequal norms
    if bool(grads[0] @ grads[1] < 0) != conflicting:
        grads[1] = -grads[1]
    result.append(numeric(pcgrad_two_tasks(grads @ grads.T)))
"""),
    "a06_mgda": _probe("mgda_two_tasks", """
result = []
for case in ("inside", "short g_1", "short g_2", "inside"):
    grads = torch.randn(2, draw(2, 6), generator=g, dtype=torch.float64)
    if case == "inside" and bool(grads[0] @ grads[1] > 0):  # conflicting: the minimum lies inside (0, 1)
        grads[1] = -grads[1]
    if case == "short g_1":  # the minimum lies past w = 1: clipped
        grads[0] = grads[1] * (0.05 + 0.4 * uniform())
    if case == "short g_2":  # past w = 0: clipped
        grads[1] = grads[0] * (0.05 + 0.4 * uniform())
    result.append(numeric(mgda_two_tasks(grads @ grads.T)))
"""),
    "a06_cosine": _probe("gradient_cosines", """
result = []
for T in (2, draw(3, 5), draw(2, 6)):
    grads = torch.randn(T, draw(3, 9), generator=g) * (0.01 + 4 * torch.rand(T, 1, generator=g))  # unequal norms
    result.append(numeric(gradient_cosines(grads)))
"""),
    # -- 07 adapters ----------------------------------------------------------------------------------
    "a07_forward": _probe("adapter_forward", """
result = []
for m in (1, draw(2, 4), draw(5, 12)):
    H = draw(m + 1, 16)
    weights = (torch.randn(m, H, generator=g), torch.randn(m, generator=g), torch.randn(H, m, generator=g),
               torch.randn(H, generator=g))
    h = torch.randn(*[draw(1, 4) for _ in range(draw(1, 3))], H, generator=g)  # any leading dimensions
    result.append(numeric(adapter_forward(h, *weights)))
"""),
    "a07_count": _probe("adapter_parameters", """
result = []
for placement in ("houlsby", "pfeiffer", "houlsby", "pfeiffer"):
    result.append(numeric(adapter_parameters(draw(1, 24), draw(8, 1024), draw(1, 64), placement)))
""", EXACT),
    "a07_place": _probe("adapted_projections", """
result = []
for num_layers, placement in ((draw(1, 3), "houlsby"), (draw(2, 12), "pfeiffer"), (draw(4, 12), "houlsby")):
    result.append(sorted(adapted_projections(num_layers, placement)))
"""),
    # -- 08 LoRA --------------------------------------------------------------------------------------
    "a08_forward": _probe("lora_forward", """
result = []
for r in (1, draw(2, 4), draw(5, 8)):
    d_in, d_out = draw(r + 1, 12), draw(2, 12)
    weight, bias = torch.randn(d_out, d_in, generator=g), torch.randn(d_out, generator=g)
    A, B = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
    x = torch.randn(*[draw(1, 3) for _ in range(draw(1, 2))], d_in, generator=g)
    result.append(numeric(lora_forward(x, weight, bias, A, B, 0.5 + 31.5 * uniform())))
"""),
    "a08_merge": _probe("merge_lora", """
result = []
for r in (1, draw(2, 4), draw(5, 8)):
    d_in, d_out = draw(r + 1, 12), draw(r + 1, 12)
    weight, A, B = torch.randn(d_out, d_in, generator=g), torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
    result.append(numeric(merge_lora(weight, A, B, 0.5 + 31.5 * uniform())))
"""),
    "a08_count": _probe("lora_trainable_parameters", """
result = [numeric(lora_trainable_parameters(draw(4, 1024), draw(1, 24), r)) for r in (1, draw(2, 8), draw(9, 64))]
""", EXACT),
    # -- 09 prefix tuning -----------------------------------------------------------------------------
    "a09_attention": _probe("prefix_attention", """
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.query, self.key, self.value = (filled(nn.Linear(hidden, hidden), hidden ** -0.5) for _ in range(3))
        self.num_attention_heads, self.attention_head_size = heads, hidden // heads
        self.dropout = nn.Dropout(0.0)


result = []
with torch.no_grad():
    for heads, P in ((draw(2, 4), draw(1, 6)), (1, draw(1, 4)), (draw(2, 4), 1)):
        d, B, L = draw(2, 6), draw(1, 3), draw(1, 6)
        x = torch.randn(B, L, heads * d, generator=g)
        prefix_key, prefix_value = (torch.randn(1, heads, P, d, generator=g) for _ in range(2))
        result.append(numeric(prefix_attention(x, SelfAttention(heads * d, heads), prefix_key, prefix_value)))
"""),
    "a09_mask": _probe("extend_mask", """
result = []
for P in (1, draw(2, 8), draw(1, 8)):
    B, L = draw(1, 5), draw(2, 8)
    mask = torch.where(torch.rand(B, 1, 1, L, generator=g) < 0.3, -1e9, 0.0)
    mask[0, ..., -1] = -1e9  # padding at the end of the first example
    result.append(numeric(extend_mask(mask, P)))
"""),
    "a09_count": _probe("prefix_parameters", """
result = []
for projection_hidden in (None, draw(2, 64), None, draw(65, 1024)):
    result.append(numeric(prefix_parameters(draw(1, 24), draw(4, 1024), draw(1, 32), projection_hidden)))
""", EXACT),
    # -- 10 PEFT showdown and deployment --------------------------------------------------------------
    "a10_arithmetic": _probe("task_arithmetic", """
result = []
for num_tasks in (2, draw(3, 5), 1):
    shapes = {name: (draw(1, 6), draw(1, 6)) for name in ("query", "value", "output.dense")[:draw(1, 3)]}
    task_vectors = [{name: torch.randn(shape, generator=g) for name, shape in shapes.items()} for _ in range(num_tasks)]
    weights = (3 * torch.rand(num_tasks, generator=g) - 1).tolist()  # negative weights too
    merged = task_arithmetic(task_vectors, weights)
    result.append(({name: numeric(delta) for name, delta in merged.items()}, task_vectors))  # inputs left as they were
"""),
    "a10_trim": _probe("trim_to_density", """
result = []
for shape, density in (((draw(3, 8), draw(3, 8)), 0.15 + 0.8 * uniform()), ((7,), 0.5), ((draw(2, 4), 3, 2), 1.0),
                       ((draw(3, 6), draw(3, 6)), 0.12 + 0.3 * uniform())):  # k >= 1; 0.5 · 7 = 3.5: k = 3
    delta = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    trimmed = trim_to_density(delta, density)
    result.append((numeric(trimmed), delta))  # delta left as it was
"""),
    "a10_disjoint": _probe("disjoint_merge", """
result = []
for num_tasks, density in ((2, 0.5), (draw(3, 4), 0.3 + 0.5 * uniform()), (draw(3, 5), 1.0)):
    shape = (draw(2, 6), draw(3, 6))
    scales = 0.2 + 3 * torch.rand(num_tasks, 1, 1, generator=g, dtype=torch.float64)
    trimmed = torch.randn(num_tasks, *shape, generator=g, dtype=torch.float64) * scales
    trimmed = trimmed * (torch.rand(num_tasks, *shape, generator=g, dtype=torch.float64) < density)
    a = 0.5 + uniform()
    trimmed[:, 0, :3] = 0.0  # [0, 0]: no task kept it
    trimmed[0, 0, 1], trimmed[1, 0, 1] = a, -a  # [0, 1]: Σ = 0 elects +
    if num_tasks >= 3:  # [0, 2]: the mass elects -, the majority of signs +
        trimmed[0, 0, 2], trimmed[1, 0, 2], trimmed[2, 0, 2] = 0.2 * a, 0.2 * a, -2 * a
    weights = (0.2 + 2.8 * torch.rand(num_tasks, generator=g)).tolist()
    merged = disjoint_merge(trimmed, weights)
    result.append((numeric(merged), trimmed))  # trimmed left as it was
"""),
    # -- 11 adversarial and meta-learning -------------------------------------------------------------
    "a11_reversal": _probe("ReverseGradient", """
result = []
for scale in (0.0, uniform(), 1.0, 1 + 3 * uniform()):
    h = torch.randn(draw(1, 5), draw(1, 4), generator=g).requires_grad_()
    weights = torch.randn(h.shape, generator=g)
    out = ReverseGradient.apply(h, scale)
    (out * weights).sum().backward()
    result.append((numeric(out), h.grad))
"""),
    "a11_orthogonality": _probe("orthogonality", """
result = []
width = draw(2, 5)
for n, width_s, width_p in ((draw(2, 10), draw(1, 6), draw(1, 6)), (draw(6, 10), width, width), (draw(2, 10), draw(1, 6), draw(1, 6))):
    shared, private = torch.randn(n, width_s, generator=g), torch.randn(n, width_p, generator=g)
    result.append(numeric(orthogonality(shared, private)))
"""),
    "a11_reptile": _probe("reptile_update", """
result = []
for num_tasks, inner_steps in ((1, 1), (draw(2, 4), draw(2, 6)), (draw(2, 4), draw(1, 8))):
    D, n = draw(2, 5), draw(4, 8)
    w = torch.randn(D, generator=g, dtype=torch.float64)
    supports = [(torch.randn(n, D, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64))
                for _ in range(num_tasks)]
    new = reptile_update(w, supports, inner_steps, 0.01 + 0.05 * uniform(), 0.1 + 0.8 * uniform())
    result.append((numeric(new), w))  # w left as it was
"""),
}
