"""Chapter 03's worked solutions' runs (exercises 1-6) at the size of the chapter's study: 800 steps of 64 on
4,000 synthetic inputs scored on 2,000 (R², ``soft_sharing.train_synthetic``), and 200 Adam steps on all
training examples of the four text tasks; ``get_study("03", exercises=True)``.

Three kinds of run (``config["kind"]``):

- ``"synthetic"``: the chapter study's own runs that exercises 2-4 compare against (MMoE with 4 experts of
  16, CGC, cross-stitch), config for config, so ``mtl-tutorial study 03 --exercises`` copies them from the
  chapter's results file (``borrow_from``) instead of training them again.
- ``"exercise synthetic"``: exercise 1's penalty towers at each ρ in ``RHOS`` (storing the final
  ‖θ_1 − θ_2‖²) and the 32-unit hard-sharing trunk the towers become as ρ → ∞; exercise 2's MMoE with 8
  experts of 8 units; exercise 3's two-level PLE (storing its first shared gate's weights on the test
  inputs); exercise 4's cross-stitch with the α at 10 × the step size of the other weights.
- ``"lookahead"``: exercises 5 and 6, the chapter's four-task affinity run (a shared layer on frozen MiniLM
  features, Adam at 1e-3) measured by one SGD lookahead of step η, every 5 steps or every step; stores Z,
  the cosines and the training time.

Primary comparisons (``PRIMARY``, one per exercise), declared before the study ran; the solutions
Holm-adjust every other interval within its exercise:
1. log10 of the final ‖θ_1 − θ_2‖² at ρ = 0.1, p = 1 − p = 0 (< 0: related tasks bring the towers closer).
2. MMoE's gate separation at p = 0, 8 experts of 8 − 4 of 16 (> 0: more experts, more separation).
3. R² at p = 0, two-level PLE − CGC, in points of the label variance.
4. The lowest off-diagonal α over training at p = 0, α step × 10 − × 1 (< 0: the α leave the mixing range).
5. At η = 0.1, Z_{condition→sentiment} (the task labelling the same reviews) − the larger Z of the
   other two partners (> 0: the same-text partner still ranks first with a ten times smaller step).
6. The mean off-diagonal Z at η = 1, measured every step − every 5 steps.

Seeds: a pilot, this study's first 3 seeds (2026-12-06, read while the study went on), gave the
paired standard deviations ``PILOT_SD``; ``evidence.seeds_for_power`` at the smallest differences
``SMALLEST`` (declared before the pilot) gives the seeds each primary comparison needs (``NEEDED``):
13, 5, 7, more than 30, 23, more than 30. The study runs the most that any comparison reachable within
the budget (``MAX_SEEDS`` = 30) needs, at least the chapter study's 13: 23 seeds. Exercise 4's lowest α
(pilot sd 0.48 against a declared 0.1) and exercise 6's mean Z (3.6e-4 against 0.5e-4) would need more
than 100 seeds for 80 % power at those differences; the solutions print their power at 23.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mtl_tutorial.evidence import Comparison, seeds_for_power
from mtl_tutorial.models import HardSharingModel, mlp
from mtl_tutorial.relations import TaskAffinity
from mtl_tutorial.runtime import seed_everything
from mtl_tutorial.sharing import MultiGateMixtureOfExperts, ProgressiveLayeredExtraction, SoftSharingPenalty, extraction_levels
from mtl_tutorial.studies import soft_sharing as S
from mtl_tutorial.studies.runner import Study, StudyResults, one_thread_run

# ---------------------------------------------------------------- the runs each exercise needs
RHOS = (0.0, 1e-3, 1e-2, 1e-1, 1.0)                  # exercise 1
FAST_RHOS = (0.0, 1e-1, 1.0)       # fast mode keeps the primary comparison's ρ
HARD_32 = "hard sharing, 32 units"                   # the towers' limit as ρ → ∞: one 32-unit tower shared
MANY_EXPERTS, NARROW_WIDTH = 8, 8                    # exercise 2: the same total width as 4 × 16
MMOE_8 = f"MMoE, {MANY_EXPERTS} × {NARROW_WIDTH}"
PLE_2 = "PLE, 2 levels"                              # exercise 3
ALPHA_LR_FACTOR = 10                                 # exercise 4
STITCH_FAST_ALPHA = f"cross-stitch, α lr × {ALPHA_LR_FACTOR}"
LOOKAHEAD_LRS = (1.0, 0.1)                           # exercises 5 and 6: the chapter's η and a tenth of it
EVERY = (5, 1)                                       # measure every 5 steps (the chapter's) or every step
TARGETS = ("sentiment", "pos")                       # exercise 5: the chapter's target and another one
SAME_TEXTS = {"sentiment": "condition", "pos": "supersense"}   # the partner labelling the same texts


def penalty_model(rho: float) -> str:
    return f"penalty, ρ = {rho:g}"


def exercise_model(name: str) -> nn.Module:
    """A fresh model of an exercise (``HARD_32``, ``MMOE_8``, ``PLE_2``) or of the chapter (``soft_sharing.MODELS``)."""
    tasks, width = S.TASKS, S.COLUMN_WIDTH
    builders = {
        HARD_32: lambda: HardSharingModel(mlp(S.INPUT_DIM, width), {t: S._head(width) for t in tasks}),
        MMOE_8: lambda: MultiGateMixtureOfExperts([mlp(S.INPUT_DIM, NARROW_WIDTH) for _ in range(MANY_EXPERTS)],
                                                  {t: S._head(NARROW_WIDTH) for t in tasks}, gate_input_dim=S.INPUT_DIM),
        PLE_2: lambda: ProgressiveLayeredExtraction(
            extraction_levels(list(tasks), S.INPUT_DIM, [S.EXPERT_WIDTH, S.EXPERT_WIDTH], num_task_experts=1,
                              num_shared_experts=S.NUM_EXPERTS - 2),
            {t: S._head(S.EXPERT_WIDTH) for t in tasks}),
    }
    return builders[name]() if name in builders else S.synthetic_model(name)


def exercise_config(model: str, correlation: float, seed: int, fast: bool = False, **settings) -> dict:
    """The chapter's synthetic config with ``model`` and ``settings`` (``rho``, ``alpha_lr_factor``) changed."""
    name = penalty_model(settings["rho"]) if model == "penalty" else STITCH_FAST_ALPHA if "alpha_lr_factor" in settings else model
    return S.synthetic_config(model, correlation, seed, fast) | settings | {
        "kind": "exercise synthetic", "label": S.synthetic_label(name, correlation)}


