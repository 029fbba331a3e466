"""The probes of the autograded parts (``mtl_tutorial.grading.parts``): coverage, seeds, mistakes.

A probe is trusted when (1) every autograded part of every assignment has one, (2) the instructor
source answers it at two seeds, with different results (the inputs come from the seed), (3) each
mistake fixture fails the probe of the part it gets wrong and passes the others, (4) the student
version fails every probe with an error that names the function, and (5) the wrong versions
listed in ``WRONG_VERSIONS`` (each a small edit of the instructor's solution) all fail it while
equivalent rewrites in ``RIGHT_VERSIONS`` pass.

(2)-(4) run notebooks through ``runner.run`` (a kernel each, two at a time, once per session: the
slow part, skipped in fast mode, where tests/test_grading.py grades the same notebooks through the
probes in its sandboxed batches); (5) runs the solution cells and the probe code in this process, which is quick and also
checks that a probe's result does not depend on the process it runs in.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from mtl_tutorial.grading import graded_cells, list_assignments, student_version
from mtl_tutorial.grading.parts import PROBES
from mtl_tutorial.grading.probes import differences, encode, judge, read_result, result_file
from mtl_tutorial.grading.runner import run

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {p.stem: p for p in list_assignments(ROOT)}
SUBMISSIONS = Path(__file__).resolve().parent / "fixtures" / "submissions"
SEEDS = (7, 8)
TIMEOUT_S = 30

# mistake fixture -> the part it gets wrong (tests/test_grading.py's MISTAKES)
MISTAKES = {
    "01_averaged_optima.ipynb": "a01_optimum",
    "02_first_rows_as_targets.ipynb": "a02_loss",
    "03_every_pair_twice.ipynb": "a03_penalty",
    "04_always_before_minus_after.ipynb": "a04_forgetting",
    "05_target_not_detached.ipynb": "a05_gradnorm",
    "06_projected_twice.ipynb": "a06_pcgrad",
    "07_no_residual.ipynb": "a07_forward",
    "08_scaled_by_alpha.ipynb": "a08_forward",
    "09_scaled_by_hidden_size.ipynb": "a09_attention",
    "10_mean_over_all_tasks.ipynb": "a10_disjoint",
    "11_negated_without_scale.ipynb": "a11_reversal",
}


def _nbgrader(cell):
    return cell.metadata.get("nbgrader", {})


def _parts(name):
    """The grade_ids of an assignment's probes, in notebook order."""
    return [g for g in PROBES if g.startswith(f"a{name[:2]}_")]


def _source(grade_id):
    return next(p for stem, p in SOURCES.items() if grade_id.startswith(f"a{stem[:2]}_"))


def test_every_autograded_part_has_a_probe_and_every_probe_a_part():
    autograded = set()
    for path in SOURCES.values():
        notebook = nbformat.read(path, as_version=4)
        autograded |= {_nbgrader(c)["grade_id"] for c in graded_cells(notebook) if not _nbgrader(c).get("solution")}
    assert autograded == set(PROBES), (sorted(autograded - set(PROBES)), sorted(set(PROBES) - autograded))
    for grade_id, probe in PROBES.items():
        source = nbformat.read(_source(grade_id), as_version=4)
        solution = next(c.source for c in source.cells if _nbgrader(c).get("grade_id") == f"{grade_id}_code")
        assert f"def {probe.function}(" in solution or f"class {probe.function}(" in solution, grade_id
        assert probe.function in probe.code and "seed" in probe.code and "result" in probe.code


# -- the notebooks, through the runner (a kernel each) ------------------------------------------------


SLOW = pytest.mark.skipif(bool(os.environ.get("MTL_TUTORIAL_FAST")),
                          reason="fast mode: tests/test_grading.py runs these notebooks through the probes")


