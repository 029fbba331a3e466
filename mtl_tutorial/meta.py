"""Meta-learning across tasks: an initialisation θ that a new task adapts in a few steps (the article's §4.2.3).

Each *episode* is a task τ with a small support set and a query set. The inner loop adapts θ to τ
with k steps of plain SGD on the support loss,

    θ'_τ = θ − α ∇L_τ^support(θ)        (repeated k times, each step from the previous θ'),

and the outer loop moves θ so that this adaptation works well:

    Reptile (Nichol et al., 2018):           θ ← θ + ε · mean_τ (θ'_τ − θ)
    first-order MAML (Finn et al., 2017):    θ ← θ − β · mean_τ ∇L_τ^query(θ'_τ)

MAML's exact meta-gradient differentiates through the inner loop, ∇_θ L^query(θ'(θ)) =
(∂θ'/∂θ)ᵀ ∇L^query(θ'); the first-order version drops the Jacobian ∂θ'/∂θ (second derivatives) and
takes the gradient at θ'. The inner loop here is written out with ``torch.func.functional_call``, so
θ' is a dict of tensors the learner can inspect, and the model's own parameters stay θ.

An episode may bring a fresh ``head`` (e.g. a zero-initialised linear layer with the task's number of
classes): the network is then ``head(model(x))``, the head is adapted in the inner loop and thrown
away, and only ``model`` is meta-learned (the tasks of a family need not share a label space).

Layout: the argument checks; ``Episode`` and ``inner_loop``; the two meta-updates (``reptile_step``,
``fomaml_gradient`` and ``fomaml_step``) and ``meta_train``; episode samplers for sinusoid regression
and for few-shot classification; ``few_shot_support`` and ``adapt`` for evaluation on a held-out task.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from mtl_tutorial.checks import check_count, is_real_number

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Params = dict[str, torch.Tensor]



def _check_meta_lr(meta_lr: Any) -> None:
    if not is_real_number(meta_lr) or not (math.isfinite(meta_lr) and meta_lr > 0):
        raise ValueError(
            f"meta_lr must be a finite number > 0, got {meta_lr!r}: Reptile's θ ← θ + ε · mean(θ' − θ) with "
            f"ε <= 0 stands still or moves θ away from the adapted weights, and first-order MAML's optimizer "
            f"refuses it"
        )


def _check_rng(rng: Any) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}; e.g. np.random.default_rng(seed)")


def _check_pair(name: str, pair: Any) -> None:
    """Raise unless ``pair`` is (inputs, targets) with the same number n >= 1 of examples."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name} must be an (inputs, targets) pair, got {type(pair).__name__}")
    inputs, targets = pair
    if len(inputs) != len(targets):
        raise ValueError(f"{name} has {len(inputs)} inputs but {len(targets)} targets; they must match")
    if len(targets) == 0:
        raise ValueError(f"{name} has no examples; give it at least one (a mean over 0 examples is nan)")


def _check_tensors(name: str, pair: tuple[Any, Any]) -> None:
    if not all(isinstance(part, torch.Tensor) for part in pair):
        raise TypeError(
            f"{name} must be tensors (inputs (N, ...), labels (N,)), got {type(pair[0]).__name__} and "
            f"{type(pair[1]).__name__}; e.g. frozen features and torch.tensor(labels)"
        )


def _class_labels(name: str, labels: Any) -> torch.Tensor:
    """``labels`` as a 1-D tensor of integer class ids >= 0, or a clear error."""
    labels = torch.as_tensor(labels)
    if labels.dim() != 1:
        raise ValueError(f"{name} must be one class id per example, shape (N,), got {tuple(labels.shape)}; "
                         f"for one-hot labels use labels.argmax(dim=1)")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be integer class ids, got {labels.dtype}; convert them with labels.long()")
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"{name} must be class ids >= 0, got {int(labels.min())}")
    return labels


