"""Chapter 03's study: the capacity-matched baseline, the grid, and reading the results back."""

import numpy as np
import pytest
from torch import nn

from mtl_tutorial.backbone import count_parameters
from mtl_tutorial.studies import StudyResults
from mtl_tutorial.studies import soft_sharing as S


def test_the_two_layer_hard_trunk_matches_cross_stitch_in_depth_and_parameters():
    stitch, deep, shallow = (S.synthetic_model(m) for m in ("cross-stitch", S.DEEP_HARD, "hard sharing"))
    assert abs(count_parameters(deep) / count_parameters(stitch) - 1) < 0.01     # 9,097 against 9,130
    assert count_parameters(stitch) / count_parameters(shallow) > 1.2             # the confound it removes
    linear_layers = lambda trunk: sum(isinstance(m, nn.Linear) for m in trunk.modules())
    assert linear_layers(deep.trunk) == 2 == linear_layers(stitch.trunk) // 2     # two layers per task's path
    with pytest.raises(ValueError, match="unknown model 'MoE'"):
        S.synthetic_model("MoE")


def test_the_grid_holds_the_primary_runs_and_the_affinity_runs_only_on_their_seeds():
    configs = S.STUDY.configs()
    labels = {c["label"] for c in configs}
    first = S.PRIMARY[0]
    assert {first.a, first.b, S.synthetic_label("MMoE", 0.0), S.synthetic_label("hard sharing", 1.0)} <= labels
    assert {c["seed"] for c in configs if c["kind"] == "affinity"} == set(S.AFFINITY_SEEDS)
    assert {c["seed"] for c in configs if c["label"] == S.ALONE} == set(S.DEFAULT_SEEDS)
    assert len(S.DEFAULT_SEEDS) >= 5


def _row(label, seed, metrics, kind="partners"):
    return {"config": {"label": label, "seed": seed, "kind": kind}, "metrics": metrics}


def fake_results():
    """Affinity runs that rank pos first and condition last for sentiment; partner and synthetic runs on 2 seeds."""
    tasks = list(S.TEXT_TASKS)
    z = [[0.0] * 4 for _ in range(4)]
    z[tasks.index("pos")][0], z[tasks.index("supersense")][0], z[tasks.index("condition")][0] = 0.3, 0.2, 0.1
    rows = [_row("affinity run", s, {"affinity": {"adam": z, "sgd": z}, "cosine": z, "tasks": tasks}, "affinity")
            for s in (0, 1)]
    losses = {S.HEADS: 0.9, S.ALONE: 0.8, "+ condition": 0.7, "+ supersense": 0.6, "+ pos": 0.5}
    for label, loss in losses.items():
        rows += [_row(label, s, {"scores": {"loss": loss + s, "accuracy": 0.5, "macro_f1": 0.4}}) for s in (0, 1)]
    for m in S.MODELS:
        for p in S.CORRELATIONS:
            value = 0.9 if m == "MMoE" else 0.8
            for s in (0, 1):
                extra = {"mean_gates": [[p, 1 - p], [s, 1 - s]]} if m in ("MMoE", "CGC") else {}
                if m == "cross-stitch":
                    extra = {"alpha_curves": {"steps": [50, 100], "alpha/0/task 1<-task 2": [0.1, 0.2 + p + s]}}
                rows.append(_row(S.synthetic_label(m, p), s, {"scores": {S.EXPLAINED: value + 0.01 * s}, **extra}, "synthetic"))
    return StudyResults(S.STUDY, rows, None)


def test_partner_scores_name_the_partners_the_affinity_ranks_first_and_last():
    results = fake_results()
    assert list(S.predicted_partners(results)) == ["pos", "supersense", "condition"]
    scores = S.partner_scores(results)
    assert scores[S.BEST][S.NEGATIVE_LOSS] == pytest.approx([-500, -1500])   # pos's runs, −loss in millinats
    assert scores[S.WORST][S.NEGATIVE_LOSS] == pytest.approx([-700, -1700])  # condition's


def test_synthetic_scores_add_mmoe_minus_hard_sharing_per_seed():
    scores = S.synthetic_scores(fake_results())
    assert scores["MMoE − hard sharing, p = 0"][S.EXPLAINED] == pytest.approx([0.1, 0.1])
    assert {c.a for c in S.PRIMARY[1:2]} | {c.b for c in S.PRIMARY[1:2]} <= set(scores)


def test_a_short_synthetic_run_scores_r2_and_records_alpha():
    config = S.synthetic_config("cross-stitch", 0.0, seed=0, fast=True) | {"steps": 5, "eval_every": 5}
    metrics, model = S.run(config, keep_model=True)
    assert set(metrics["scores"]) == {S.EXPLAINED, *S.TASKS} and metrics["scores"][S.EXPLAINED] <= 1
    assert len(metrics["alphas"]) == 2 and metrics["alpha_curves"]["steps"] == [5]
    assert isinstance(model, nn.Module)


