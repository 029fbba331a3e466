"""The training loop: History contents, weighting seam, non-finite losses, evaluation."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mtl_tutorial.data import MultiTaskDataset, multitask_loader
from mtl_tutorial.models import HardSharingModel
from mtl_tutorial.runtime import check_device
from mtl_tutorial.training import (
    History,
    NonFiniteLossError,
    accuracy,
    check_targets,
    evaluate,
    frozen_submodules,
    macro_f1,
    majority_class_accuracy,
    mean_squared_error,
    normalized_mean_squared_error,
    train,
)


def regression_head():
    return nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))


def regression_setup(mixed=False, targets_b=None):
    torch.manual_seed(0)
    x = torch.randn(40, 3)
    data = {"a": (x, x.sum(1)), "b": (x, x[:, 0] if targets_b is None else targets_b)}
    loader = multitask_loader(MultiTaskDataset(data), batch_size=8, strategy="uniform", mixed=mixed, seed=0)
    model = HardSharingModel(nn.Linear(3, 4), {"a": regression_head(), "b": regression_head()})
    loss_fns = {"a": nn.functional.mse_loss, "b": nn.functional.mse_loss}
    return model, loader, loss_fns, data


def test_history_records_every_step_and_evaluation():
    model, loader, loss_fns, data = regression_setup()
    history = train(
        model, loader, loss_fns, num_steps=12, lr=0.01, progress=False,
        eval_fn=lambda m: evaluate(m, data, {"mse": mean_squared_error}), eval_every=5,
    )
    assert history.steps == list(range(1, 13))
    assert history.eval_steps == [5, 10, 12]  # every 5 steps and after the last
    assert set(history.metrics) == {"a/mse", "b/mse"} and len(history.metrics["a/mse"]) == 3
    # uniform single-task batches alternate a, b, a, ...: each step has one task's loss, the other nan
    a_losses = np.array(history.losses["a"])
    assert not np.isnan(a_losses[0::2]).any() and np.isnan(a_losses[1::2]).all()
    steps, values = history.loss_curve("a")
    assert steps.tolist() == list(range(1, 13, 2)) and values.tolist() == a_losses[0::2].tolist()
    assert history.weight_curve("b")[1].tolist() == [1.0] * 6
    assert history.total_loss[0] == history.losses["a"][0]
    assert history.final_metrics() == {name: values[-1] for name, values in history.metrics.items()}
    arrays = history.as_arrays()
    assert set(arrays) == {"step", "total_loss", "loss/a", "loss/b", "weight/a", "weight/b", "eval_step",
                           "metric/a/mse", "metric/b/mse"}
    assert history.metrics["a/mse"][-1] < history.metrics["a/mse"][0]  # it learns


def test_mixed_batches_give_both_losses_per_step_and_static_weights_apply():
    model, loader, loss_fns, _ = regression_setup(mixed=True)
    history = train(model, loader, loss_fns, num_steps=5, weighting={"a": 0.25, "b": 2.0}, progress=False)
    for k in range(5):
        a, b = history.losses["a"][k], history.losses["b"][k]
        assert history.total_loss[k] == pytest.approx(0.25 * a + 2.0 * b, rel=1e-6)
    assert history.weight_curve("a")[1].tolist() == [0.25] * 5


def test_custom_weighting_gets_step_and_model():
    model, loader, loss_fns, _ = regression_setup(mixed=True)
    seen = []

    def weighting(losses, step, model, **ctx):
        seen.append((step, type(model).__name__))
        weights = {task: 1.0 / step for task in losses}
        return sum(weights[t] * loss for t, loss in losses.items()), weights

    history = train(model, loader, loss_fns, num_steps=3, weighting=weighting, progress=False)
    assert seen == [(1, "HardSharingModel"), (2, "HardSharingModel"), (3, "HardSharingModel")]
    assert history.task_weights["a"] == pytest.approx([1.0, 0.5, 1 / 3])


def test_static_weights_are_validated_before_training():
    model, loader, loss_fns, _ = regression_setup()
    with pytest.raises(ValueError, match="no weight for task 'b'"):
        train(model, loader, loss_fns, num_steps=1, weighting={"a": 1.0}, progress=False)


def test_nan_loss_stops_with_step_task_and_history():
    targets_b = torch.zeros(40)
    targets_b[:] = math.nan  # every example of task b has a nan target
    model, loader, loss_fns, _ = regression_setup(targets_b=targets_b)
    with pytest.raises(NonFiniteLossError, match="loss of task 'b' is not finite at step 2") as caught:
        train(model, loader, loss_fns, num_steps=10, progress=False)
    error = caught.value
    assert (error.step, error.task) == (2, "b") and math.isnan(error.losses["b"])
    assert error.history.steps == [1] and not math.isnan(error.history.losses["a"][0])


def test_infinite_loss_is_caught_too():
    model, loader, loss_fns, _ = regression_setup(mixed=True)
    loss_fns["a"] = lambda outputs, targets: outputs.sum() * math.inf
    with pytest.raises(NonFiniteLossError, match="task 'a' is not finite at step 1") as caught:
        train(model, loader, loss_fns, num_steps=3, progress=False)
    assert caught.value.history.steps == []


def test_a_task_without_loss_function_is_named():
    model, loader, loss_fns, _ = regression_setup()
    del loss_fns["b"]
    with pytest.raises(ValueError, match="task\\(s\\) b with no loss function; loss_fns has: a"):
        train(model, loader, loss_fns, num_steps=3, progress=False)


def test_history_record_eval_fills_missing_metrics_with_nan():
    history = History(("a",))
    history.record_eval(1, {"a/acc": 0.5})
    history.record_eval(2, {"a/f1": 0.25})
    assert history.metrics["a/acc"][0] == 0.5 and math.isnan(history.metrics["a/acc"][1])
    assert math.isnan(history.metrics["a/f1"][0]) and history.metrics["a/f1"][1] == 0.25
    with pytest.raises(ValueError, match="unknown task 'b'; tasks are: a"):
        history.loss_curve("b")


def test_metric_values():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 0, 1])
    assert accuracy(logits, labels).item() == 0.75
    # class 0: tp 2, fp 0, fn 1 -> 4/5; class 1: tp 1, fp 1, fn 0 -> 2/3
    assert macro_f1(logits, labels).item() == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert mean_squared_error(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item() == 2.5
    # targets 0, 2 have variance 1: predicting their mean scores 1, a perfect fit 0
    assert normalized_mean_squared_error(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0])).item() == 1.0
    assert normalized_mean_squared_error(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 2.0])).item() == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        mean_squared_error(torch.zeros(2, 1), torch.zeros(2))


def test_evaluate_batches_texts_and_tensors():
    class TextLength(nn.Module):  # outputs the length of each text as a one-class logit
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x, task):
            return self.scale * torch.tensor([[float(len(t))] for t in x])

    texts, lengths = ["a", "bb", "ccc"], torch.tensor([[1.0], [2.0], [3.0]])
    result = evaluate(TextLength(), {"t": (texts, lengths)}, {"mse": mean_squared_error}, batch_size=2)
    assert result == {"t/mse": 0.0}


def test_module_weighting_is_trained_at_its_own_lr_and_may_set_its_own_gradients():
    class HalfLearned(nn.Module):  # λ_a = 1, λ_b = scale; writes scale's gradient itself
        lr = 0.5

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, losses, **ctx):
            self.scale.grad = torch.ones(())  # survives: the loop clears gradients before calling us
            weights = {"a": 1.0, "b": float(self.scale.detach())}
            return losses["a"] + self.scale.detach() * losses["b"], weights

    model, loader, loss_fns, _ = regression_setup(mixed=True)
    weighting = HalfLearned()
    history = train(model, loader, loss_fns, num_steps=3, lr=0.01, weighting=weighting, progress=False)
    assert history.task_weights["b"] == pytest.approx([1.0, 0.5, 0.0], abs=1e-6)  # Adam moves scale by lr = 0.5
    assert weighting.scale.item() == pytest.approx(-0.5)


def test_a_weighting_that_writes_gradients_is_not_back_propagated():
    class ZeroGradients:  # writes zero gradients: the model must not move
        writes_gradients = True

        def __call__(self, losses, model, **ctx):
            for parameter in model.parameters():
                parameter.grad = torch.zeros_like(parameter)
            total = sum(loss.detach() for loss in losses.values())
            return total, dict.fromkeys(losses, 1.0)

    model, loader, loss_fns, _ = regression_setup(mixed=True)
    before = [p.detach().clone() for p in model.parameters()]
    history = train(model, loader, loss_fns, num_steps=3, weighting=ZeroGradients(), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert len(history.steps) == 3 and not any(p.grad is None for p in model.parameters())



def classification_setup(labels, batch_size=8):
    """A 3-class task 'sentiment' on random inputs with the given (N, ...) labels."""
    torch.manual_seed(0)
    x = torch.randn(len(labels), 3)
    model = HardSharingModel(nn.Linear(3, 4), {"sentiment": nn.Linear(4, 3)})
    loader = multitask_loader(MultiTaskDataset({"sentiment": (x, labels)}), batch_size=batch_size, seed=0)
    return model, loader, x


def test_training_with_a_label_outside_the_head_names_task_value_and_head_size():
    labels = torch.tensor([0, 1, 2, 7, 1, 0, 2, 1])
    model, loader, _ = classification_setup(labels)
    with pytest.raises(ValueError, match=r"label 7 of task 'sentiment' is outside the head's 3 classes \(0..2\)"):
        train(model, loader, {"sentiment": nn.functional.cross_entropy}, num_steps=1, progress=False)


def test_training_with_labels_of_shape_b_1_says_to_squeeze_them():
    model, loader, _ = classification_setup(torch.tensor([0, 1, 2, 1, 0, 2, 1, 0])[:, None])
    with pytest.raises(ValueError, match=r"labels of task 'sentiment' must have shape \(N,\) = \(8,\).*"
                                         r"got \(8, 1\); squeeze them: labels.squeeze\(1\)"):
        train(model, loader, {"sentiment": nn.functional.cross_entropy}, num_steps=1, progress=False)


def test_an_unreduced_loss_names_the_task_and_says_to_reduce_it():
    model, loader, _ = classification_setup(torch.tensor([0, 1, 2, 1, 0, 2, 1, 0]))
    per_example = lambda outputs, targets: nn.functional.cross_entropy(outputs, targets, reduction="none")  # noqa: E731
    with pytest.raises(ValueError, match=r"loss of task 'sentiment' must be a 0-dim tensor, got \(8,\); "
                                         r"reduce it first, e.g. loss.mean\(\) \(a loss function with reduction='none'"):
        train(model, loader, {"sentiment": per_example}, num_steps=1, progress=False)


def test_a_single_logit_head_with_integer_labels_is_not_checked_as_classes():
    # one logit per example and 0/1 labels: binary cross-entropy, not a 1-class softmax
    model = HardSharingModel(nn.Linear(3, 4), {"spam": nn.Linear(4, 1)})
    x, labels = torch.randn(8, 3), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    loader = multitask_loader(MultiTaskDataset({"spam": (x, labels)}), batch_size=4, seed=0)
    bce = lambda logits, y: nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), y.float())  # noqa: E731
    history = train(model, loader, {"spam": bce}, num_steps=2, progress=False)
    assert len(history.steps) == 2 and all(math.isfinite(v) for v in history.losses["spam"])


def test_a_one_shot_generator_says_the_loader_was_exhausted_after_n_batches():
    model, loader, loss_fns, _ = regression_setup()
    batches = list(loader)[:5]
    assert len(train(model, (b for b in batches), loss_fns, num_steps=5, progress=False).steps) == 5
    with pytest.raises(ValueError, match="the loader was exhausted after 5 batches.*not a generator"):
        train(model, (b for b in batches), loss_fns, num_steps=6, progress=False)
    assert len(train(model, batches, loss_fns, num_steps=12, progress=False).steps) == 12  # a list cycles
    with pytest.raises(ValueError, match="the loader yielded no batches"):
        train(model, [], loss_fns, num_steps=1, progress=False)


def test_a_device_this_machine_lacks_is_a_clear_error(monkeypatch):
    model, loader, loss_fns, _ = regression_setup()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="device='cuda' but torch sees no CUDA GPU; use 'cpu'"):
        train(model, loader, loss_fns, num_steps=1, device="cuda", progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match="device='cuda:1' but only 1 GPU\\(s\\) exist"):
        check_device("cuda:1")
    with pytest.raises(ValueError, match="device='gpu' is not a device; use cpu, cuda, cuda:N or mps"):
        check_device("gpu")
    assert check_device("cpu") == torch.device("cpu")


def test_evaluate_rejects_labels_outside_the_heads_classes():
    labels = torch.arange(8) % 7  # 7 classes for a 3-class head: accuracy would silently count them wrong
    model, _, x = classification_setup(labels)
    with pytest.raises(ValueError, match=r"label 3 of task 'sentiment' is outside the head's 3 classes \(0..2\).*"
                                         r"one output per class \(7 for labels up to 6\)"):
        evaluate(model, {"sentiment": (x, labels)}, {"accuracy": accuracy})


def test_evaluate_raises_on_nan_outputs_naming_the_task():
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 1, 0])
    model, _, x = classification_setup(labels)
    x[:3] = math.nan
    model.train()
    with pytest.raises(FloatingPointError, match="outputs of task 'sentiment' are nan or inf for 3 of 8 examples"):
        evaluate(model, {"sentiment": (x, labels)}, {"accuracy": accuracy}, batch_size=4)
    assert model.training  # evaluate gives the model back in the mode it came in


@pytest.mark.parametrize(
    ("data", "batch_size", "message"),
    [
        ((torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), 256, "task 'sentiment' has no examples"),
        ((torch.zeros(5, 3), torch.zeros(4, dtype=torch.long)), 256, "task 'sentiment' has 5 inputs but 4 targets"),
        ((torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)), 0, "batch_size must be a positive int, got 0"),
    ],
)
def test_evaluate_rejects_empty_or_mismatched_data_and_a_zero_batch_size(data, batch_size, message):
    model, _, _ = classification_setup(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=message):
        evaluate(model, {"sentiment": data}, {"accuracy": accuracy}, batch_size=batch_size)


def test_evaluate_on_an_unknown_task_lists_the_tasks():
    model, _, x = classification_setup(torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown task 'sentimnet'; tasks are: sentiment"):
        evaluate(model, {"sentimnet": (x, torch.zeros(8, dtype=torch.long))}, {"accuracy": accuracy})


def test_evaluate_scores_a_classifier():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 5.0]])

    class Fixed(nn.Module):  # returns the logits of the examples asked for
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, positions, task):
            return self.scale * logits[positions]

    result = evaluate(Fixed(), {"t": (torch.arange(4), torch.tensor([0, 0, 0, 2]))}, {"accuracy": accuracy}, batch_size=3)
    assert result == {"t/accuracy": 0.75}


@pytest.mark.parametrize("metric", [accuracy, macro_f1])
def test_class_metrics_check_shapes_dtypes_and_range(metric):
    logits, labels = torch.eye(3)[[0, 1, 2, 1]], torch.tensor([0, 1, 2, 1])
    assert metric(logits, labels).item() == 1.0  # perfect predictions
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(4,\).*got \(4, 1\); squeeze them"):
        metric(logits, labels[:, None])  # (N, 1) would broadcast against (N,) to (N, N)
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\), got \(4,\)"):
        metric(logits[:, 0], labels)
    with pytest.raises(ValueError, match="labels must be integer class ids, got torch.float32"):
        metric(logits, labels.float())
    with pytest.raises(ValueError, match=r"label -1 is outside the head's 3 classes \(0..2\)"):
        metric(logits, torch.tensor([0, 1, -1, 1]))


def test_check_targets_counts_examples_and_leaves_regression_targets_to_the_loss():
    with pytest.raises(ValueError, match="task 'a' has 3 outputs but 2 targets"):
        check_targets("a", torch.zeros(3), torch.zeros(2))
    check_targets("a", torch.zeros(3, 2), torch.full((3, 2), 9.0))  # float targets: no class check
    check_targets("a", torch.zeros(3, 1), torch.tensor([0, 1, 5]))  # single logit: no class check


def test_majority_class_accuracy_counts_the_training_majority_on_the_test_labels():
    train_labels = torch.tensor([0, 0, 0, 1, 2])
    test_labels = torch.tensor([1, 1, 0, 2])
    # the training majority is class 0: right on 1 of 4 test labels (the test majority, class 1, would give 2 of 4)
    assert majority_class_accuracy(train_labels, test_labels) == 0.25
    assert majority_class_accuracy(torch.tensor([2, 1, 1, 2]), torch.tensor([1, 2, 2])) == pytest.approx(1 / 3)  # tie: lowest id


@pytest.mark.parametrize("train_labels, test_labels, message", [
    (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), "train_labels must be a non-empty 1-d tensor of integer"),
    (torch.tensor([0, 1]), torch.tensor([], dtype=torch.long), "test_labels must be a non-empty"),
    (torch.tensor([[0, 1]]), torch.tensor([0]), "train_labels must be"),
    (torch.tensor([0, -1]), torch.tensor([0]), "negative class ids"),
])
def test_majority_class_accuracy_refuses_labels_that_are_not_class_ids(train_labels, test_labels, message):
    with pytest.raises(ValueError, match=message):
        majority_class_accuracy(train_labels, test_labels)


def _trunk_with_frozen_dropout():
    """A frozen lower block with dropout, a trainable upper block with dropout, one head."""
    torch.manual_seed(0)
    lower = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5)).requires_grad_(False)
    upper = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    return HardSharingModel(nn.Sequential(lower, upper), {"a": regression_head(), "b": regression_head()}), lower, upper


def _modes_during_training(frozen_modules):
    model, lower, upper = _trunk_with_frozen_dropout()
    seen = {"lower": [], "upper": []}
    lower[1].register_forward_hook(lambda module, args, out: seen["lower"].append(module.training))
    upper[1].register_forward_hook(lambda module, args, out: seen["upper"].append(module.training))
    _, loader, loss_fns, _ = regression_setup()
    train(model, loader, loss_fns, num_steps=3, progress=False, frozen_modules=frozen_modules)
    return seen


def test_frozen_modules_run_as_they_are_evaluated_during_training():
    seen = _modes_during_training("eval")
    assert seen["lower"] and not any(seen["lower"])   # frozen block: dropout off at every step
    assert all(seen["upper"])                         # trainable block: dropout on


def test_frozen_modules_train_keeps_the_whole_model_in_training_mode():
    seen = _modes_during_training("train")
    assert all(seen["lower"]) and all(seen["upper"])
    with pytest.raises(ValueError, match="frozen_modules must be 'eval' or 'train'"):
        _modes_during_training("off")


def test_frozen_submodules_are_the_largest_wholly_frozen_ones():
    model, lower, upper = _trunk_with_frozen_dropout()
    assert frozen_submodules(model) == [lower]
    upper[0].weight.requires_grad_(False)             # a block with one trainable tensor left is not frozen
    assert frozen_submodules(model) == [lower]
    model.requires_grad_(False)
    assert frozen_submodules(model) == [model]