def lookahead_label(eta: float, every: int) -> str:
    return f"SGD lookahead η = {eta:g}, every {'step' if every == 1 else f'{every} steps'}"


def lookahead_config(eta: float, every: int, seed: int, fast: bool = False) -> dict:
    """The chapter's affinity run (``soft_sharing.text_config``) with one SGD lookahead of step ``eta``."""
    config = S.text_config("lookahead", lookahead_label(eta, every), seed, S.TEXT_TASKS, fast)
    config.pop("sgd_lookahead_lr")
    return config | {"lookahead_lr": eta, "affinity_every": every}


def grid(seeds, fast: bool = False) -> list[dict]:
    """Per seed (outermost): exercise 1's ρ sweep and 32-unit trunk at both ends of p, exercise 2's two MMoEs,
    exercise 3's PLE and CGC at p = 0, exercise 4's two cross-stitch step sizes, exercises 5-6's lookahead
    runs. Fast: ρ ∈ ``FAST_RHOS`` and the chapter's small sizes (a smoke run of the same code)."""
    configs = []
    for seed in seeds:
        for p in S.CORRELATIONS:
            configs += [exercise_config("penalty", p, seed, fast, rho=rho) for rho in (FAST_RHOS if fast else RHOS)]
            configs += [exercise_config(HARD_32, p, seed, fast),
                        S.synthetic_config("MMoE", p, seed, fast), exercise_config(MMOE_8, p, seed, fast),
                        S.synthetic_config("cross-stitch", p, seed, fast),
                        exercise_config("cross-stitch", p, seed, fast, alpha_lr_factor=ALPHA_LR_FACTOR)]
        configs += [S.synthetic_config("CGC", 0.0, seed, fast), exercise_config(PLE_2, 0.0, seed, fast)]
        configs += [lookahead_config(eta, EVERY[0], seed, fast) for eta in LOOKAHEAD_LRS]
        configs.append(lookahead_config(LOOKAHEAD_LRS[0], EVERY[1], seed, fast))
    return configs


