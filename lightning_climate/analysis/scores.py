"""Per-example difficulty scores of a classifier, as pure functions of tensors.

Definitions follow Kwok et al., "Dataset Difficulty and the Role of Inductive Bias" (2024), with
``p = softmax(logits)``, ``y`` the true label and ``C`` classes:

* ``loss``: cross-entropy ``-log p_y``; ``accuracy``: ``1[argmax p = y]``;
* ``confidence``: ``p_y``; ``max_confidence``: ``max_k p_k``; ``entropy``: ``-sum_k p_k log p_k``;
* ``margin``: ``p_y - max_{k != y} p_k`` on **probabilities** (the AUM of Pleiss et al. uses logits);
* ``el2n``: ``||p - onehot(y)||_2``;
* ``grand``: ``||grad_theta CE(x, y)||_2`` over all parameters, per example (:func:`grand`);
* ``vog``: variance over checkpoints of the input gradient of ``p_y``, averaged over channels first
  and over pixels last, without class-wise normalisation (:class:`VoGAccumulator`);
* forgetting statistics of an accuracy trace with the ``acc(-1) = 0`` convention
  (:func:`forgetting_statistics`);
* prediction depth from k-NN probes on intermediate layers (:func:`prediction_depth`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

__all__ = [
    "OUTPUT_SCORES",
    "VoGAccumulator",
    "forgetting_statistics",
    "functional_forward",
    "grand",
    "grand_loop",
    "input_gradients",
    "knn_predict",
    "output_scores",
    "prediction_depth",
]

#: scores computed from one forward pass (logits and labels only).
OUTPUT_SCORES = ("loss", "accuracy", "confidence", "max_confidence", "entropy", "margin", "el2n")


def _check_logits(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(
            f"Difficulty scores need logits of shape (batch, classes), got {tuple(logits.shape)}; "
            "make the model (or the `forward` callable) return class logits."
        )
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"Targets must be class indices of shape ({logits.shape[0]},), got "
            f"{tuple(target.shape)}; one-hot or soft labels are not supported."
        )


def output_scores(logits: Tensor, target: Tensor) -> dict[str, Tensor]:
    """All scores of :data:`OUTPUT_SCORES` from one batch of logits, computed in float64.

    Args:
        logits: ``(B, C)`` unnormalised class scores.
        target: ``(B,)`` integer class labels.

    Returns:
        A dict ``name -> (B,)`` float64 tensor for every name of :data:`OUTPUT_SCORES`.
    """
    _check_logits(logits, target)
    logits = logits.detach().double()
    target = target.long()
    log_p = torch.log_softmax(logits, dim=1)
    p = log_p.exp()
    p_y = p.gather(1, target[:, None]).squeeze(1)
    others = p.scatter(1, target[:, None], float("-inf"))
    onehot = F.one_hot(target, logits.shape[1]).double()
    return {
        "loss": -log_p.gather(1, target[:, None]).squeeze(1),
        "accuracy": (logits.argmax(1) == target).double(),
        "confidence": p_y,
        "max_confidence": p.max(1).values,
        "entropy": -(p * log_p).nan_to_num().sum(1),
        "margin": p_y - others.max(1).values,
        "el2n": torch.linalg.vector_norm(p - onehot, dim=1),
    }


def _named_tensors(
    module: nn.Module, parameters: Sequence[str] | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Trainable parameters to differentiate (those under the ``parameters`` prefixes), and the rest."""

    def chosen(name: str) -> bool:
        return parameters is None or any(name == p or name.startswith(f"{p}.") for p in parameters)

    params, others = {}, {}
    for name, p in module.named_parameters():
        if p.requires_grad and chosen(name):
            params[name] = p.detach()
        else:
            others[name] = p.detach()
    if not params:
        raise ValueError(
            f"GraNd: no trainable parameter of {type(module).__name__} is under {list(parameters or [])}; "
            "name submodules of the model (e.g. its classifier head) as in named_parameters()."
        )
    return params, {**others, **dict(module.named_buffers())}


