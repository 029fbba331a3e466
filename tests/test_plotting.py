"""Plots return labelled Axes with the data they were given."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mtl_tutorial.objectives import TwoQuadratics, scalarization_sweep  # noqa: E402
from mtl_tutorial.plotting import (  # noqa: E402
    exponential_moving_average,
    plot_loss_curves,
    plot_mean_std,
    plot_pareto_front,
    plot_score_vs_parameters,
    plot_serving,
    plot_sweep,
    plot_task_weights,
    plot_weighted_objective,
)
from mtl_tutorial.training import History  # noqa: E402


def small_history():
    history = History(("a", "b"))
    for step in range(1, 7):
        task = "a" if step % 2 else "b"
        history.record_step(step, {task: 1.0 / step}, {task: 0.5}, 0.5 / step)
    return history


def test_exponential_moving_average_is_the_bias_corrected_weighted_mean():
    # m_k / (1 - 0.5^(k+1)) with m from 0: 0.5/0.5, 1.75/0.75, 2.375/0.875
    np.testing.assert_allclose(exponential_moving_average([1.0, 3.0, 3.0], 0.5), [1.0, 7 / 3, 19 / 7])
    values = np.random.default_rng(0).normal(size=30)
    for k in range(30):
        weights = 0.9 ** np.arange(k, -1, -1)   # v_j weighs 0.9^(k-j)
        assert exponential_moving_average(values, 0.9)[k] == pytest.approx(np.average(values[: k + 1], weights=weights))


def test_exponential_moving_average_of_a_flat_series_has_no_warm_up_drift():
    # started at s_0 = v_0 instead, a low first value would still weigh 0.9^18 = 0.15 at k = 18: a rise
    # of 0.15 that is not in the data; bias-corrected it weighs 0.1 · 0.9^18 / (1 - 0.9^19) = 0.017
    smoothed = exponential_moving_average([0.0] + [1.0] * 18, 0.9)
    assert smoothed[-1] == pytest.approx(1 - 0.1 * 0.9**18 / (1 - 0.9**19))
    assert smoothed[-1] > 0.98
    np.testing.assert_allclose(exponential_moving_average([4.0, 2.0], 0.0), [4.0, 2.0])
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\)"):
        exponential_moving_average([1.0], 1.0)


def test_loss_curves_one_line_per_task_with_smoothing():
    ax = plot_loss_curves(small_history(), smoothing=0.5, log_scale=True)
    assert ax.get_xlabel() == "training step (batches)" and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert len(ax.lines) == 4  # smoothed + faint raw curve per task
    np.testing.assert_allclose(ax.lines[1].get_xdata(), [1, 3, 5])
    overview = plot_loss_curves(small_history(), smoothing=0.5, show_raw=False)
    assert len(overview.lines) == 2  # the moving averages only
    np.testing.assert_allclose(overview.lines[0].get_ydata(), exponential_moving_average([1.0, 1 / 3, 1 / 5], 0.5))


def test_task_loss_by_run_draws_one_task_of_every_run():
    from mtl_tutorial.plotting import plot_task_loss_by_run

    ax = plot_task_loss_by_run({"seed 0": small_history(), "seed 1": small_history()}, "b", smoothing=0.5, title="m = 4")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seed 0", "seed 1"] and ax.get_title() == "m = 4"
    assert len(ax.lines) == 2  # one per run, task b only
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [2, 4, 6])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), exponential_moving_average([1 / 2, 1 / 4, 1 / 6], 0.5))
    raw = plot_task_loss_by_run({"run": small_history()}, "a", smoothing=0.0)
    np.testing.assert_allclose(raw.lines[0].get_ydata(), [1.0, 1 / 3, 1 / 5])
    with pytest.raises(ValueError, match="unknown task 'c'"):
        plot_task_loss_by_run({"run": small_history()}, "c")
    with pytest.raises(ValueError, match="no runs to plot"):
        plot_task_loss_by_run({}, "a")


def test_losses_and_weights_of_one_run_side_by_side():
    from mtl_tutorial.plotting import plot_losses_and_weights

    losses, weights = plot_losses_and_weights(small_history(), smoothing=0.5, log_scale=True,
                                              weights_log_scale=True, title="uncertainty, seed 0")
    assert losses.figure is weights.figure and losses.figure.get_suptitle() == "uncertainty, seed 0"
    assert len(losses.lines) == 4 and losses.get_yscale() == "log"
    np.testing.assert_allclose(weights.lines[0].get_ydata(), [0.5, 0.5, 0.5])
    assert weights.get_yscale() == "log" and weights.get_legend() is None  # the left legend names the tasks
    _, linear = plot_losses_and_weights(small_history())
    assert linear.get_yscale() == "linear"


def test_toy_paths_draw_every_start_to_its_end_over_the_pareto_set():
    from mtl_tutorial.data import TOY_STARTS, toy_pareto_set
    from mtl_tutorial.plotting import plot_toy_paths

    paths = torch.stack([TOY_STARTS, TOY_STARTS * 0.5, torch.zeros_like(TOY_STARTS)])  # (K + 1, S, 2)
    ax = plot_toy_paths(paths, title="CAGrad, c = 0.5")
    pareto, *drawn = ax.lines
    np.testing.assert_allclose(pareto.get_xydata(), toy_pareto_set(201).numpy())
    assert len(drawn) == len(TOY_STARTS)
    np.testing.assert_allclose(drawn[0].get_xydata(), paths[:, 0].numpy())
    from matplotlib.collections import PathCollection

    points = [(c.get_offsets()[0].tolist(), c.get_sizes()[0]) for c in ax.collections if isinstance(c, PathCollection)]
    starts, ends = points[0::2], points[1::2]
    assert [xy for xy, _ in starts] == TOY_STARTS.tolist()
    assert [xy for xy, _ in ends] == [[0.0, 0.0]] * len(TOY_STARTS) and ends[0][1] > starts[0][1]  # ends: big stars
    assert ax.get_title() == "CAGrad, c = 0.5" and ax.get_xlim() == (-10.0, 10.0)
    with_contours = len(ax.collections)
    assert len(plot_toy_paths(paths, contours=False).collections) < with_contours


def test_task_weights_plot():
    ax = plot_task_weights(small_history())
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.5, 0.5, 0.5])
    assert "λ" in ax.get_ylabel()


def test_pareto_plot_draws_the_front_sorted():
    points = np.array([[0.0, 3.0], [2.0, 2.0], [3.0, 0.0], [1.0, 1.0]])
    ax = plot_pareto_front(points, reached=points[[0, 2]], labels=("L1", "L2"))
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[0.0, 3.0], [1.0, 1.0], [3.0, 0.0]])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("L1", "L2")


def test_sweep_and_weighted_objective_plots():
    problem = TwoQuadratics([-1.0, 0.0], [1.0, 0.0], torch.eye(2), torch.eye(2))
    sweep = scalarization_sweep(problem, [0.0, 0.5, 1.0], torch.zeros(1, 2), num_steps=50)
    ax = plot_sweep(sweep)
    assert len(ax.lines) == 2 and ax.get_xlabel().startswith("λ")
    ax = plot_weighted_objective(problem, 0.5, resolution=21)
    star = ax.collections[-1].get_offsets()[0]  # the joint optimum, halfway between the optima
    np.testing.assert_allclose(star, [0.0, 0.0], atol=1e-3)


def test_mean_std_plot_checks_shapes():
    ax = plot_mean_std([0, 1], {"shared": np.array([[1.0, 2.0], [3.0, 4.0]])}, "x", "y")
    assert ax.get_legend().get_texts()[0].get_text() == "shared"
    with pytest.raises(ValueError, match=r"shape \(repeats, 2\)"):
        plot_mean_std([0, 1], {"shared": np.zeros(2)}, "x", "y")


def test_task_mix_bars_are_the_sampling_shares_labelled_with_passes_per_example():
    from mtl_tutorial.plotting import plot_task_mix

    sizes = {"big": 2200, "small": 220}
    ax = plot_task_mix(sizes, 2.0, num_examples=48_000, measured={"big": 0.7, "small": 0.3})
    heights = [bar.get_height() for bar in ax.patches]
    expected_small = 220**0.5 / (2200**0.5 + 220**0.5)  # p_t ∝ N_t^(1/τ), τ = 2
    assert heights == pytest.approx([1 - expected_small, expected_small])
    labels = [text.get_text() for text in ax.texts]
    assert labels == [f"{48_000 * (1 - expected_small) / 2200:.1f} passes expected", f"{48_000 * expected_small / 220:.1f} passes expected"]
    assert ax.lines[0].get_ydata().tolist() == [0.7, 0.3]
    uniform = plot_task_mix(sizes, float("inf"))
    assert [bar.get_height() for bar in uniform.patches] == pytest.approx([0.5, 0.5])
    assert "∞ (uniform)" in uniform.get_title()


@pytest.mark.parametrize("sizes", [{"big": 2200, "small": 220}, {"small": 220, "big": 2200}, {"only": 100}])
def test_task_mix_legend_covers_no_bar_and_no_label(sizes):
    """τ = 1 gives the large task nearly every batch (a share of 1 with one task): its bar and label
    reach the top of the bars, where a legend in the upper corner used to sit."""
    import matplotlib.pyplot as plt
    from mtl_tutorial.plotting import plot_task_mix

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), layout="constrained", sharey=True)  # as chapter 04 draws it
    for ax, tau in zip(axes, [1.0, float("inf")]):
        shares = dict(zip(sizes, [1.0] * len(sizes)))
        plot_task_mix(sizes, tau, num_examples=48_000, measured=shares, ax=ax)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        legend = ax.get_legend().get_window_extent(renderer)
        drawn = [*ax.patches, *ax.texts, *ax.lines]
        assert drawn and not [a for a in drawn if a.get_window_extent(renderer).overlaps(legend)]
    plt.close(fig)


def test_task_matrix_heatmap_writes_every_cell_and_is_centred_on_zero():
    from mtl_tutorial.plotting import plot_task_matrix

    matrix = np.array([[0.5, -0.25], [0.1, 0.2]])
    ax = plot_task_matrix(matrix, ["a", "b"], "affinity Z")
    assert [t.get_text() for t in ax.texts] == ["0.500", "-0.250", "0.100", "0.200"]
    image = ax.images[0]
    np.testing.assert_allclose(image.get_array(), matrix)
    assert image.get_clim() == (-0.5, 0.5)
    assert ax.get_xlabel() == "task j (measured)" and ax.get_ylabel() == "task i (stepped on)"
    with pytest.raises(ValueError, match=r"shape \(3, 3\) for 3 tasks"):
        plot_task_matrix(matrix, ["a", "b", "c"], "Z")
    hidden = plot_task_matrix(matrix, ["a", "b"], "Z", diagonal=False, fmt="{:+.2f}")
    assert hidden.images[0].get_clim() == (-0.25, 0.25)  # scaled to the off-diagonal entries
    assert hidden.images[0].get_array().mask.tolist() == [[True, False], [False, True]]
    assert [t.get_text() for t in hidden.texts] == ["+0.50", "-0.25", "+0.10", "+0.20"]


def test_gate_heatmap_rows_are_tasks_and_columns_experts():
    from mtl_tutorial.plotting import plot_gate_heatmap, plot_gates_at

    weights = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    ax = plot_gate_heatmap(weights, ["t1", "t2"], ["e1", "e2", "e3"])
    np.testing.assert_allclose(ax.images[0].get_array(), weights)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["e1", "e2", "e3"]
    assert ax.images[0].get_clim() == (0.0, 1.0)
    with pytest.raises(ValueError, match=r"\(tasks, experts\)"):
        plot_gate_heatmap(weights.T, ["t1", "t2"], ["e1", "e2", "e3"])
    axes = plot_gates_at({"MMoE": {0.0: weights, 1.0: weights[::-1]}}, {"MMoE": ["e1", "e2", "e3"]}, ["t1", "t2"], 1.0)
    np.testing.assert_allclose(axes[0].images[0].get_array(), weights[::-1])
    assert axes[0].get_title() == "MMoE, task correlation p = 1"
    with pytest.raises(ValueError, match=r"no gates of MMoE at p = 0.5"):
        plot_gates_at({"MMoE": {0.0: weights}}, {"MMoE": ["e1", "e2", "e3"]}, ["t1", "t2"], 0.5)


def test_metric_curves_plot_recorded_metrics_against_eval_steps():
    from mtl_tutorial.plotting import plot_metric_curves

    history = History(("a",))
    history.record_eval(10, {"alpha/0/a<-a": 0.9})
    history.record_eval(20, {"alpha/0/a<-a": 0.8})
    ax = plot_metric_curves(history, {"α_aa": "alpha/0/a<-a"}, "α")
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[10, 0.9], [20, 0.8]])
    with pytest.raises(ValueError, match="has no metric 'gate'"):
        plot_metric_curves(history, {"g": "gate"}, "g")


def test_mean_interval_plot_draws_the_95_percent_interval():
    from mtl_tutorial.plotting import plot_mean_interval

    values = np.array([[1.0, 0.0], [3.0, 0.0]])  # column 0: mean 2, sd √2, half-width 12.706 · √2 / √2
    ax = plot_mean_interval([0, 1], {"MMoE": values}, "p", "error")
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [2.0, 0.0])
    segments = ax.collections[0].get_segments()
    np.testing.assert_allclose([segments[0][0][1], segments[0][1][1]], [2.0 - 12.706, 2.0 + 12.706])
    with pytest.raises(ValueError, match=r"repeats >= 2"):
        plot_mean_interval([0, 1], {"MMoE": values[:1]}, "p", "error")


def test_seed_points_show_every_repeat_and_the_mean_with_its_interval():
    from mtl_tutorial.evidence import mean_interval
    from mtl_tutorial.plotting import plot_seed_points

    values = {"a": [0.5, 0.6, 0.7], "b": [0.2, 0.25]}
    ax = plot_seed_points(values, "accuracy", references={"chance": 0.1})
    dots = [line.get_ydata().tolist() for line in ax.lines if line.get_linestyle() == "None" and len(line.get_ydata()) > 1]
    assert dots[:2] == [[0.5, 0.6, 0.7], [0.2, 0.25]]
    caps = [line for line in ax.lines if line.get_marker() == "_" and line.get_markersize() == 18]  # the means
    assert [float(cap.get_ydata()[0]) for cap in caps] == pytest.approx([0.6, 0.225])
    bars = ax.collections[0].get_segments()  # the interval of "a": the t-interval of its 3 repeats
    interval = mean_interval(values["a"])
    assert bars[0][:, 1].tolist() == pytest.approx([interval.low, interval.high])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"] and ax.get_legend() is not None


def test_the_course_wide_figure_resolution_applies_to_new_figures():
    from mtl_tutorial.plotting import FIGURE_DPI, plot_task_mix

    assert FIGURE_DPI < 100  # below matplotlib's default: smaller PNGs in the committed notebooks
    assert plot_task_mix({"a": 10, "b": 5}, 2.0).figure.dpi == FIGURE_DPI


def test_score_vs_parameters_puts_each_method_at_its_mean_with_its_interval_on_a_log_axis():
    from mtl_tutorial.evidence import mean_interval
    from mtl_tutorial.showdown import ShowdownRow

    def row(method, seed, score, params):
        return ShowdownRow(method, seed, {"a": score, "b": score}, params, 1000, {"a": 1, "b": 1}, 0.1, 1, "cpu torch profiler")

    rows = [row("LoRA", 0, 0.6, 100), row("LoRA", 1, 0.8, 100), row("LoRA", 2, 0.7, 100),
            row("shared", 0, 0.5, 100), row("shared", 1, 0.55, 100), row("shared", 2, 0.6, 100),
            row("full", 0, 0.5, 10_000), row("full", 1, 0.52, 10_000), row("full", 2, 0.54, 10_000)]
    ax = plot_score_vs_parameters(rows, baseline=0.25)
    assert ax.get_xscale() == "log"
    points = [container.lines[0].get_xydata()[0].tolist() for container in ax.containers]   # each method's mean
    assert points[0] == [100.0, pytest.approx(70.0)]
    assert points[1][0] == pytest.approx(112.0) and points[1][1] == pytest.approx(55.0)  # same count: moved aside
    assert points[2] == [10_000.0, pytest.approx(52.0)]
    caps = ax.containers[0].lines[2][0].get_segments()[0]   # the error bar of the first method: its 95 % interval
    interval = mean_interval([60.0, 80.0, 70.0])
    assert caps[:, 1].tolist() == [pytest.approx(interval.low), pytest.approx(interval.high)]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["LoRA (100)", "shared (100)", "full (10,000)"]
    assert ax.get_ylim()[0] > 30   # the spread: not from 0, not stretched down to the majority class (25 %)
    assert [t.get_text() for t in ax.texts] == ["majority class: 25.0 % (below this range)"]
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="rows is empty"):
        plot_score_vs_parameters([])


def test_plot_serving_draws_ratios_with_intervals_points_not_lines_and_memory_as_lines():
    def entry(t, ratio):
        return {"examples_per_s": 10.0 * t, "ratio_to_ceiling": ratio, "ratio_low": ratio - 0.1, "ratio_high": ratio + 0.05,
                "rounds": 5, "padded_tokens": 100, "memory_bytes": t * 1e6}

    results = {t: {"mixed batch": entry(t, 0.9), "merged per task": entry(t, 1.1), "ceiling": entry(1, 1.0)} for t in (1, 2, 4)}
    ax = plot_serving(results)
    assert [c.get_label() for c in ax.containers] == ["mixed batch", "merged per task"]   # the ceiling is the line at 1
    data = ax.containers[0].lines[0]
    assert data.get_linestyle() == "None" and data.get_ydata().tolist() == [0.9, 0.9, 0.9]   # points, no trend line
    low, high = ax.containers[0].lines[2][0].get_segments()[0][:, 1]
    assert (low, high) == (pytest.approx(0.8), pytest.approx(0.95))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
    assert any(line.get_ydata()[0] == 1.0 and line.get_label() == "ceiling" for line in ax.lines)
    memory = plot_serving(results, "memory_bytes")
    assert [line.get_label() for line in memory.lines] == ["mixed batch", "merged per task"]   # ways of serving T tasks
    assert memory.lines[1].get_ydata().tolist() == [1.0, 2.0, 4.0] and memory.get_yscale() == "log"
    assert memory.lines[0].get_linestyle() != memory.lines[1].get_linestyle()   # lines on top of each other stay visible
    throughput = plot_serving(results, "examples_per_s")
    assert all(line.get_linestyle() == "None" for line in throughput.lines)
    plt.close("all")
    with pytest.raises(ValueError, match="metric must be one of"):
        plot_serving(results, "latency")


def test_plot_family_draws_one_interval_per_comparison_primary_in_black():
    from mtl_tutorial.evidence import Comparison, family_intervals
    from mtl_tutorial.plotting import plot_family

    scores = {"A": {"t": [0.80, 0.82, 0.81]}, "B": {"t": [0.70, 0.71, 0.69]}, "C": {"t": [0.79, 0.83, 0.80]}}
    results = family_intervals(scores, [Comparison("C", "B"), Comparison("C", "A")], primary=[Comparison("A", "B")])
    ax = plot_family(results)
    labels = [tick.get_text() for tick in ax.get_yticklabels()]
    assert labels == ["A − B (mean)  (primary)", "C − B (mean)", "C − A (mean)"]
    bars = [child for child in ax.containers]
    assert len(bars) == 3 and bars[0].lines[0].get_color() == "k" and bars[1].lines[0].get_color() == "0.55"
    assert bars[0].lines[0].get_xdata()[0] == pytest.approx(results[0].interval.mean)
    plt.close(ax.figure)
    with pytest.raises(ValueError, match="family_intervals"):
        plot_family([])