@pytest.fixture(scope="session")
def records(tmp_path_factory):
    """(kind, name, seed) -> {grade_id: probe record}: the instructor sources at both seeds, the mistake
    fixtures and the student versions at the first, two notebooks at a time."""
    students = tmp_path_factory.mktemp("student")
    jobs = {}
    for name, path in SOURCES.items():
        for seed in SEEDS:
            jobs[("instructor", name, seed)] = path
        nbformat.write(student_version(path), students / path.name)
        jobs[("student", name, SEEDS[0])] = students / path.name
    for fixture in MISTAKES:
        jobs[("mistake", fixture, SEEDS[0])] = SUBMISSIONS / fixture

    def probe(job):
        (kind, name, seed), path = job
        out = tmp_path_factory.mktemp(f"{kind}_{Path(name).stem}_{seed}")
        grade_ids = _parts(name)
        run(path, out, TIMEOUT_S, seed, grade_ids)
        return {g: read_result(out / result_file(g)) for g in grade_ids}

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(jobs, pool.map(probe, jobs.items())))


@pytest.mark.slow
@SLOW
@pytest.mark.parametrize("name", list(SOURCES))
def test_the_instructor_source_answers_every_probe_and_the_seed_changes_the_inputs(records, name):
    first, second = records[("instructor", name, SEEDS[0])], records[("instructor", name, SEEDS[1])]
    for grade_id in _parts(name):
        for record in (first[grade_id], second[grade_id]):
            assert record is not None and "result" in record, (grade_id, record)
        probe = PROBES[grade_id]
        assert differences(first[grade_id]["result"], second[grade_id]["result"], probe.rtol, probe.atol), (
            f"{grade_id}: seeds {SEEDS} give the same result")


@pytest.mark.slow
@SLOW
@pytest.mark.parametrize("fixture", list(MISTAKES))
def test_a_mistake_fails_its_part_s_probe_only(records, fixture):
    name = next(stem for stem in SOURCES if stem[:2] == fixture[:2])
    reference, mine = records[("instructor", name, SEEDS[0])], records[("mistake", fixture, SEEDS[0])]
    for grade_id in _parts(name):
        reason = judge(reference[grade_id], mine[grade_id], PROBES[grade_id])
        if grade_id == MISTAKES[fixture]:
            assert reason.startswith(f"{PROBES[grade_id].function} on the grader's inputs: "), reason
        else:
            assert reason == "", (grade_id, reason)


@pytest.mark.slow
@SLOW
@pytest.mark.parametrize("name", list(SOURCES))
def test_the_student_version_fails_every_probe_naming_the_function(records, name):
    reference, mine = records[("instructor", name, SEEDS[0])], records[("student", name, SEEDS[0])]
    for grade_id in _parts(name):
        reason = judge(reference[grade_id], mine[grade_id], PROBES[grade_id])
        assert reason.startswith(f"{PROBES[grade_id].function} raised NotImplementedError"), (grade_id, reason)


@pytest.mark.slow
@SLOW
@pytest.mark.parametrize("name", list(SOURCES))
def test_a_probe_gives_the_same_result_in_this_process_as_in_a_kernel(records, name):
    for grade_id in _parts(name):
        record = _probe_here(_solutions(grade_id), grade_id, SEEDS[0])
        assert judge(records[("instructor", name, SEEDS[0])][grade_id], record, PROBES[grade_id]) == "", grade_id


# -- wrong and right versions, in this process ---------------------------------------------------------

