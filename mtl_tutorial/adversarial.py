"""Adversarial multi-task learning: shared features that hide the task (the article's §4.3.3).

Gradient reversal (Ganin & Lempitsky, 2015) is the identity going forward and flips the gradient
coming back:

    R_λ(h) = h,      ∂L/∂h = −λ · ∂L/∂R_λ(h).

Put between a shared encoder and a *task discriminator* D, one backward pass trains D to tell the
tasks apart (it descends its loss) while the encoder *ascends* that loss, learning features from
which the task cannot be read. The shared-private model of Liu, Qiu & Huang (2017, "Adversarial
multi-task learning for text classification", ASP-MTL) adds a private encoder P_t per task and
classifies example x of task t from [S(x); P_t(x)], with

    L = Σ_t L_t  +  λ_adv · CE(D(R_λ(S(x))), t)  +  γ · Σ_t ‖S_tᵀ P_t‖_F²,

where S_t, P_t (n_t, H) hold the shared and private features of task t's examples in the batch: the
orthogonality term pushes the private encoders to keep what the shared space does not. Unlike the
paper (LSTM encoders, D trained on the shared LSTM's final state) our encoders are any modules,
e.g. MLPs on frozen MiniLM features; the loss keeps the paper's three terms. Our ‖S_tᵀ P_t‖_F² is
the paper's raw sum; the public code normalises it first, so its γ = 0.01 does not carry over
(``AdversarialObjective`` gives the measured factor and our default γ).

Did the encoder hide the task? The discriminator's own accuracy cannot say: an encoder fighting one
discriminator can make it *wrong* while the task stays readable. The test is a post-hoc probe
(``post_hoc_probe``): a fresh classifier trained on the final, frozen shared features of the
training examples and scored on the test examples.

Layout: the argument checks, ``GradientReversal`` (autograd function and module),
``orthogonality_penalty``, ``SharedPrivateModel``, ``reversal_ramp``, the ``AdversarialObjective``
weighting that adds the two terms to the course's training loop and its ``ConfusionObjective``
variant, ``discriminator_accuracy`` and ``post_hoc_probe``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from mtl_tutorial.models import HardSharingModel, TaskOutput, select_examples
from mtl_tutorial.objectives import weighted_sum


def _check_weight(name: str, value: Any) -> None:
    """Raise unless ``value`` is a finite number >= 0 (a bool is not a weight)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number >= 0, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be >= 0 and finite, got {value!r}")


class _ReverseGradient(torch.autograd.Function):
    """R_λ: forward h ↦ h, backward g ↦ −λ g (λ is not differentiated)."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return features.view_as(features)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(features: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """R_λ(features) with λ = ``scale`` ≥ 0: identity forward, gradient times −λ backward."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a tensor, got {type(features).__name__}")
    _check_weight("the reversal scale λ", scale)
    return _ReverseGradient.apply(features, float(scale))