class Episode(NamedTuple):
    """One task of a family: support (x (n, ...), y (n, ...)) to adapt on, query to score the adaptation.

    head: a fresh module put after the meta-learned model for this task only, or None.
    """

    support: tuple[torch.Tensor, torch.Tensor]
    query: tuple[torch.Tensor, torch.Tensor]
    loss_fn: LossFunction
    head: nn.Module | None = None


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def _network(model: nn.Module, head: nn.Module | None) -> nn.Module:
    _check_model(model)
    if head is not None and not isinstance(head, nn.Module):
        raise TypeError(
            f"head must be an nn.Module or None, got {type(head).__name__}; e.g. zero_head(feature_dim, num_classes)"
        )
    return model if head is None else nn.Sequential(model, head)


def _params(network: nn.Module) -> Params:
    return {name: p.detach().clone().requires_grad_() for name, p in network.named_parameters()}


def inner_loop(
    network: nn.Module,
    loss_fn: LossFunction,
    support: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    lr: float,
    params: Params | None = None,
) -> Params:
    """θ' after ``steps`` SGD steps θ ← θ − lr · ∇L(θ) on ``support``, starting from ``params`` (default:
    the network's own parameters, which are left untouched). Returns θ' as leaf tensors (first order:
    no graph back to θ)."""
    _check_inner(steps, lr)
    _check_model(network)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function (outputs, targets) -> loss, got {type(loss_fn).__name__}")
    _check_pair("support", support)
    x, y = support
    names = [name for name, _ in network.named_parameters()]
    if params is not None and set(params) != set(names):
        raise ValueError(
            f"params must name every parameter of the network and nothing else: missing "
            f"{sorted(set(names) - set(params))[:3]}, unknown {sorted(set(params) - set(names))[:3]}"
        )
    if steps > 0 and not names:
        raise ValueError(
            f"the network has no parameters to adapt ({type(network).__name__}); give the episode a head, "
            f"e.g. adapt(model, support, loss_fn, steps, lr, head=zero_head(feature_dim, num_classes))"
        )
    params = _params(network) if params is None else params
    for _ in range(steps):
        loss = loss_fn(functional_call(network, params, (x,)), y)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"loss_fn must return a scalar (0-dim tensor), got {shape}; reduce it, e.g. with reduction='mean'"
            )
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {name: (p - lr * g).detach().requires_grad_() for (name, p), g in zip(params.items(), grads)}
    return params


def _check_inner(steps: Any, lr: Any) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or not is_real_number(lr):
        raise TypeError(
            f"the inner loop needs an int number of steps and a number lr, got {type(steps).__name__} {steps!r} "
            f"and {type(lr).__name__} {lr!r}"
        )
    if steps < 0 or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"the inner loop needs steps >= 0 and lr > 0 (finite), got {steps} and {lr}")


def _check_episodes(model: nn.Module, episodes: Sequence[Episode]) -> None:
    _check_model(model)
    if isinstance(episodes, Episode) or not isinstance(episodes, (list, tuple)):
        raise TypeError(
            f"episodes must be a list of Episode, got {type(episodes).__name__}; for one episode pass [episode]"
        )
    if not episodes:
        raise ValueError("a meta-step needs at least one episode (task)")
    for k, episode in enumerate(episodes):
        if not isinstance(episode, Episode):
            raise TypeError(
                f"episode {k} is a {type(episode).__name__}, not an Episode; build it as "
                f"Episode(support=(x, y), query=(x, y), loss_fn=loss)"
            )
        _check_pair(f"the support set of episode {k}", episode.support)
        _check_pair(f"the query set of episode {k}", episode.query)