def test_the_readers_return_the_run_of_the_seed_and_correlation_asked_for():
    results = fake_results()
    history = S.alpha_history(results, 1.0, seed=1)
    assert history.eval_steps == [50, 100] and history.metrics["alpha/0/task 1<-task 2"] == [0.1, 2.2]
    gates = S.mean_gates(results, seed=1)
    assert set(gates) == {"MMoE", "CGC"} and gates["CGC"][0.0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="seeds are \\[0, 1\\]"):
        S.mean_gates(results, seed=7)


# ---------------------------------------------------------------- the worked solutions' runs (EXERCISES)
from mtl_tutorial.studies import get_study, run_configs  # noqa: E402
from mtl_tutorial.studies import soft_sharing_exercises as E  # noqa: E402
from mtl_tutorial.studies.runner import config_hash  # noqa: E402


def test_the_exercise_runs_are_the_chapters_runs_changed_in_one_setting_each():
    exercises, chapter = get_study("03", exercises=True), get_study("03")
    assert exercises is E.EXERCISES and exercises.borrow_from == (chapter.name,) and chapter is S.STUDY
    assert len(exercises.configs()) == 25 * len(exercises.default_seeds) and len(exercises.default_seeds) >= 13
    ours = {config_hash(c): c for c in chapter.configs()}
    base = {(c["model"], c["correlation"]): c for c in chapter.configs(seeds=[0]) if c["kind"] == "synthetic"}
    affinity = next(c for c in chapter.configs(seeds=[0]) if c["kind"] == "affinity")
    expected = {"penalty": {"rho"}, "cross-stitch": {"alpha_lr_factor"}, E.HARD_32: {"model"}, E.MMOE_8: {"model"},
                E.PLE_2: {"model"}}
    for config in exercises.configs(seeds=[0]):
        if config["kind"] == "synthetic":   # the chapter's own run, config for config: borrowed, not trained again
            assert config_hash(config) in ours
            continue
        if config["kind"] == "lookahead":
            reference, changed = affinity, {"kind", "sgd_lookahead_lr", "lookahead_lr", "affinity_every"}
        else:
            model = config["model"] if config["model"] in ("penalty", "cross-stitch") else "hard sharing"
            reference, changed = base[model, config["correlation"]], {"kind"} | expected[config["model"]]
        differ = {k for k in set(config) | set(reference) if k != "label" and config.get(k) != reference.get(k)}
        assert differ <= changed, (config["label"], differ)
        assert config["steps"] == reference["steps"] and config.get("num_train") == reference.get("num_train")
    penalty_01 = [c for c in exercises.configs(seeds=[0]) if c.get("rho") == 1e-2 and c["model"] == "penalty"]
    assert len(penalty_01) == 2 and all(config_hash(c) not in ours for c in penalty_01)   # they store the penalty


def test_every_exercise_declares_one_primary_comparison_of_runs_in_its_grid():
    exercises = get_study("03", exercises=True)
    labels = {c["label"] for c in exercises.configs(seeds=[0])}
    assert sorted(E.PRIMARY_BY_EXERCISE) == [1, 2, 3, 4, 5, 6] and exercises.primary == E.PRIMARY
    for k in (1, 2, 3, 4):
        assert {E.PRIMARY_BY_EXERCISE[k].a, E.PRIMARY_BY_EXERCISE[k].b} <= labels
    assert E.NEEDED[3] == E.seeds_for_power(E.PILOT_SD[3], E.SMALLEST[3]) <= len(exercises.default_seeds) <= E.MAX_SEEDS


def test_the_exercise_readers_give_the_scores_the_primary_comparisons_name():
    """A short run of the fast grid (3 steps each), read back: every primary comparison finds its runs."""
    exercises = get_study("03", exercises=True)
    configs = [c | {"steps": 3, "eval_every": 1, "affinity_every": min(c.get("affinity_every", 1), 2)}
               if c["kind"] != "synthetic" else c | {"steps": 3, "eval_every": 1} for c in exercises.configs(seeds=[0, 1], fast=True)]
    configs = [c | {"max_per_task": 16} if c["kind"] == "lookahead" else c for c in configs]
    results = StudyResults(exercises, run_configs(exercises, configs, progress=False), None)
    assert E.rhos_in(results) == list(E.FAST_RHOS)
    families = [E.penalty_scores(results)["penalty"], E.mmoe_scores(results), E.ple_scores(results), E.stitch_scores(results),
                E.lead_scores(results), E.every_step_scores(results)]
    for comparison, scores in zip(E.PRIMARY, families):
        assert len(scores[comparison.a][comparison.task]) == 2 == len(scores[comparison.b][comparison.task]), comparison
    stitch = E.stitch_scores(results)[S.synthetic_label("cross-stitch", 0.0)]
    assert all(low <= 0.1 for low in stitch[E.LOWEST_ALPHA])   # α starts at 0.1 off the diagonal: the lowest is at most that
    experts, gates = E.shared_gates(results)
    assert gates.shape == (2, len(experts)) == (2, 4) and np.allclose(gates.sum(1), 1, atol=1e-5)
    every = E.every_step_scores(results)
    assert all(t > 0 for label in every for t in every[label][E.SECONDS])
    cosines = [E.lookahead_matrices(results, eta, kind="cosine") for eta in E.LOOKAHEAD_LRS]
    assert abs(cosines[0] - cosines[1]).max() < 1e-6   # the lookahead never changes the model: same trajectory