def run_exercise_synthetic(config: dict) -> tuple[dict, nn.Module]:
    """Train an exercise's model as the chapter's runs train; R² and what the exercise reads off the model."""
    train_data, test_data, x_test = S.synthetic_data(config)
    seed_everything(config["seed"])
    name = config["model"]
    model = exercise_model(name)
    options = {}
    if name == "penalty":
        options["weighting"] = SoftSharingPenalty(config["rho"])
    if name == "cross-stitch":   # the α at alpha_lr_factor × lr, every other weight at lr; α read over training
        alphas = list(model.trunk.alphas.parameters())
        others = [q for q in model.parameters() if all(q is not a for a in alphas)]
        options |= {"optimizer": torch.optim.Adam([{"params": others, "lr": config["lr"]},
                                                   {"params": alphas, "lr": config["alpha_lr_factor"] * config["lr"]}]),
                    "eval_fn": lambda m: m.alpha_metrics(), "eval_every": config["eval_every"]}
    history = S.train_synthetic(config, model, train_data, **options)
    metrics = {"scores": S.explained_scores(model, test_data)}
    if name == "penalty":
        metrics["penalty"] = model.penalty().item()
    elif name == PLE_2:
        level = model.trunk.levels[0]
        with torch.no_grad():
            metrics["shared_gate"] = level.shared_gate(x_test).softmax(-1).mean(0).tolist()   # (experts of level 1,)
        metrics["experts"] = level.expert_names()
    else:
        metrics |= S._synthetic_readouts(model, "MMoE" if name == MMOE_8 else name, x_test, history)
    return metrics, model


def run_lookahead(config: dict) -> tuple[dict, nn.Module]:
    """The affinity run with one SGD lookahead of step ``lookahead_lr``: Z, the cosines, the training time."""
    metrics, model = S.train_with_trackers(config, lambda data, ce, optimizer: {"sgd": TaskAffinity(
        data, ce, lr=config["lookahead_lr"], batch_size=config["batch_size"], seed=config["seed"])})
    return {"affinity": metrics["affinity"]["sgd"], "cosine": metrics["cosine"]["sgd"], "tasks": metrics["tasks"],
            "train_seconds": metrics["train_seconds"]}, model


run = one_thread_run({"synthetic": S.run_synthetic, "exercise synthetic": run_exercise_synthetic, "lookahead": run_lookahead})


def estimate_seconds(config: dict) -> float:
    """A run's time on one thread of the 2-core CPU beside another study: this study's means (2026-12-06)."""
    if config["kind"] == "lookahead":
        return (1.9 if config["affinity_every"] == 1 else 0.8) * config["steps"] / 200
    seconds = {HARD_32: 1.7, MMOE_8: 2.8, PLE_2: 3.8, "penalty": 2.1, "cross-stitch": 2.6, "MMoE": 3.1, "CGC": 3.2}
    return seconds.get(config["model"], 3.0) * config["steps"] / 800


# ---------------------------------------------------------------- reading the results
R2 = "R² (points)"                          # 100 × R², points of the label variance
LOG_PENALTY = "log10 ‖θ₁ − θ₂‖²"
SEPARATION = "gate separation"
LOWEST_ALPHA, FINAL_ALPHA = "lowest off-diagonal α", "final off-diagonal α"
Z = "Z (1e-4)"                               # the lookahead affinity in units of 1e-4
SECONDS = "training time (s)"


def rhos_in(results: StudyResults) -> list[float]:
    """The ρ of exercise 1's runs in ``results`` (fast mode runs fewer)."""
    return [rho for rho in RHOS if S.synthetic_label(penalty_model(rho), 0.0) in results.labels()]


def _values(results: StudyResults, label: str, read) -> list[float]:
    return [float(read(row["metrics"])) for row in results.select(label)]


def _r2(metrics: dict) -> float:
    return 100 * metrics["scores"][S.EXPLAINED]