def reptile_step(model: nn.Module, episodes: Sequence[Episode], inner_steps: int, inner_lr: float, meta_lr: float) -> float:
    """One Reptile meta-update of ``model`` in place: θ ← θ + ε · mean_τ (θ'_τ − θ), ε = ``meta_lr``.

    Returns the mean query loss at θ'_τ (how well the adapted models do, before the update).
    """
    _check_episodes(model, episodes)
    _check_meta_lr(meta_lr)
    theta = {name: p.detach().clone() for name, p in model.named_parameters()}
    moves = {name: torch.zeros_like(p) for name, p in theta.items()}
    query_losses = []
    for episode in episodes:
        network = _network(model, episode.head)
        adapted = inner_loop(network, episode.loss_fn, episode.support, inner_steps, inner_lr)
        prefix = "" if episode.head is None else "0."
        for name in moves:
            moves[name] += adapted[prefix + name].detach() - theta[name]
        with torch.no_grad():
            query_losses.append(float(episode.loss_fn(functional_call(network, adapted, (episode.query[0],)), episode.query[1])))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(meta_lr * moves[name] / len(episodes))
    return float(np.mean(query_losses))


def fomaml_gradient(
    model: nn.Module, episodes: Sequence[Episode], inner_steps: int, inner_lr: float
) -> tuple[Params, float]:
    """First-order MAML's meta-gradient: mean_τ ∇L_τ^query evaluated at θ'_τ, for ``model``'s parameters.

    Returns (name -> gradient, mean query loss at θ'_τ).
    """
    _check_episodes(model, episodes)
    gradient = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    query_losses = []
    for episode in episodes:
        network = _network(model, episode.head)
        adapted = inner_loop(network, episode.loss_fn, episode.support, inner_steps, inner_lr)
        loss = episode.loss_fn(functional_call(network, adapted, (episode.query[0],)), episode.query[1])
        grads = dict(zip(adapted, torch.autograd.grad(loss, list(adapted.values()))))
        prefix = "" if episode.head is None else "0."
        for name in gradient:
            gradient[name] += grads[prefix + name] / len(episodes)
        query_losses.append(float(loss.detach()))
    return gradient, float(np.mean(query_losses))