# grade_id -> [(the wrong version, text of the instructor's solution cell `<grade_id>_code`, its replacement)]
WRONG_VERSIONS = {
    "a01_optimum": [
        ("averaged optima", "return torch.linalg.solve(hessian, rhs)", "return lam * optima[0] + (1 - lam) * optima[1]"),
        ("λ weighs task 2", "hessian = lam * curvatures[0] + (1 - lam) * curvatures[1]\n    rhs = lam * curvatures[0] @ optima[0] + (1 - lam) * curvatures[1] @ optima[1]",
         "hessian = (1 - lam) * curvatures[0] + lam * curvatures[1]\n    rhs = (1 - lam) * curvatures[0] @ optima[0] + lam * curvatures[1] @ optima[1]"),
        ("unweighted curvatures", "hessian = lam * curvatures[0] + (1 - lam) * curvatures[1]", "hessian = curvatures[0] + curvatures[1]"),
        ("optima not weighted by their curvature", "rhs = lam * curvatures[0] @ optima[0] + (1 - lam) * curvatures[1] @ optima[1]",
         "rhs = hessian @ (lam * optima[0] + (1 - lam) * optima[1])"),
    ],
    "a01_pareto": [
        ("strictly better on every task", "< points[:, None, :]).any(-1)", "< points[:, None, :]).all(-1)"),
        ("identical points dominate each other", "return ~(no_worse & better).any(dim=1)",
         "return ~(no_worse & ~torch.eye(len(points), dtype=torch.bool)).any(dim=1)"),
        ("maximisation", "no_worse = (points[None, :, :] <= points[:, None, :]).all(-1)",
         "points = -points\n    no_worse = (points[None, :, :] <= points[:, None, :]).all(-1)"),
        ("indices, not a mask", "return ~(no_worse & better).any(dim=1)", "return torch.nonzero(~(no_worse & better).any(dim=1)).flatten()"),
    ],
    "a01_shared": [
        ("λ weighs task 2", "targets = lam * y[:, 0] + (1 - lam) * y[:, 1]", "targets = (1 - lam) * y[:, 0] + lam * y[:, 1]"),
        ("equal weights", "targets = lam * y[:, 0] + (1 - lam) * y[:, 1]", "targets = y.mean(1)"),
        ("rows, not columns", "targets = lam * y[:, 0] + (1 - lam) * y[:, 1]", "targets = lam * y[0] + (1 - lam) * y[1]"),
    ],
    "a02_route": [
        ("an entry for every head", "for task in dict.fromkeys(tasks):", "for task in heads:"),
        ("the first rows", "heads[task](features[positions])", "heads[task](features[: len(positions)])"),
        ("positions within the task", "routed[task] = (heads[task](features[positions]), positions)",
         "routed[task] = (heads[task](features[positions]), torch.arange(len(positions)))"),
    ],
    "a02_loss": [
        ("the first rows' targets", "targets[positions]", "targets[: len(outputs)]"),
        ("summed", "F.cross_entropy(outputs, targets[positions])", "F.cross_entropy(outputs, targets[positions], reduction='sum')"),
        ("nll of the logits", "F.cross_entropy(outputs, targets[positions])", "F.nll_loss(outputs, targets[positions])"),
        ("divided by the batch", "F.cross_entropy(outputs, targets[positions])",
         "F.cross_entropy(outputs, targets[positions]) * len(positions) / len(targets)"),
    ],
    "a02_evidence": [
        ("1.96 instead of t", "float(stats.t.ppf(0.975, n - 1))", "1.96"),
        ("n instead of n - 1", "float(d.std(unbiased=True))", "float(d.std(unbiased=False))"),
        ("n - 1 degrees of freedom off by one", "stats.t.ppf(0.975, n - 1)", "stats.t.ppf(0.975, n)"),
        ("the sign of the mean", "if low <= 0 <= high:", "if mean == 0:"),
        ("higher_is_better ignored", '"A better" if a_higher == higher_is_better else "B better"', '"A better" if a_higher else "B better"'),
    ],
    "a03_penalty": [
        ("every ordered pair", "for t in range(s + 1, len(towers)):", "for t in range(len(towers)):"),
        ("neighbours only", "for t in range(s + 1, len(towers)):", "for t in range(s + 1, min(s + 2, len(towers))):"),
        ("weights only", "zip(params[s], params[t]):", "list(zip(params[s], params[t]))[::2]:"),
        ("the norm, not squared", "(p_s - p_t).pow(2).sum()", "(p_s - p_t).norm()"),
        ("a mean", "(p_s - p_t).pow(2).sum()", "(p_s - p_t).pow(2).mean()"),
        ("not differentiable", "return total", "return torch.tensor(total.item())"),
    ],
    "a03_cross_stitch": [
        ("α transposed", '"ts,bsh->bth"', '"st,bsh->bth"'),
        ("columns not mixed", 'return torch.einsum("ts,bsh->bth", alpha, h)', "return h * alpha.diagonal()[:, None]"),
        ("tasks first", '"ts,bsh->bth"', '"ts,bsh->tbh"'),
    ],
    "a03_gates": [
        ("softmax over the tasks", "+ gate_bias, dim=-1)", "+ gate_bias, dim=1)"),
        ("softmax over the batch", "+ gate_bias, dim=-1)", "+ gate_bias, dim=0)"),
        ("no bias", "x) + gate_bias, dim=-1)", "x), dim=-1)"),
        ("no softmax", "torch.softmax(torch.einsum(\"ted,bd->bte\", gate_weight, x) + gate_bias, dim=-1)",
         "torch.einsum(\"ted,bd->bte\", gate_weight, x) + gate_bias"),
        ("a sigmoid", "torch.softmax(torch.einsum(\"ted,bd->bte\", gate_weight, x) + gate_bias, dim=-1)",
         "torch.sigmoid(torch.einsum(\"ted,bd->bte\", gate_weight, x) + gate_bias)"),
    ],
    "a03_affinity": [
        ("transposed", "return Z", "return Z.T"),
        ("the ratio minus 1", "Z[i, j] = 1 - task_loss(stepped, v, x, y) / losses[j].detach()",
         "Z[i, j] = task_loss(stepped, v, x, y) / losses[j].detach() - 1"),
        ("not divided", "Z[i, j] = 1 - task_loss(stepped, v, x, y) / losses[j].detach()",
         "Z[i, j] = losses[j].detach() - task_loss(stepped, v, x, y)"),
        ("divided by L_i", "/ losses[j].detach()", "/ losses[i].detach()"),
        ("a step on the total loss", "torch.autograd.grad(loss_i, W)", "torch.autograd.grad(sum(losses), W, retain_graph=True)"),
    ],
    "a04_temperature": [
        ("proportional", "log() / tau", "log()"),
        ("τ multiplies", "log() / tau", "log() * tau"),
        ("N^(1/τ) overflows", "return torch.softmax(torch.as_tensor(sizes, dtype=torch.float64).log() / tau, dim=0)",
         "p = torch.as_tensor(sizes, dtype=torch.float64) ** (1 / tau)\n    return p / p.sum()"),
        ("divided by the largest", "return torch.softmax(torch.as_tensor(sizes, dtype=torch.float64).log() / tau, dim=0)",
         "z = torch.as_tensor(sizes, dtype=torch.float64).log() / tau\n    return (z - z.max()).exp()"),
    ],
    "a04_passes": [
        ("proportional p", "temperature_probabilities(sizes, tau)", "(sizes / sizes.sum())"),
        ("no batch size", "num_batches * batch_size *", "num_batches *"),
        ("examples, not passes", "/ sizes", "/ 1"),
    ],
    "a04_forgetting": [
        ("always before - after", "forgotten = before - after if higher_is_better else after - before", "forgotten = before - after"),
        ("the step as an index", "values[history.eval_steps.index(phase_end)]", "values[min(phase_end, len(values) - 1)]"),
        ("the next evaluation", "values[history.eval_steps.index(phase_end)]", "values[history.eval_steps.index(phase_end) + 1]"),
        ("the best, not the last", "values[-1]", "(max(values) if higher_is_better else min(values))"),
        ("signs swapped", "forgotten = before - after if higher_is_better else after - before",
         "forgotten = after - before if higher_is_better else before - after"),
    ],
    "a05_gradnorm": [
        ("the targets moving with λ", "targets = norms.mean() * (ratios / ratios.mean()) ** alpha  # constants",
         "lam = weights.clone().requires_grad_(True)\n    norms = lam * sizes\n"
         "    targets = norms.mean() * (ratios / ratios.mean()) ** alpha\n"
         "    (gradient,) = torch.autograd.grad((norms - targets).abs().sum(), lam)\n    return len(weights) * (weights - lr * gradient) / (weights - lr * gradient).sum()"),
        ("not renormalised", "return len(weights) * stepped / stepped.sum()", "return stepped"),
        ("summing to 1", "return len(weights) * stepped / stepped.sum()", "return stepped / stepped.sum()"),
        ("ratios not normalised", "(ratios / ratios.mean()) ** alpha", "ratios ** alpha"),
        ("the sign only", "gradient = torch.sign(norms - targets) * sizes", "gradient = torch.sign(norms - targets)"),
    ],
    "a05_optimum": [
        ("-log L", "return torch.log(losses)", "return -torch.log(losses)"),
        ("log(L/2)", "return torch.log(losses)", "return torch.log(losses / 2)"),
        ("L", "return torch.log(losses)", "return losses"),
        ("log √L", "return torch.log(losses)", "return torch.log(losses) / 2"),
    ],
    "a05_dwa": [
        ("summing to 1", "return len(last) * torch.softmax", "return torch.softmax"),
        ("the ratio inverted", "rates = last / before", "rates = before / last"),
        ("τ multiplies", "rates / temperature", "rates * temperature"),
        ("no temperature", "rates / temperature", "rates"),
        ("differences, not ratios", "rates = last / before", "rates = last - before"),
    ],
    "a06_pcgrad": [
        ("projected twice (g_2 off the projected g_1')", "alpha[0] -= dot / gram[0, 0]", "pass"),
        ("always projected", "if dot < 0:", "if True:"),
        ("the norms swapped", "alpha[1] -= dot / gram[1, 1]", "alpha[1] -= dot / gram[0, 0]"),
        ("the sign flipped", "alpha[1] -= dot / gram[1, 1]", "alpha[1] += dot / gram[1, 1]"),
    ],
    "a06_mgda": [
        ("not clipped", "w = w.clamp(0.0, 1.0)", "pass"),
        ("clipped below only", "w = w.clamp(0.0, 1.0)", "w = w.clamp(min=0.0)"),
        ("clipped above only", "w = w.clamp(0.0, 1.0)", "w = w.clamp(max=1.0)"),
        ("the weights swapped", "return torch.stack([w, 1 - w])", "return torch.stack([1 - w, w])"),
    ],
    "a06_cosine": [
        ("divided by one norm", "return unit @ unit.T", "return unit @ grads.double().T"),
        ("by the squared norms", "grads.double().norm(dim=1, keepdim=True)", "grads.double().norm(dim=1, keepdim=True) ** 2"),
        ("the columns normalised", "norm(dim=1, keepdim=True)", "norm(dim=0, keepdim=True)"),
        ("dot products", "unit = grads.double() / grads.double().norm(dim=1, keepdim=True)", "unit = grads.double()"),
    ],
    "a07_forward": [
        ("no residual", "return h + F.gelu(", "return F.gelu("),
        ("ReLU", "F.gelu(h @ W_down.T + b_down)", "F.relu(h @ W_down.T + b_down)"),
        ("tanh-approximated GELU", "F.gelu(h @ W_down.T + b_down)", "F.gelu(h @ W_down.T + b_down, approximate='tanh')"),
        ("the activation outside", "return h + F.gelu(h @ W_down.T + b_down) @ W_up.T + b_up",
         "return h + F.gelu((h @ W_down.T + b_down) @ W_up.T + b_up)"),
        ("no b_up", "@ W_up.T + b_up", "@ W_up.T"),
    ],
    "a07_count": [
        ("no biases", "per_adapter = 2 * hidden_size * bottleneck_size + bottleneck_size + hidden_size",
         "per_adapter = 2 * hidden_size * bottleneck_size"),
        ("placements swapped", '{"houlsby": 2, "pfeiffer": 1}', '{"houlsby": 1, "pfeiffer": 2}'),
        ("one weight matrix", "per_adapter = 2 * hidden_size * bottleneck_size", "per_adapter = hidden_size * bottleneck_size"),
    ],
    "a07_place": [
        ("intermediate.dense", '"pfeiffer": ["output.dense"]', '"pfeiffer": ["intermediate.dense"]'),
        ("placements swapped", '{"houlsby": ["attention.output.dense", "output.dense"], "pfeiffer": ["output.dense"]}',
         '{"pfeiffer": ["attention.output.dense", "output.dense"], "houlsby": ["output.dense"]}'),
        ("layers counted from 1", "for i in range(num_layers)", "for i in range(1, num_layers + 1)"),
        ("after the query", '["attention.output.dense", "output.dense"]', '["attention.self.query", "output.dense"]'),
    ],
    "a08_forward": [
        ("scaled by α", "(alpha / r) *", "alpha *"),
        ("not scaled", "(alpha / r) *", ""),
        ("no bias", "x @ weight.T + bias +", "x @ weight.T +"),
        ("r from the input size", "r = A.shape[0]", "r = A.shape[1]"),
    ],
    "a08_merge": [
        ("scaled by α", "(alpha / A.shape[0])", "alpha"),
        ("not scaled", "(alpha / A.shape[0]) * B @ A", "B @ A"),
        ("no W0", "return weight + ", "return 0 * weight + "),
        ("r from the input size", "A.shape[0]", "A.shape[1]"),
    ],
    "a08_count": [
        ("one target", "num_layers * 2 * per_projection", "num_layers * per_projection"),
        ("three targets", "num_layers * 2 * per_projection", "num_layers * 3 * per_projection"),
        ("A only", "r * (hidden_size + hidden_size)", "r * hidden_size"),
        ("biases counted", "num_layers * 2 * per_projection", "num_layers * 2 * (per_projection + hidden_size)"),
    ],
    "a09_attention": [
        ("scaled by the hidden size", "/ math.sqrt(d)", "/ math.sqrt(x.shape[-1])"),
        ("not scaled", "/ math.sqrt(d)", ""),
        ("softmax over the queries", "dim=-1)  # (B, heads, L, P + L)", "dim=-2)"),
        ("the prefix keys as values", "v = torch.cat([prefix_value.expand", "v = torch.cat([prefix_key.expand"),
    ],
    "a09_mask": [
        ("the prefix last", "torch.cat([prefix, attention_mask], dim=-1)", "torch.cat([attention_mask, prefix], dim=-1)"),
        ("the prefix masked", "attention_mask.new_zeros(", "-1e9 + attention_mask.new_zeros("),
        ("the prefix copies the first key's mask", "prefix = attention_mask.new_zeros(*attention_mask.shape[:-1], num_virtual_tokens)",
         "prefix = attention_mask[..., :1].expand(*attention_mask.shape[:-1], num_virtual_tokens)"),
    ],
    "a09_count": [
        ("no value (factor 2)", "flat = num_layers * 2 * hidden_size", "flat = num_layers * hidden_size"),
        ("no MLP biases", "(hidden_size + 1) * projection_hidden + (projection_hidden + 1) * flat",
         "hidden_size * projection_hidden + projection_hidden * flat"),
        ("an MLP per virtual token", "embedding + (hidden_size + 1) * projection_hidden",
         "embedding + num_virtual_tokens * (hidden_size + 1) * projection_hidden"),
        ("the embedding as large as the prefix", "embedding = num_virtual_tokens * hidden_size", "embedding = num_virtual_tokens * flat"),
    ],
    "a10_arithmetic": [
        ("a mean", "for weight, vector in zip(weights, task_vectors)) for", "for weight, vector in zip(weights, task_vectors)) / len(weights) for"),
        ("the first weight for all", "sum(weight * vector[name] for weight, vector in zip(weights, task_vectors))",
         "sum(weights[0] * vector[name] for vector in task_vectors)"),
        ("in place", "return {name: sum(weight * vector[name] for weight, vector in zip(weights, task_vectors)) for name in task_vectors[0]}",
         "merged = task_vectors[0]\n    for name in merged:\n"
         "        merged[name] = sum(weight * vector[name] for weight, vector in zip(weights, task_vectors))\n    return merged"),
    ],
    "a10_trim": [
        ("the largest values", "flat.abs().topk(keep)", "flat.topk(keep)"),
        ("k rounded", "keep = int(density * delta.numel())", "keep = round(density * delta.numel())"),
        ("k rounded up", "keep = int(density * delta.numel())", "keep = -int(-density * delta.numel() // 1)"),
        ("the smallest", "flat.abs().topk(keep)", "flat.abs().topk(keep, largest=False)"),
        ("in place", "return trimmed.reshape(delta.shape)", "return delta.copy_(trimmed.reshape(delta.shape))"),
    ],
    "a10_disjoint": [
        ("divided by T", "(scaled * agrees).sum(0) / agrees.sum(0).clamp(min=1)", "(scaled * agrees).mean(0)"),
        ("the plain mean", "return (scaled * agrees).sum(0) / agrees.sum(0).clamp(min=1)", "return scaled.mean(0)"),
        ("trimmed zeros counted", "agrees.sum(0).clamp(min=1)", "(agrees | (trimmed == 0)).sum(0).clamp(min=1)"),
        ("no election", "agrees = trimmed.sign() == elected", "agrees = trimmed != 0"),
        ("elected after weighting", "elected = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0)",
         "elected = torch.where((torch.tensor(weights, dtype=trimmed.dtype).view(-1, 1, 1) * trimmed).sum(0) >= 0, 1.0, -1.0)"),
        ("torch.sign of the sum (0 where it is 0)", "elected = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0)", "elected = trimmed.sum(0).sign()"),
        ("the majority of signs", "elected = torch.where(trimmed.sum(0) >= 0, 1.0, -1.0)",
         "elected = torch.where(trimmed.sign().sum(0) >= 0, 1.0, -1.0)"),
        ("in place", "scaled = torch.tensor(weights, dtype=trimmed.dtype).view(-1, 1, 1) * trimmed",
         "scaled = trimmed.mul_(torch.tensor(weights, dtype=trimmed.dtype).view(-1, 1, 1))"),
    ],
    "a11_reversal": [
        ("negated without the scale", "return -ctx.scale * grad, None", "return -grad, None"),
        ("not negated", "return -ctx.scale * grad, None", "return ctx.scale * grad, None"),
        ("negated going forward", "return h.view_as(h)", "return -h"),
        ("scaled going forward", "return h.view_as(h)", "return h * scale"),
        ("no None for the scale", "return -ctx.scale * grad, None", "return -ctx.scale * grad"),
    ],
    "a11_orthogonality": [
        ("S Pᵀ", "(shared.T @ private)", "(shared @ private.T)"),
        ("the norm, not squared", "(shared.T @ private).pow(2).sum()", "(shared.T @ private).norm()"),
        ("a mean", "(shared.T @ private).pow(2).sum()", "(shared.T @ private).pow(2).mean()"),
        ("averaged over the examples", "(shared.T @ private).pow(2).sum()", "(shared.T @ private / len(shared)).pow(2).sum()"),
    ],
    "a11_reptile": [
        ("each task from the previous task's w'", "adapted = w.clone()", "adapted = (w + moves).clone()"),
        ("summed over tasks", "moves / len(supports)", "moves"),
        ("no factor 2", "inner_lr * 2 * x.T", "inner_lr * x.T"),
        ("summed over examples", "/ len(y)  # ∇", "  # ∇"),
        ("no meta step size", "return w + meta_lr * moves / len(supports)", "return w + moves / len(supports)"),
        ("in place", "return w + meta_lr * moves / len(supports)", "return w.add_(meta_lr * moves / len(supports))"),
    ],
}