def penalty_scores(results: StudyResults) -> dict[str, dict[str, list[float]]]:
    """Exercise 1: {run: {R2: [...]}} of the towers at every ρ and of the 32-unit trunk, and {run: {LOG_PENALTY}}
    of the towers at ρ > 0 (``LOG_PENALTY`` has its own dict: the trunk has no towers)."""
    r2 = {S.synthetic_label(m, p): {R2: _values(results, S.synthetic_label(m, p), _r2)}
          for p in S.CORRELATIONS for m in [*map(penalty_model, rhos_in(results)), HARD_32]}
    distance = {S.synthetic_label(penalty_model(rho), p): {
        LOG_PENALTY: _values(results, S.synthetic_label(penalty_model(rho), p), lambda m: np.log10(m["penalty"]))}
        for p in S.CORRELATIONS for rho in rhos_in(results)}
    return {"R2": r2, "penalty": distance}


def mmoe_scores(results: StudyResults) -> dict[str, dict[str, list[float]]]:
    """Exercise 2: {run: {SEPARATION, R2}} of the two MMoEs at both ends."""
    return {S.synthetic_label(m, p): {SEPARATION: _values(results, S.synthetic_label(m, p), lambda x: x["gate_separation"]),
                                      R2: _values(results, S.synthetic_label(m, p), _r2)}
            for m in ("MMoE", MMOE_8) for p in S.CORRELATIONS}


def ple_scores(results: StudyResults) -> dict[str, dict[str, list[float]]]:
    """Exercise 3: {run: {R2}} of CGC and the two-level PLE at p = 0."""
    return {S.synthetic_label(m, 0.0): {R2: _values(results, S.synthetic_label(m, 0.0), _r2)} for m in ("CGC", PLE_2)}


def shared_gates(results: StudyResults) -> tuple[list[str], np.ndarray]:
    """Exercise 3: the experts of the PLE's first level and its shared gate's mean weights on them, (seeds, experts)."""
    rows = results.select(S.synthetic_label(PLE_2, 0.0))
    return rows[0]["metrics"]["experts"], np.array([row["metrics"]["shared_gate"] for row in rows])


def stitch_scores(results: StudyResults) -> dict[str, dict[str, list[float]]]:
    """Exercise 4: {run: {LOWEST_ALPHA (over training, both units and directions), FINAL_ALPHA (mean of both
    units' α[1 ← 2] and α[2 ← 1]), R2}} of cross-stitch at both α step sizes and both ends."""
    def lowest(metrics: dict) -> float:
        pairs = {k: k.split("/")[-1].split("<-") for k in metrics["alpha_curves"] if k != "steps"}   # "alpha/0/task 1<-task 2"
        return min(min(metrics["alpha_curves"][k]) for k, (to, source) in pairs.items() if to != source)

    def final(metrics: dict) -> float:
        a = np.array(metrics["alphas"])   # (layers, T, T)
        return float(((a[:, 0, 1] + a[:, 1, 0]) / 2).mean())

    return {S.synthetic_label(m, p): {LOWEST_ALPHA: _values(results, S.synthetic_label(m, p), lowest),
                                      FINAL_ALPHA: _values(results, S.synthetic_label(m, p), final),
                                      R2: _values(results, S.synthetic_label(m, p), _r2)}
            for m in ("cross-stitch", STITCH_FAST_ALPHA) for p in S.CORRELATIONS}


def lookahead_matrices(results: StudyResults, eta: float, every: int = EVERY[0], kind: str = "affinity") -> np.ndarray:
    """(seeds, T, T): Z (or the cosines, kind="cosine") of the lookahead runs with step ``eta``."""
    return np.array([row["metrics"][kind] for row in results.select(lookahead_label(eta, every))])


def same_text_label(target: str, eta: float) -> str:
    return f"{SAME_TEXTS[target]} → {target}, η = {eta:g}"


def other_label(target: str, eta: float) -> str:
    return f"best other partner → {target}, η = {eta:g}"