class GradientReversal(nn.Module):
    """``reverse_gradient`` as a layer; set ``.scale`` during training to follow a schedule (Ganin &
    Lempitsky ramp λ from 0 to 1 as 2 / (1 + exp(−10 p)) − 1 over training progress p)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        _check_weight("the reversal scale λ", scale)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(features, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def orthogonality_penalty(shared: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
    """‖Sᵀ P‖_F² for the shared and private features of one task's examples, both (n, H_s) and (n, H_p).

    0 when every shared feature column is orthogonal to every private one over the examples.
    """
    if not isinstance(shared, torch.Tensor) or not isinstance(private, torch.Tensor):
        raise TypeError(
            f"shared and private features must be tensors, got {type(shared).__name__} and {type(private).__name__}"
        )
    if shared.dim() != 2 or private.dim() != 2 or len(shared) != len(private):
        raise ValueError(
            f"shared and private features must be (n, H) matrices of the same n examples, got "
            f"{tuple(shared.shape)} and {tuple(private.shape)}"
        )
    return (shared.T @ private).pow(2).sum()


class SharedPrivateModel(HardSharingModel):
    """ASP-MTL (module docstring): a shared encoder (the ``trunk``), a private encoder and a head per
    named task, and a task discriminator on the gradient-reversed shared features.

    shared: x -> (B, H_s); private[t]: x -> (B, H_p); heads[t]: (B, H_s + H_p) -> outputs;
    discriminator: (B, H_s) -> (B, T) task logits (default a linear layer, ``shared_dim`` needed).
    ``forward`` follows ``HardSharingModel``'s contract: a task name, or one name per example
    (returns ``{task: TaskOutput}``). The last forward's features are kept in ``self.last`` so the
    objective can add ``adversarial_loss()`` and ``orthogonality_loss()``.
    """

    def __init__(
        self,
        shared: nn.Module,
        private: Mapping[str, nn.Module],
        heads: Mapping[str, nn.Module],
        discriminator: nn.Module | None = None,
        shared_dim: int | None = None,
        reversal: float = 1.0,
    ) -> None:
        super().__init__(shared, heads)
        if not isinstance(private, Mapping):
            raise TypeError(
                f"private must be a dict task -> encoder, got {type(private).__name__}; e.g. {{'a': mlp(384, 32)}}"
            )
        if set(private) != set(heads):
            raise ValueError(
                f"give one private encoder and one head per task; private has {sorted(private)}, heads has {sorted(heads)}"
            )
        if discriminator is None:
            if shared_dim is None:
                raise ValueError("pass shared_dim (the width of the shared features) or a discriminator module")
            if not isinstance(shared_dim, int) or isinstance(shared_dim, bool) or shared_dim < 1:
                raise ValueError(
                    f"shared_dim (the width of the shared features) must be an int >= 1, got {shared_dim!r}"
                )
            discriminator = nn.Linear(shared_dim, len(heads))
        elif not isinstance(discriminator, nn.Module):
            raise TypeError(
                f"discriminator must be an nn.Module mapping (B, H_s) to (B, T), got {type(discriminator).__name__}"
            )
        self.private = nn.ModuleDict(private)
        self.reversal = GradientReversal(reversal)
        self.discriminator = discriminator
        self.last: dict[str, Any] = {}

    def forward(self, x: Any, task: str | Sequence[str]) -> torch.Tensor | dict[str, TaskOutput]:
        names = [task] * _batch_size(x) if isinstance(task, str) else task
        if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
            raise TypeError(
                f"task must be a task name (one of: {', '.join(self.tasks)}) or a list with one name per "
                f"example, got {type(task).__name__}; map task ids to names first"
            )
        for name in dict.fromkeys(names):
            self._check_task(name)
        shared = self.trunk(x)
        if len(names) != len(shared):
            raise ValueError(f"got {len(names)} task names for a batch of {len(shared)} examples; pass one per example")
        routed, private_parts = {}, {}
        for name in dict.fromkeys(names):
            positions = torch.tensor([i for i, t in enumerate(names) if t == name], device=shared.device)
            private = self.private[name](select_examples(x, positions))
            private_parts[name] = (positions, private)
            routed[name] = TaskOutput(self.heads[name](torch.cat([shared[positions], private], dim=1)), positions)
        self.last = {"shared": shared, "private": private_parts, "tasks": names}
        return routed[task].outputs if isinstance(task, str) else routed

    def task_ids(self, names: Sequence[str]) -> torch.Tensor:
        """(B,) long: the position of each example's task in ``self.tasks``."""
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise TypeError(
                f"names must be a list with one task name per example, got {type(names).__name__} {names!r}"
            )
        for name in dict.fromkeys(names):
            self._check_task(name)
        return torch.tensor([self.tasks.index(name) for name in names])

    def adversarial_loss(self) -> torch.Tensor:
        """CE(D(R_λ(S(x))), t) over the last forward's examples: D descends it, the shared encoder ascends it."""
        self._check_last()
        shared = self.last["shared"]
        logits = self.discriminator(self.reversal(shared))
        if logits.dim() != 2 or logits.shape[1] != len(self.tasks):
            raise ValueError(
                f"the discriminator returns {tuple(logits.shape)} for {len(shared)} examples, but there are "
                f"{len(self.tasks)} tasks; it must map (B, H_s) to (B, T) = (B, {len(self.tasks)}) task logits"
            )
        return nn.functional.cross_entropy(logits, self.task_ids(self.last["tasks"]).to(shared.device))

    def orthogonality_loss(self) -> torch.Tensor:
        """Σ_t ‖S_tᵀ P_t‖_F² over the tasks of the last forward (``orthogonality_penalty``)."""
        self._check_last()
        shared = self.last["shared"]
        return sum(orthogonality_penalty(shared[positions], private) for positions, private in self.last["private"].values())

    def _check_last(self) -> None:
        if not self.last:
            raise RuntimeError("run a forward pass first: the adversarial terms use the last batch's features")