# rewrites a learner may well hand in, which must pass: other dtypes, other formulas, other types
RIGHT_VERSIONS = {
    "a01_optimum": [("float32, an inverse", "return torch.linalg.solve(hessian, rhs)", "return torch.linalg.inv(hessian.float()) @ rhs.float()")],
    "a01_pareto": [("a float mask", "return ~(no_worse & better).any(dim=1)", "return (~(no_worse & better).any(dim=1)).float()")],
    "a01_shared": [("float32 normal equations", "return torch.linalg.lstsq(x.double(), targets.double().unsqueeze(-1)).solution.squeeze(-1)",
                    "return torch.linalg.solve(x.T @ x, x.T @ targets)")],
    "a02_evidence": [("numpy's std", "float(d.std(unbiased=True))", "float(d.numpy().std(ddof=1))")],
    "a05_gradnorm": [("autograd in λ", "gradient = torch.sign(norms - targets) * sizes  # ∂|G_t − target_t|/∂λ_t",
                      "lam = weights.clone().requires_grad_(True)\n    (gradient,) = torch.autograd.grad("
                      "(lam * sizes - targets.detach()).abs().sum(), lam)")],
    "a02_loss": [("log-softmax by hand", "F.cross_entropy(outputs, targets[positions])",
                  "-outputs.log_softmax(-1).gather(1, targets[positions][:, None]).mean()")],
    "a03_penalty": [("pdist of the flattened towers", "return total",
                     "vectors = torch.stack([nn.utils.parameters_to_vector(tower.parameters()) for tower in towers])\n"
                     "    return torch.pdist(vectors).pow(2).sum()")],
    "a04_forgetting": [("a list", "return torch.tensor([before, after, forgotten], dtype=torch.float64)", "return [before, after, forgotten]")],
    "a05_dwa": [("softmax by hand", "return len(last) * torch.softmax(rates / temperature, dim=0)",
                 "return len(last) * (rates / temperature).exp() / (rates / temperature).exp().sum()")],
    "a02_route": [("positions as a list", "routed[task] = (heads[task](features[positions]), positions)",
                   "routed[task] = (heads[task](features[positions]), positions.tolist())")],
    "a03_affinity": [("float32 Z", "Z = torch.zeros(len(heads), len(heads), dtype=torch.float64)", "Z = torch.zeros(len(heads), len(heads))")],
    "a04_temperature": [("float32 logs", "torch.as_tensor(sizes, dtype=torch.float64).log()", "torch.as_tensor(sizes).log()")],
    "a06_pcgrad": [("float32", "gram = gram.double()", "gram = gram.float()")],
    "a07_count": [("a float", "return num_layers * per_layer * per_adapter", "return float(num_layers * per_layer * per_adapter)")],
    "a07_place": [("layer by layer, unsorted", "return sorted(f", "return list(f")],
    "a08_forward": [("F.linear", "return x @ weight.T + bias + (alpha / r) * (x @ A.T) @ B.T",
                     "return torch.nn.functional.linear(x, weight + (alpha / r) * B @ A, bias)")],
    "a09_attention": [("scaled_dot_product_attention", "weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (B, heads, L, P + L)\n"
                       "    return (weights @ v)", "return F.scaled_dot_product_attention(q, k, v)")],
    "a10_trim": [("a threshold", "largest = flat.abs().topk(keep).indices", "largest = flat.abs() >= flat.abs().sort(descending=True).values[keep - 1]")],
    "a11_reversal": [("h itself", "return h.view_as(h)", "return h"), ("a copy", "return h.view_as(h)", "return h.clone()")],
    "a11_orthogonality": [("a Python float", "return (shared.T @ private).pow(2).sum()", "return float(torch.einsum('ns,np->sp', shared, private).pow(2).sum())")],
    "a11_reptile": [("autograd", "adapted = adapted - inner_lr * 2 * x.T @ (x @ adapted - y) / len(y)",
                     "adapted = adapted.detach().requires_grad_()\n"
                     "            adapted = adapted - inner_lr * torch.autograd.grad(((x @ adapted - y) ** 2).mean(), adapted)[0]")],
}