def lead_scores(results: StudyResults) -> dict[str, dict[str, list[float]]]:
    """Exercise 5: per target and η, {same_text_label: {Z}} (Z of the partner labelling the same texts) and
    {other_label: {Z}} (the larger Z of the other two partners), per seed, in units of 1e-4."""
    tasks = list(S.TEXT_TASKS)
    out = {}
    for eta in LOOKAHEAD_LRS:
        z = 1e4 * lookahead_matrices(results, eta)
        for target in TARGETS:
            j, others = tasks.index(target), [tasks.index(t) for t in tasks if t not in (target, SAME_TEXTS[target])]
            out[same_text_label(target, eta)] = {Z: z[:, tasks.index(SAME_TEXTS[target]), j].tolist()}
            out[other_label(target, eta)] = {Z: z[:, others, j].max(axis=1).tolist()}
    return out


def every_step_scores(results: StudyResults) -> dict[str, dict[str, list[float]]]:
    """Exercise 6: {run: {Z (mean off-diagonal, 1e-4), SECONDS}} of the η = 1 runs measured every 5 steps and every step."""
    off = ~np.eye(len(S.TEXT_TASKS), dtype=bool)
    out = {}
    for every in EVERY:
        label = lookahead_label(LOOKAHEAD_LRS[0], every)
        out[label] = {Z: (1e4 * lookahead_matrices(results, LOOKAHEAD_LRS[0], every)[:, off].mean(axis=1)).tolist(),
                      SECONDS: _values(results, label, lambda m: m["train_seconds"])}
    return out


# ---------------------------------------------------------------- primary comparisons and seeds
PRIMARY_BY_EXERCISE = {
    1: Comparison(S.synthetic_label(penalty_model(0.1), 1.0), S.synthetic_label(penalty_model(0.1), 0.0), LOG_PENALTY),
    2: Comparison(S.synthetic_label(MMOE_8, 0.0), S.synthetic_label("MMoE", 0.0), SEPARATION),
    3: Comparison(S.synthetic_label(PLE_2, 0.0), S.synthetic_label("CGC", 0.0), R2),
    4: Comparison(S.synthetic_label(STITCH_FAST_ALPHA, 0.0), S.synthetic_label("cross-stitch", 0.0), LOWEST_ALPHA),
    5: Comparison(same_text_label("sentiment", 0.1), other_label("sentiment", 0.1), Z),
    6: Comparison(lookahead_label(1.0, 1), lookahead_label(1.0, 5), Z),
}
PRIMARY = tuple(PRIMARY_BY_EXERCISE.values())
SMALLEST = {1: 0.3, 2: 0.1, 3: 4.0, 4: 0.1, 5: 0.5, 6: 0.5}   # a factor of 2; a tenth of the separation's range;
                                                               # 4 points of R²; 0.1 of α; 0.5e-4 of Z (twice)
PILOT_SD = {1: 0.35, 2: 0.0028, 3: 3.0, 4: 0.48, 5: 0.81, 6: 3.6}   # the pilot: seeds 0-2 of this study (2026-12-06)
MIN_SEEDS, MAX_SEEDS = 13, 30   # at least the chapter study's; at most what the compute budget allows (~45 min)


def _seeds_needed(k: int) -> int | None:
    try:
        return seeds_for_power(PILOT_SD[k], SMALLEST[k], maximum=MAX_SEEDS)
    except ValueError:
        return None   # more than MAX_SEEDS: no affordable n gives 80 % power at SMALLEST[k]


NEEDED = {k: _seeds_needed(k) for k in PILOT_SD}
"""Seeds each primary comparison needs for 80 % power at its smallest difference (None: more than ``MAX_SEEDS``)."""
DEFAULT_SEEDS = tuple(range(max(MIN_SEEDS, *(n for n in NEEDED.values() if n))))

EXERCISES = Study(
    chapter="03",
    slug="soft_sharing_and_task_relations_exercises",
    question="the worked solutions' runs: the ρ sweep, 8 × 8 experts, a two-level PLE, a 10× α step, "
             "the SGD lookahead at η = 1 and 0.1, measured every 5 steps and every step",
    grid=grid,
    run=run,
    estimate_seconds=estimate_seconds,
    primary=PRIMARY,
    default_seeds=DEFAULT_SEEDS,
    borrow_from=(S.STUDY.name,),
)