def grand(
    module: nn.Module,
    inputs: Tensor,
    target: Tensor,
    chunk_size: int | None = None,
    parameters: Sequence[str] | None = None,
) -> Tensor:
    """GraNd: per-example norm of the gradient of the cross-entropy w.r.t. trainable parameters.

    Vectorised with :func:`torch.func.vmap` over :func:`torch.func.grad`, so one call replaces a
    loop of ``B`` backward passes. Put ``module`` in eval mode first (BatchNorm must not use batch
    statistics: a single example has none).

    Args:
        module: maps a batch ``(B, ...)`` of inputs to ``(B, C)`` logits.
        inputs: ``(B, ...)`` input batch.
        target: ``(B,)`` class labels.
        chunk_size: examples per vectorised chunk; the per-example gradients of one chunk are
            reduced to norms before the next chunk, so memory is ``chunk_size x num_params``.
            ``None`` processes the whole batch at once.
        parameters: restrict the gradient to the parameters under these name prefixes (e.g. the
            last layer, ``["fc"]``: the last-layer approximation of GraNd, which needs a backward
            pass through that layer only); ``None`` uses every trainable parameter.

    Returns:
        ``(B,)`` float64 gradient norms.
    """
    params, others = _named_tensors(module, parameters)

    def loss_one(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(module, (p, others), (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    target = target.long()
    step = max(chunk_size or len(inputs), 1)
    norms = [torch.zeros(0, dtype=torch.float64, device=inputs.device)]
    for start in range(0, len(inputs), step):
        grads = per_example(params, inputs[start : start + step], target[start : start + step])
        squares = [g.double().flatten(1).square().sum(1) for g in grads.values()]
        del grads  # free this chunk's per-example gradients before the next chunk
        norms.append(torch.stack(squares).sum(0).sqrt())
    return torch.cat(norms)


def grand_loop(module: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
    """Reference GraNd with one ``autograd.grad`` call per example (slow; for tests and benchmarks)."""
    params = [p for p in module.parameters() if p.requires_grad]
    norms = []
    for x, y in zip(inputs, target.long(), strict=True):
        loss = F.cross_entropy(module(x.unsqueeze(0)), y.unsqueeze(0))
        grads = torch.autograd.grad(loss, params)
        norms.append(torch.stack([g.double().square().sum() for g in grads]).sum().sqrt())
    return torch.stack(norms)


def input_gradients(module: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
    """Gradient of the true-class probability ``p_y`` w.r.t. each example's input.

    The examples do not interact in eval mode, so the gradient of the batch sum of ``p_y`` is the
    stack of per-example gradients; parameters' ``.grad`` fields are left untouched.

    Returns:
        Tensor of the shape of ``inputs``.
    """
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = module(x)
        _check_logits(logits, target)
        p_y = torch.softmax(logits, 1).gather(1, target.long()[:, None]).sum()
        (g,) = torch.autograd.grad(p_y, x)
    return g


class VoGAccumulator:
    """Variance of gradients (VoG) over checkpoints, accumulated online (Welford, float64).

    Each checkpoint adds the input gradients of every example; gradients with a channel axis
    (``(N, C, H, W)``) are first averaged over channels. :meth:`compute` returns the variance over
    checkpoints (population variance, ``ddof=0``) averaged over the remaining pixels. Memory is one
    float64 mean and one sum of squares per example and pixel.

    Args:
        num_examples: size of the dataset the example indices point into.
    """

    def __init__(self, num_examples: int) -> None:
        self.num_examples = num_examples
        self.count = torch.zeros(num_examples, dtype=torch.long)
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    @staticmethod
    def reduce_channels(gradients: Tensor) -> Tensor:
        """Float64 gradients with the channel axis of ``(N, C, H, W)`` averaged away."""
        return gradients.double().mean(1) if gradients.ndim == 4 else gradients.double()

    def update(self, index: Tensor, gradients: Tensor) -> None:
        """Add one checkpoint's input gradients ``(n, ...)`` of the examples ``index`` ``(n,)``."""
        g = self.reduce_channels(gradients.detach().cpu())
        if self.mean is None or self.m2 is None:
            self.mean = torch.zeros(self.num_examples, *g.shape[1:], dtype=torch.float64)
            self.m2 = torch.zeros_like(self.mean)
        index = index.cpu().long()
        self.count[index] += 1
        n = self.count[index].double().view(-1, *([1] * (g.ndim - 1)))
        delta = g - self.mean[index]
        self.mean[index] += delta / n
        self.m2[index] += delta * (g - self.mean[index])

    def compute(self) -> Tensor:
        """``(num_examples,)`` VoG; NaN for examples seen at fewer than one checkpoint."""
        if self.m2 is None:
            return torch.full((self.num_examples,), float("nan"), dtype=torch.float64)
        n = self.count.double().clamp_min(1).view(-1, *([1] * (self.m2.ndim - 1)))
        vog = (self.m2 / n).flatten(1).mean(1)
        return torch.where(self.count > 0, vog, float("nan"))

    def state_dict(self) -> dict[str, Tensor | None]:
        """Tensors needed to resume the accumulation."""
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: Mapping[str, Tensor | None]) -> None:
        """Restore what :meth:`state_dict` returned."""
        count = state["count"]
        assert count is not None
        self.count = count.clone()
        self.num_examples = len(self.count)
        self.mean = None if state["mean"] is None else state["mean"].clone()
        self.m2 = None if state["m2"] is None else state["m2"].clone()


def forgetting_statistics(accuracy: Tensor) -> dict[str, Tensor]:
    """Forgetting statistics of per-example accuracy traces, with ``acc(-1) = 0`` prepended.

    Args:
        accuracy: ``(T, N)`` 0/1 accuracy of ``N`` examples at ``T`` successive evaluations.

    Returns:
        ``forgetting``: number of 1 -> 0 transitions; ``first_learned``: first evaluation with a
        0 -> 1 transition (``T`` if never correct); ``first_unforgettable``: the last 0 -> 1
        transition after which the example stays correct (``T`` if wrong at the end);
        ``unforgettable``: learned at least once and never forgotten (0/1). All ``(N,)`` long.
    """
    if accuracy.ndim != 2:
        raise ValueError(f"accuracy must have shape (T, N), got {tuple(accuracy.shape)}.")
    acc = accuracy.long()
    num_evals = acc.shape[0]
    padded = torch.cat([torch.zeros_like(acc[:1]), acc])
    learned = (padded[1:] == 1) & (padded[:-1] == 0)
    forgotten = (padded[1:] == 0) & (padded[:-1] == 1)
    t = torch.arange(num_evals, device=acc.device)[:, None].expand_as(acc)
    never = torch.full_like(t, num_evals)
    first_learned = torch.where(learned, t, never).min(0).values
    last_learned = torch.where(learned, t, -1).max(0).values
    correct_at_end = acc[-1] == 1 if num_evals else torch.zeros(acc.shape[1], dtype=torch.bool)
    first_unforgettable = torch.where(correct_at_end, last_learned, num_evals)
    forgetting = forgotten.sum(0)
    unforgettable = (learned.any(0) & (forgetting == 0)).long()
    return {
        "forgetting": forgetting,
        "first_learned": first_learned,
        "first_unforgettable": first_unforgettable,
        "unforgettable": unforgettable,
    }


def knn_predict(features: Tensor, labels: Tensor, k: int, chunk_size: int = 1024) -> Tensor:
    """Leave-one-out k-NN class prediction of every point from the others (Euclidean distance).

    Ties in the vote go to the smallest class index. Used as the probe of prediction depth.

    Args:
        features: ``(N, ...)`` representations; flattened per example.
        labels: ``(N,)`` class labels of the points.
        k: neighbours voting; at most ``N - 1``.
        chunk_size: query rows per distance block (memory ``chunk_size x N``).

    Returns:
        ``(N,)`` predicted labels.
    """
    x = features.flatten(1).double()
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k-NN needs 1 <= k < number of points ({n}), got k={k}.")
    num_classes = int(labels.max()) + 1
    preds = []
    for start in range(0, n, chunk_size):
        dist = torch.cdist(x[start : start + chunk_size], x)
        rows = torch.arange(dist.shape[0])
        dist[rows, rows + start] = float("inf")
        neighbours = dist.topk(k, dim=1, largest=False).indices
        votes = F.one_hot(labels[neighbours].long(), num_classes).sum(1)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def prediction_depth(probe_predictions: Tensor, final_prediction: Tensor) -> Tensor:
    """Prediction depth (Baldock et al. 2021) from the k-NN predictions of ``L`` probed layers.

    The depth is the earliest probed layer from which every deeper probe agrees with the network's
    final prediction; ``L`` when even the last probe disagrees.

    Args:
        probe_predictions: ``(L, N)`` k-NN predictions, layers ordered from input to output.
        final_prediction: ``(N,)`` the network's predicted class.

    Returns:
        ``(N,)`` long depths in ``[0, L]``.
    """
    agree = probe_predictions == final_prediction[None]
    # suffix "all agree" along layers: flip, cumulative product, flip back
    suffix = agree.flip(0).long().cumprod(0).flip(0)
    return probe_predictions.shape[0] - suffix.sum(0)


def functional_forward(module: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor]) -> nn.Module:
    """Wrap ``fn(module, x)`` as a module, so :func:`torch.func.functional_call` can trace it."""
    return _ForwardWrapper(module, fn)


class _ForwardWrapper(nn.Module):
    def __init__(self, module: nn.Module, fn: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(self.module, x)