def fomaml_step(
    model: nn.Module, episodes: Sequence[Episode], inner_steps: int, inner_lr: float, optimizer: torch.optim.Optimizer
) -> float:
    """One first-order MAML update: the meta-gradient into ``.grad``, then ``optimizer.step()``."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch optimizer over model.parameters(), got {type(optimizer).__name__}; "
            f"e.g. torch.optim.Adam(model.parameters(), lr=1e-3)"
        )
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in held for p in model.parameters()):
        raise ValueError(
            "the optimizer holds none of model's parameters, so its step would leave the model unchanged; "
            "build it from this model: torch.optim.Adam(model.parameters(), lr=...)"
        )
    gradient, query_loss = fomaml_gradient(model, episodes, inner_steps, inner_lr)
    optimizer.zero_grad(set_to_none=True)
    for name, p in model.named_parameters():
        p.grad = gradient[name].clone()
    optimizer.step()
    return query_loss


METHODS = ("reptile", "fomaml")


def meta_train(
    model: nn.Module,
    sample_episode: Callable[[np.random.Generator], Episode],
    num_steps: int,
    method: str = "reptile",
    meta_batch_size: int = 4,
    inner_steps: int = 5,
    inner_lr: float = 0.01,
    meta_lr: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Meta-train ``model`` in place for ``num_steps`` meta-steps of ``meta_batch_size`` episodes.

    sample_episode(rng) -> Episode draws a task of the family. method: ``"reptile"`` (``meta_lr`` is
    ε) or ``"fomaml"`` (Adam at ``meta_lr``). Returns the mean query loss after adaptation, per meta-step.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods are: {', '.join(METHODS)}")
    if not callable(sample_episode):
        raise TypeError(
            f"sample_episode must be a function rng -> Episode (e.g. SinusoidTasks()), got "
            f"{type(sample_episode).__name__}"
        )
    check_count("num_steps", num_steps)
    check_count("meta_batch_size", meta_batch_size)
    _check_inner(inner_steps, inner_lr)
    _check_meta_lr(meta_lr)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    _check_model(model)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=meta_lr) if method == "fomaml" else None
    losses = []
    for _ in tqdm(range(num_steps), desc=f"meta-training ({method})", disable=not progress, leave=False):
        episodes = [sample_episode(rng) for _ in range(meta_batch_size)]
        if method == "reptile":
            losses.append(reptile_step(model, episodes, inner_steps, inner_lr, meta_lr))
        else:
            losses.append(fomaml_step(model, episodes, inner_steps, inner_lr, optimizer))
    return losses


class SinusoidTasks:
    """The regression family of Finn et al. (2017): y = A sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π],
    x ~ U[−5, 5]; each call draws a task with ``k_shot`` support and ``query_size`` query points."""

    def __init__(self, k_shot: int = 10, query_size: int = 10) -> None:
        check_count("k_shot", k_shot)
        check_count("query_size", query_size)
        self.k_shot, self.query_size = k_shot, query_size

    @staticmethod
    def draw(rng: np.random.Generator, num_points: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """(x (n, 1), y (n, 1), A, φ) of one random task."""
        _check_rng(rng)
        check_count("num_points", num_points)
        amplitude, phase = rng.uniform(0.1, 5.0), rng.uniform(0.0, math.pi)
        x = rng.uniform(-5.0, 5.0, size=(num_points, 1))
        return torch.tensor(x, dtype=torch.float32), torch.tensor(amplitude * np.sin(x - phase), dtype=torch.float32), amplitude, phase

    def __call__(self, rng: np.random.Generator) -> Episode:
        x, y, _, _ = self.draw(rng, self.k_shot + self.query_size)
        k = self.k_shot
        return Episode((x[:k], y[:k]), (x[k:], y[k:]), nn.functional.mse_loss)


def few_shot_support(labels: torch.Tensor, k_per_class: int, rng: np.random.Generator) -> torch.Tensor:
    """(C · k,) indices: ``k_per_class`` examples of every class in ``labels`` (N,), drawn without replacement."""
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or len(labels) == 0:
        raise ValueError(
            f"labels must be a non-empty (N,) tensor, one class per example, got shape {tuple(labels.shape)}"
        )
    check_count("k_per_class", k_per_class)
    _check_rng(rng)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten().numpy()
        if len(members) < k_per_class:
            raise ValueError(
                f"class {c} has {len(members)} examples, fewer than k_per_class = {k_per_class}; lower k or drop the class"
            )
        chosen.append(rng.choice(members, size=k_per_class, replace=False))
    return torch.from_numpy(np.concatenate(chosen))


class ClassificationEpisodes:
    """Few-shot episodes over several classification tasks: each call draws a task uniformly, then
    ``k_per_class`` support and ``query_per_class`` query examples of each of its classes, and a fresh
    zero-initialised linear head (``feature_dim`` -> its number of classes).

    tasks: name -> (inputs (N, ...), labels (N,)), e.g. frozen features of the training splits.
    """

    def __init__(self, tasks: Mapping[str, tuple[torch.Tensor, torch.Tensor]], feature_dim: int, k_per_class: int, query_per_class: int) -> None:
        if not isinstance(tasks, Mapping):
            raise TypeError(f"tasks must be a dict {{task: (inputs, labels)}}, got {type(tasks).__name__}")
        if not tasks:
            raise ValueError("tasks is empty; pass {task: (inputs, labels)} of the meta-training tasks")
        check_count("feature_dim", feature_dim)
        check_count("k_per_class", k_per_class)
        check_count("query_per_class", query_per_class)
        self.tasks, self.feature_dim = dict(tasks), feature_dim
        self.k_per_class, self.query_per_class = k_per_class, query_per_class
        for name, pair in self.tasks.items():
            _check_pair(f"task {name!r}", pair)
            _check_tensors(f"the inputs and labels of task {name!r}", pair)
            counts = torch.bincount(_class_labels(f"the labels of task {name!r}", pair[1]))
            if int((counts > 0).sum()) < 2:
                raise ValueError(
                    f"task {name!r} has a single class; a few-shot episode needs at least 2 classes to tell apart"
                )
            if int(counts[counts > 0].min()) < k_per_class + query_per_class:
                raise ValueError(
                    f"task {name!r} has a class with {int(counts[counts > 0].min())} examples, fewer than "
                    f"k_per_class + query_per_class = {k_per_class + query_per_class}"
                )

    def __call__(self, rng: np.random.Generator) -> Episode:
        _check_rng(rng)
        name = list(self.tasks)[rng.integers(len(self.tasks))]
        inputs, labels = self.tasks[name]
        chosen = few_shot_support(labels, self.k_per_class + self.query_per_class, rng)
        per_class = chosen.view(-1, self.k_per_class + self.query_per_class)
        support, query = per_class[:, : self.k_per_class].flatten(), per_class[:, self.k_per_class :].flatten()
        classes = torch.unique(torch.as_tensor(labels))
        remap = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long)
        remap[classes] = torch.arange(len(classes))
        head = zero_head(self.feature_dim, len(classes))
        return Episode((inputs[support], remap[labels[support]]), (inputs[query], remap[labels[query]]),
                       nn.functional.cross_entropy, head)


def zero_head(feature_dim: int, num_classes: int) -> nn.Linear:
    """A linear head with zero weights and bias: every class starts equally likely, so the first inner
    steps are driven by the features alone."""
    check_count("feature_dim", feature_dim)
    check_count("num_classes", num_classes)
    head = nn.Linear(feature_dim, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def adapt(
    model: nn.Module,
    support: tuple[torch.Tensor, torch.Tensor],
    loss_fn: LossFunction,
    steps: int,
    lr: float,
    head: nn.Module | None = None,
) -> nn.Module:
    """A copy of ``head(model(·))`` (or of ``model``) fine-tuned by ``steps`` SGD steps on ``support``
    only, the inner loop of meta-training; ``model`` itself is left as it was."""
    network = copy.deepcopy(_network(model, head))
    adapted = inner_loop(network, loss_fn, support, steps, lr)
    with torch.no_grad():
        for name, p in network.named_parameters():
            p.copy_(adapted[name])
    return network.eval()


def few_shot_accuracy(
    model: nn.Module,
    train_split: tuple[torch.Tensor, torch.Tensor],
    test_split: tuple[torch.Tensor, torch.Tensor],
    k_per_class: int,
    steps: int,
    lr: float,
    rng: np.random.Generator,
) -> tuple[float, nn.Module]:
    """Few-shot evaluation on a held-out task: ``k_per_class`` support examples per class drawn from
    ``train_split`` only, ``adapt`` of ``model`` plus a zero head on them, accuracy on ``test_split``.

    ``model`` maps inputs to features (``nn.Identity()`` adapts a head on the inputs alone).
    Returns (accuracy, the adapted network); the test split is read only to score.
    """
    for name, split in (("train_split", train_split), ("test_split", test_split)):
        _check_pair(name, split)
        _check_tensors(f"the inputs and labels of {name}", split)
    x, y = train_split[0], _class_labels("the train_split labels", train_split[1])
    _class_labels("the test_split labels", test_split[1])
    chosen = few_shot_support(y, k_per_class, rng)
    _check_inner(steps, lr)
    _check_model(model)
    with torch.no_grad():
        features = model(x[:1])
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"model must map inputs (N, ...) to features (N, H), got {shape}; flatten its output")
    feature_dim = features.shape[1]
    num_classes = int(y.max()) + 1
    network = adapt(model, (x[chosen], y[chosen]), nn.functional.cross_entropy, steps, lr, zero_head(feature_dim, num_classes))
    test_x, test_y = test_split
    with torch.no_grad():
        accuracy = float((network(test_x).argmax(dim=1) == torch.as_tensor(test_y)).float().mean())
    return accuracy, network