def _batch_size(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return len(x)
    if isinstance(x, Mapping):
        return len(next(iter(x.values())))
    return len(x)


def reversal_ramp(progress: float) -> float:
    """Ganin & Lempitsky's schedule of λ over training progress p ∈ [0, 1]: 2 / (1 + exp(−10 p)) − 1,
    0 at the start (the discriminator learns first) and ≈ 1 from p ≈ 0.5 on."""
    if not isinstance(progress, numbers.Real) or isinstance(progress, bool):
        raise TypeError(
            f"progress must be a number (e.g. step / num_steps), got {type(progress).__name__} {progress!r}"
        )
    if math.isnan(progress):
        raise ValueError("progress is nan; pass the training progress step / num_steps, a number in [0, 1]")
    p = min(max(progress, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


class AdversarialObjective:
    """A training-loop weighting (``training.train(weighting=...)``) for ``SharedPrivateModel``:

        total = Σ_t λ_t L_t + adversarial_weight · L_adv + orthogonality_weight · L_diff.

    task_weights: λ_t (default 1). reversal: the gradient-reversal scale λ it sets on the model every
    step, ramped by ``reversal_ramp(step / ramp_steps)`` when ``ramp_steps`` is given. Each call
    records the two extra terms in ``self.log`` (``{"adversarial": [...], "orthogonality": [...]}``).

    The default weights. adversarial_weight = 0.05 is the public ASP-MTL code's (the TensorFlow
    re-implementation FrankWork/fudan_mtl_reviews). Its orthogonality weight 0.01 multiplies a
    *normalised* penalty (the difference loss of Bousmalis et al.'s Domain Separation Networks):
    centre S and P over the batch, scale every example's row to unit length (Ŝ, P̂), then average,

        L_diff^public = mean_jk (P̂ᵀ Ŝ)_jk² = ‖Ŝᵀ P̂‖_F² / (H_s · H_p),

    while ``orthogonality_penalty`` is the raw sum ‖Sᵀ P‖_F². The ratio ours / public is
    H_s · H_p · ‖Sᵀ P‖_F² / ‖Ŝᵀ P̂‖_F², about H_s · H_p · E‖s‖² · E‖p‖² for centred features and more
    for uncentred ReLU features: it grows with the widths and the feature norms, so it is no constant.
    Measured on chapter 11's model (shared mlp(384, 64), private mlp(384, 32), frozen MiniLM
    features), one task's batch of 64: 3·10² to 7·10³ at initialisation, 10³ to 4·10⁴ after 300
    training steps; the chapter's batches of 16 per task give 10³ to 6·10⁴ during training (unit-
    variance Gaussian features would give (H_s · H_p)² ≈ 4·10⁶). The default γ = 0.01 / 10⁴ = 1e-6
    puts γ · ours at ratio / 10⁴ times the public code's 0.01 · L_diff^public: 0.03 to 6 over the
    measured range (0.1 to 6 once training is under way), the public code's order; γ = 0.01 on our
    raw sum would weigh the penalty some 10⁴ times more than the public code does.
    """

    def __init__(
        self,
        adversarial_weight: float = 0.05,
        orthogonality_weight: float = 1e-6,
        reversal: float = 1.0,
        ramp_steps: int | None = None,
        task_weights: Mapping[str, float] | None = None,
    ) -> None:
        _check_weight("adversarial_weight", adversarial_weight)
        _check_weight("orthogonality_weight", orthogonality_weight)
        _check_weight("reversal", reversal)
        is_count = isinstance(ramp_steps, int) and not isinstance(ramp_steps, bool)
        if ramp_steps is not None and not (is_count and ramp_steps >= 1):
            raise ValueError(f"ramp_steps must be >= 1 or None, got {ramp_steps!r}")
        if task_weights is not None:
            if not isinstance(task_weights, Mapping):
                raise TypeError(f"task_weights must be a dict {{task: λ_t}} or None, got {type(task_weights).__name__}")
            for task, weight in task_weights.items():
                _check_weight(f"the weight of task {task!r}", weight)
        self.adversarial_weight, self.orthogonality_weight = adversarial_weight, orthogonality_weight
        self.reversal, self.ramp_steps, self.task_weights = reversal, ramp_steps, task_weights
        self.log: dict[str, list[float]] = {"adversarial": [], "orthogonality": []}

    def __call__(
        self, losses: dict[str, torch.Tensor], model: nn.Module | None = None, step: int = 1, **ctx: Any
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if not isinstance(model, SharedPrivateModel):
            raise TypeError(f"AdversarialObjective needs a SharedPrivateModel, got {type(model).__name__}")
        unknown = [task for task in self.task_weights or {} if task not in model.tasks]
        if unknown:
            raise ValueError(
                f"task_weights name unknown task(s) {', '.join(map(repr, unknown))}; "
                f"tasks are: {', '.join(model.tasks)}"
            )
        ramp = reversal_ramp(step / self.ramp_steps) if self.ramp_steps else 1.0
        model.reversal.scale = self.reversal * ramp
        weights = {task: (self.task_weights or {}).get(task, 1.0) for task in losses}
        adversarial, orthogonality = model.adversarial_loss(), model.orthogonality_loss()
        self.log["adversarial"].append(float(adversarial.detach()))
        self.log["orthogonality"].append(float(orthogonality.detach()))
        total = weighted_sum(losses, weights) + self.adversarial_weight * adversarial + self.orthogonality_weight * orthogonality
        return total, weights


def discriminator_accuracy(model: SharedPrivateModel, inputs: Mapping[str, Any]) -> float:
    """Share of examples whose task the discriminator reads off the shared features.

    inputs: task -> that task's inputs (N_t, ...). Chance is the largest task's share of the examples
    (1/T for equal sizes); at chance the shared features hide the task from D.
    """
    if not isinstance(model, SharedPrivateModel):
        raise TypeError(f"discriminator_accuracy needs a SharedPrivateModel, got {type(model).__name__}")
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a dict task -> inputs (N_t, ...), got {type(inputs).__name__}")
    if not inputs:
        raise ValueError("inputs is empty; pass {task: inputs (N_t, ...)} for at least one task")
    for task, x in inputs.items():
        model._check_task(task)
        if isinstance(x, tuple):
            raise TypeError(
                f"inputs[{task!r}] is a tuple; pass the inputs only, not (inputs, targets): "
                f"{{t: x for t, (x, _) in data.items()}}"
            )
        if len(x) == 0:
            raise ValueError(f"inputs[{task!r}] has no examples; give every task at least one")
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for task, x in inputs.items():
            predicted = model.discriminator(model.trunk(x)).argmax(dim=1)
            correct += int((predicted == model.tasks.index(task)).sum())
            total += len(predicted)
    model.train(was_training)
    return correct / total


class ConfusionObjective(AdversarialObjective):
    """The confusion loss of Tzeng et al. (2015) instead of gradient reversal:

        total = Σ_t λ_t L_t + adversarial_weight · CE(D(S(x)), t) + orthogonality_weight · L_diff
                + confusion_weight · ramp · CE(u, D(S(x))),      CE(u, q) = −(1/T) Σ_c log q_c,

    The discriminator D descends its own cross-entropy on the *non-reversed* shared features (λ = 0,
    so that term sends no gradient into the encoder); the encoder descends the cross-entropy between
    the uniform distribution u over the T tasks and D's prediction, through a detached copy of D's
    weights, so each part moves only its own parameters. CE(u, q) is smallest (log T) when D's
    prediction is uniform, so the encoder is pushed to make D *unsure*, not wrong. ``ramp_steps``
    ramps the confusion weight in on ``reversal_ramp``'s schedule. ``self.log["confusion"]`` records it.
    """

    def __init__(
        self,
        adversarial_weight: float = 0.05,
        orthogonality_weight: float = 1e-6,
        confusion_weight: float = 1.0,
        ramp_steps: int | None = None,
        task_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(adversarial_weight, orthogonality_weight, reversal=0.0, ramp_steps=ramp_steps,
                         task_weights=task_weights)
        _check_weight("confusion_weight", confusion_weight)
        self.confusion_weight = confusion_weight
        self.log["confusion"] = []

    def __call__(
        self, losses: dict[str, torch.Tensor], model: nn.Module | None = None, step: int = 1, **ctx: Any
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total, weights = super().__call__(losses, model=model, step=step, **ctx)
        frozen = {name: p.detach() for name, p in model.discriminator.named_parameters()}
        logits = functional_call(model.discriminator, frozen, (model.last["shared"],))
        confusion = -torch.log_softmax(logits, dim=1).mean()   # CE(uniform, D(S(x))), averaged over the batch
        self.log["confusion"].append(float(confusion.detach()))
        ramp = reversal_ramp(step / self.ramp_steps) if self.ramp_steps else 1.0
        return total + self.confusion_weight * ramp * confusion, weights


def _check_task_inputs(name: str, inputs: Any) -> None:
    if not isinstance(inputs, Mapping):
        raise TypeError(f"{name} must be a dict task -> inputs (N_t, ...), got {type(inputs).__name__}")
    if len(inputs) < 2:
        raise ValueError(f"{name} needs at least two tasks to tell apart, got {list(inputs)}")
    for task, x in inputs.items():
        if isinstance(x, tuple):
            raise TypeError(f"{name}[{task!r}] is a tuple; pass the inputs only, not (inputs, targets): "
                            f"{{t: x for t, (x, _) in data.items()}}")
        if len(x) == 0:
            raise ValueError(f"{name}[{task!r}] has no examples; give every task at least one")


def post_hoc_probe(
    encoder: nn.Module,
    train_inputs: Mapping[str, Any],
    test_inputs: Mapping[str, Any],
    hidden: int | None = None,
    steps: int = 300,
    lr: float = 0.01,
    seed: int = 0,
) -> float:
    """How well can the task be read off ``encoder``'s frozen features? Test accuracy of a fresh probe.

    The probe is trained on the features F = encoder(x) (N, H) of ``train_inputs`` (task -> inputs
    (N_t, ...)), with each example's task (its position in ``train_inputs``) as the label, and scored
    on the features of ``test_inputs`` (the same tasks). F is standardised with the training
    features' mean and standard deviation; the probe is linear (H -> T) or, with ``hidden``, an MLP
    (H -> hidden -> ReLU -> T); it takes ``steps`` full-batch Adam steps at ``lr`` on the
    cross-entropy, from a torch seed ``seed``. The encoder is not changed (no gradient reaches it).

    Chance is the largest task's share of the test examples; on tasks that label the same inputs the
    ceiling is lower (an input alone cannot name which of its labelings it came with).
    """
    _check_task_inputs("train_inputs", train_inputs)
    _check_task_inputs("test_inputs", test_inputs)
    if list(train_inputs) != list(test_inputs):
        raise ValueError(f"train_inputs and test_inputs must name the same tasks in the same order, got "
                         f"{list(train_inputs)} and {list(test_inputs)}")
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be an nn.Module mapping inputs to features (N, H), got {type(encoder).__name__}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if hidden is not None and (not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1):
        raise ValueError(f"hidden must be None (a linear probe) or an int >= 1, got {hidden!r}")
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        def features(inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
            parts = [encoder(x) for x in inputs.values()]
            labels = torch.cat([torch.full((len(f),), t, dtype=torch.long) for t, f in enumerate(parts)])
            return torch.cat(parts).float(), labels

        train_x, train_y = features(train_inputs)
        test_x, test_y = features(test_inputs)
    encoder.train(was_training)
    if train_x.dim() != 2:
        raise ValueError(f"the encoder must map inputs to features (N, H), got {tuple(train_x.shape)}")
    mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    width, classes = train_x.shape[1], len(train_inputs)
    probe = nn.Linear(width, classes) if hidden is None else nn.Sequential(
        nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, classes))
    torch.random.set_rng_state(generator_state)   # the caller's random stream is left as it was
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(probe(train_x), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        return float((probe(test_x).argmax(dim=1) == test_y).float().mean())