def _solutions(grade_id, edit=None):
    """The names an assignment's setup and solution cells define (not its tests or experiment), run
    here; ``edit`` = (old, new) rewrites the part's solution cell first."""
    namespace = {}
    for cell in nbformat.read(_source(grade_id), as_version=4).cells:
        cell_id = _nbgrader(cell).get("grade_id", "")
        if cell.cell_type != "code" or _nbgrader(cell).get("grade") or "experiment" in cell_id:
            continue
        source = cell.source
        if edit and cell_id == f"{grade_id}_code":
            assert edit[0] in source, f"{grade_id}: the solution no longer contains {edit[0]!r}"
            source = source.replace(edit[0], edit[1])
        exec(compile(source, cell_id, "exec"), namespace)
    return namespace


def _probe_here(namespace, grade_id, seed):
    """The probe's record, run in this process as probes.probe_cell runs it in a kernel."""
    names = dict(namespace, seed=seed)
    try:
        exec(PROBES[grade_id].code, names)
        return {"result": json.loads(json.dumps(encode(names["result"])))}
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}


@pytest.fixture(scope="module")
def references():
    """(grade_id, seed) -> the instructor's record, run here."""
    return {(g, seed): _probe_here(_solutions(g), g, seed) for g in PROBES for seed in SEEDS}


@pytest.mark.parametrize("grade_id", list(WRONG_VERSIONS))
def test_every_listed_wrong_version_fails_the_probe_at_both_seeds(references, grade_id):
    assert set(WRONG_VERSIONS) == set(PROBES)
    for wrong, old, new in WRONG_VERSIONS[grade_id]:
        namespace = _solutions(grade_id, (old, new))
        for seed in SEEDS:
            reason = judge(references[(grade_id, seed)], _probe_here(namespace, grade_id, seed), PROBES[grade_id])
            assert reason.startswith(PROBES[grade_id].function), f"{grade_id}: {wrong!r} passes at seed {seed}"


@pytest.mark.parametrize("grade_id", list(RIGHT_VERSIONS))
def test_equivalent_rewrites_pass_the_probe(references, grade_id):
    for right, old, new in RIGHT_VERSIONS[grade_id]:
        namespace = _solutions(grade_id, (old, new))
        for seed in SEEDS:
            reason = judge(references[(grade_id, seed)], _probe_here(namespace, grade_id, seed), PROBES[grade_id])
            assert reason == "", f"{grade_id}: {right!r} fails at seed {seed}: {reason}"
