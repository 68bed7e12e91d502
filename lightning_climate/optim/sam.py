"""SAM, ASAM and SAM-ON as a ``torch.optim.Optimizer`` whose ``step(closure)`` does both passes.

One step (Foret et al. 2021; Kwon et al. 2021; Mueller et al. 2023):

1. run the closure at ``w`` (forward, backward) -> gradient ``g``;
2. ascend to ``w + e`` with ``e = rho * g / ||g||`` (SAM) or ``e = rho * T^2 g / ||T g||`` with
   ``T = |w| + eta`` element-wise (ASAM), the norm taken over the perturbed tensors only;
   SAM-ON (``norm_only=True``) perturbs only the affine parameters of normalisation layers;
3. zero the gradients and run the closure again at ``w + e`` -> ``g_SAM``;
4. restore ``w`` exactly (from a copy of the perturbed tensors) and let the base optimizer step
   with ``g_SAM``.

Because the optimizer runs the closure itself (Lightning's closure has not run when ``step`` is
called), it works with Lightning's automatic and manual optimization in ``32-true`` and
``bf16-mixed``; under ``16-mixed`` Lightning's GradScaler plugin is taught to hand SAM the closure
(:mod:`lightning_climate.optim.sam_lightning`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from lightning_climate.optim.norm import NormFilter, describe_selection, norm_parameters
from lightning_climate.optim.sam_lightning import (
    hand_closure_to_sam,
    lightning_module_on_stack,
    scaler_of,
)

__all__ = ["SAM", "check_settings", "in_perturbed_pass"]

_PERTURBED_PASS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sam_perturbed_pass", default=False
)

_NO_CLOSURE = (
    "SAM.step() needs a closure that re-evaluates the loss (zero_grad, forward, backward): call "
    "optimizer.step(closure). With a GradScaler call `loss = optimizer.both_passes(closure)`, "
    "then scaler.unscale_(optimizer), clipping if any, scaler.step(optimizer), scaler.update()."
)
_UNBOUND_16_MIXED = (
    "SAM under precision='16-mixed' must know its LightningModule before the first step (the "
    "GradScaler calls optimizer.step() without the closure): build SAM inside the module's "
    "configure_optimizers (it binds itself to `self`), call `optimizer.bind(self)` there, or "
    "return the base optimizer and add the SharpnessAwareMinimization callback."
)
_UNBOUND_BATCHNORM = (
    "SAM is not bound to its model, and the model has BatchNorm layers whose running statistics "
    "the perturbed pass would update: call `optimizer.bind(model)` before training (in Lightning, "
    "build SAM inside configure_optimizers or use the SharpnessAwareMinimization callback)."
)


def in_perturbed_pass() -> bool:
    """Whether the code runs inside SAM's second (perturbed) forward/backward.

    ``training_step`` can use it to update metrics or per-example records from the first pass
    only; :class:`SAM` already silences ``LightningModule.log``/``log_dict`` during that pass.
    """
    return _PERTURBED_PASS.get()


def check_settings(
    owner: str, rho: float, eta: float, perturbation: str, every_n_steps: int
) -> None:
    """Validate the settings shared by :class:`SAM` and the SAM callback (``owner`` names it)."""
    if rho < 0:
        raise ValueError(f"{owner}: rho must be >= 0, got {rho}.")
    if eta < 0:
        raise ValueError(f"{owner}: eta must be >= 0, got {eta}.")
    if perturbation not in ("global", "local"):
        raise ValueError(
            f"{owner}: perturbation must be 'global' or 'local', got {perturbation!r}."
        )
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
        raise ValueError(f"{owner}: every_n_steps must be an integer >= 1, got {every_n_steps!r}.")


def _local(tensors: list[Tensor]) -> list[Tensor]:
    """This rank's shards of sharded (DTensor, FSDP2) tensors, in place; other tensors as they are."""
    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def _silent_log(*args: Any, **kwargs: Any) -> None:
    """Stand-in for ``LightningModule.log`` during the perturbed pass (logging is from pass 1)."""


class SAM(Optimizer):
    """Sharpness-aware minimisation around any base optimizer, with ASAM and SAM-ON variants.

    Args:
        params: parameters or parameter groups (groups may set their own ``rho``, ``adaptive``
            and ``eta``, and any option of the base optimizer).
        base_optimizer: called with the parameter groups to build the optimizer that takes the
            descent step, e.g. ``torch.optim.SGD`` or ``functools.partial(torch.optim.SGD,
            lr=0.1, momentum=0.9)``; YAML: ``{class_path: torch.optim.SGD, init_args: {...}}``.
            An already built optimizer over the same groups is wrapped (see :meth:`wrap`).
            ``None``: ``torch.optim.SGD`` with its defaults (``None`` rather than the class, so
            a YAML choosing another base optimizer gets none of SGD's values: jsonargparse#460).
        rho: radius of the perturbation (SAM ~0.05; ASAM and SAM-ON need 5-10x larger).
        adaptive: ASAM, element-wise ``T = |w| + eta`` (applied to every perturbed tensor,
            biases included).
        norm_only: SAM-ON, perturb only the parameters of normalisation layers (needs the
            model, see :meth:`bind`).
        eta: ASAM's offset, so parameters at 0 (e.g. fresh BatchNorm biases) are perturbed too.
        eps: added to the gradient norm in the denominator.
        norm_filter: replaces the default choice of normalisation modules (see
            :func:`lightning_climate.optim.norm.norm_parameters`).
        perturbation: ``"global"``: under DDP the first gradient is all-reduced, so every rank
            uses the same ``e`` and a multi-process run equals a single-process run with the same
            global batch; ``"local"``: each rank perturbs with its own gradient (the paper's
            m-sharpness, m = per-device batch) and the first backward skips DDP's all-reduce,
            halving SAM's communication.
        every_n_steps: take a SAM step every ``n``-th step (the first included) and a plain step
            of the base optimizer in between (one forward-backward): a cost knob.

    The model is found without help: built or stepped inside a LightningModule's method
    (``configure_optimizers``, Lightning's ``optimizer_step``, a manual ``training_step``), SAM
    binds itself to that module; elsewhere call :meth:`bind`. A model with BatchNorm layers that
    is not bound is refused at the first step. The closure must zero the gradients before its
    backward (Lightning's does); SAM zeroes them before the second pass. With a GradScaler see
    :meth:`both_passes` (Lightning's ``16-mixed`` uses it by itself). Sharded FSDP2 (DTensor)
    parameters are perturbed shard by shard with the global gradient norm.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: OptimizerCallable | None = None,
        rho: float = 0.05,
        adaptive: bool = False,
        norm_only: bool = False,
        eta: float = 0.01,
        eps: float = 1e-12,
        norm_filter: NormFilter | None = None,
        perturbation: Literal["global", "local"] = "global",
        every_n_steps: int = 1,
    ) -> None:
        check_settings(
            "SAM", rho=rho, eta=eta, perturbation=perturbation, every_n_steps=every_n_steps
        )
        if eps <= 0:
            raise ValueError(f"SAM: eps must be > 0, got {eps}.")
        if isinstance(base_optimizer, SAM):
            raise TypeError("SAM: base_optimizer is already a SAM optimizer; wrap it only once.")
        super().__init__(params, {"rho": rho, "adaptive": adaptive, "eta": eta})
        if isinstance(base_optimizer, Optimizer):
            if {id(p) for g in base_optimizer.param_groups for p in g["params"]} != {
                id(p) for g in self.param_groups for p in g["params"]
            }:
                raise ValueError("SAM: the wrapped optimizer must hold exactly `params`.")
            self.base_optimizer = base_optimizer
        else:
            factory = torch.optim.SGD if base_optimizer is None else base_optimizer
            self.base_optimizer = factory(self.param_groups)
        for group in self.base_optimizer.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        # One list of groups and one state for both, so schedulers, checkpoints and Lightning's
        # device moves act on the base optimizer through this wrapper.
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults = {**self.base_optimizer.defaults, **self.defaults}
        self.norm_only = norm_only
        self.eps = eps
        self.norm_filter = norm_filter
        self.perturbation = perturbation
        self.every_n_steps = every_n_steps
        self.steps_taken = 0
        self._module: nn.Module | None = None
        self._norm_ids: set[int] | None = None
        self._running_stat_modules: list[nn.modules.batchnorm._NormBase] = []
        self._pending: tuple[Any] | None = None  # (loss,) of both_passes, until its step
        self._searched_at_step = False
        self._bind_from_stack()

    @classmethod
    def wrap(cls, optimizer: Optimizer, **kwargs: Any) -> SAM:
        """Wrap a built optimizer (keeping its state, groups and attached schedulers)."""
        return cls(optimizer.param_groups, optimizer, **kwargs)

    def bind(self, module: nn.Module) -> SAM:
        """Attach the model: select SAM-ON's parameters, find the running statistics to freeze.

        Done automatically when SAM is built or stepped inside a LightningModule's method. Under
        a Lightning ``16-mixed`` GradScaler it also lets the precision plugin hand SAM the
        closure. Logs SAM-ON's selection (rank 0).
        """
        self._module = module
        self._running_stat_modules = [
            m
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
        ]
        if self.norm_only:
            selected = norm_parameters(module, self.norm_filter)
            owned = {id(p) for g in self.param_groups for p in g["params"]}
            self._norm_ids = {id(p) for p in selected.values()} & owned
            if not self._norm_ids:
                raise ValueError(
                    f"SAM(norm_only=True) found no normalisation parameters in "
                    f"{type(module).__name__} that this optimizer updates: add BatchNorm/"
                    "GroupNorm/LayerNorm layers, pass `norm_filter` to choose modules, or use "
                    "norm_only=False (full SAM)."
                )
            rank_zero_info(f"SAM-ON perturbs {describe_selection(module, selected)}.")
        if isinstance(module, LightningModule):
            hand_closure_to_sam(module)
        return self

    def _bind_from_stack(self) -> None:
        """Bind to the LightningModule building or stepping this optimizer, if there is one.

        Looks at construction and at the first step of this process (LightningCLI builds its
        top-level optimizer outside the module; Lightning steps it from the module's hook).
        """
        if self._module is not None:
            return
        module = lightning_module_on_stack({id(p) for g in self.param_groups for p in g["params"]})
        if module is not None:
            self.bind(module)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer (with SAM's defaults) once it exists."""
        base = self.__dict__.get("base_optimizer")
        if base is None:
            super().add_param_group(param_group)
            return
        base.add_param_group(param_group)
        for key in ("rho", "adaptive", "eta"):
            base.param_groups[-1].setdefault(key, self.defaults[key])

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus the number of steps taken.

        Its groups also carry ``rho``, ``adaptive`` and ``eta``; the step count decides which
        steps are SAM steps under ``every_n_steps``.
        """
        return {**self.base_optimizer.state_dict(), "sam_steps_taken": self.steps_taken}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load into the base optimizer and re-share its groups and state with this wrapper."""
        state_dict = dict(state_dict)
        self.steps_taken = int(state_dict.pop("sam_steps_taken", 0))
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def _perturbed(self) -> list[tuple[Tensor, dict[str, Any]]]:
        """The (parameter, group) pairs that the ascent moves."""
        if self.norm_only and self._norm_ids is None:
            raise RuntimeError(
                "SAM(norm_only=True) does not know which parameters are normalisation "
                "parameters: call `optimizer.bind(model)` before training (inside a "
                "LightningModule SAM binds itself; the SharpnessAwareMinimization callback too)."
            )
        return [
            (p, g)
            for g in self.param_groups
            for p in g["params"]
            if not self.norm_only or id(p) in self._norm_ids  # type: ignore[operator]
        ]

    def _trainer(self) -> Any:
        """The Lightning trainer of the bound module, if any."""
        try:
            return getattr(self._module, "trainer", None)
        except RuntimeError:  # a LightningModule that is not attached to a Trainer
            return None

    def _no_sync(self) -> Any:
        """Context that keeps DDP from all-reducing a backward, or ``None`` when not distributed.

        Sharded (FSDP2) parameters get ``None``: their gradient shards are reduce-scattered in
        every backward, and the norm over the DTensor shards is the global norm.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        if self._sharded():
            return None
        trainer = self._trainer()
        if trainer is not None and hasattr(trainer.strategy, "block_backward_sync"):
            return trainer.strategy.block_backward_sync
        if isinstance(self._module, nn.parallel.DistributedDataParallel):
            return self._module.no_sync
        return None

    def _sharded(self) -> bool:
        """Whether the parameters are sharded DTensors (FSDP2's ``fully_shard``)."""
        return any(isinstance(p, DTensor) for g in self.param_groups for p in g["params"])

    @contextlib.contextmanager
    def _first_pass(self, perturbed: list[tuple[Tensor, dict[str, Any]]]) -> Iterator[None]:
        """Pass 1 without DDP's all-reduce where possible; SAM-ON computes only its gradients.

        ``local``: the gradient stays per rank. ``global`` SAM-ON under a Lightning strategy:
        parameters without gradients would stall DDP's reducer, so pass 1 runs unsynced and the
        few perturbed gradients are averaged by hand, which equals DDP's average.
        """
        no_sync = self._no_sync()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        local = self.perturbation == "local"
        if distributed and local and self._sharded():
            raise RuntimeError(
                "SAM(perturbation='local') is not available for sharded (FSDP2 / DTensor) "
                "parameters: their gradients are reduce-scattered in every backward. Use "
                "perturbation='global' (the perturbation then uses the global gradient norm)."
            )
        if distributed and local and no_sync is None:
            raise RuntimeError(
                "SAM(perturbation='local') under torch.distributed needs the DDP wrapper to skip "
                "the first all-reduce: train with a Lightning DDP strategy, or call "
                "`optimizer.bind(ddp_model)` with the DistributedDataParallel module."
            )
        freeze = self.norm_only and (not distributed or no_sync is not None)
        keep = {id(p) for p, _ in perturbed}
        frozen = (
            [
                p
                for g in self.param_groups
                for p in g["params"]
                if p.requires_grad and id(p) not in keep
            ]
            if freeze
            else []
        )
        for p in frozen:
            p.requires_grad_(False)
        try:
            if no_sync is None or not (local or freeze):
                yield
            else:
                with no_sync():
                    yield
                if not local:
                    self._average([p.grad for p, _ in perturbed if p.grad is not None])
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def _average(self, grads: list[Tensor]) -> None:
        """All-reduce (mean) the given gradients in one flat buffer."""
        if not grads:
            return
        flat = torch.cat([g.flatten() for g in grads])
        trainer = self._trainer()
        if trainer is not None:
            flat = trainer.strategy.reduce(flat, reduce_op="mean")
        else:
            torch.distributed.all_reduce(flat)
            flat /= torch.distributed.get_world_size()
        torch._foreach_copy_(
            grads,
            [
                v.view_as(g)
                for v, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)
            ],
        )

    @contextlib.contextmanager
    def _second_pass(self) -> Iterator[None]:
        """Flag the perturbed pass, keep running statistics and silence ``self.log``."""
        token = _PERTURBED_PASS.set(True)
        stats = [
            {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None}
            for m in self._running_stat_modules
        ]
        module = self._module
        silence = module is not None and hasattr(module, "log")
        if silence:
            module.log = _silent_log  # type: ignore[union-attr]
            module.log_dict = _silent_log  # type: ignore[union-attr]
        try:
            yield
        finally:
            _PERTURBED_PASS.reset(token)
            for m, saved in zip(self._running_stat_modules, stats, strict=True):
                for name, value in saved.items():
                    getattr(m, name).copy_(value)
            if silence:
                del module.log  # type: ignore[union-attr]
                del module.log_dict  # type: ignore[union-attr]

    def _check_trainer(self) -> None:
        trainer = self._trainer()
        if trainer is not None and trainer.accumulate_grad_batches > 1:
            raise RuntimeError(
                "SAM cannot be combined with Trainer(accumulate_grad_batches="
                f"{trainer.accumulate_grad_batches}): Lightning keeps the gradients of earlier "
                "micro-batches, which would mix unperturbed and perturbed gradients. Use "
                "accumulate_grad_batches=1 with a larger batch_size."
            )

    @contextlib.contextmanager
    def _refuse_unbound_batchnorm(self) -> Iterator[None]:
        """Unbound: stop after pass 1 if a BatchNorm updating running statistics ran in it."""
        if self._module is not None:
            yield
            return
        ran: list[nn.Module] = []

        def record(module: nn.Module, args: Any) -> None:
            batchnorm = isinstance(module, nn.modules.batchnorm._NormBase)
            if batchnorm and module.training and module.track_running_stats:
                ran.append(module)

        handle = nn.modules.module.register_module_forward_pre_hook(record)
        try:
            yield
        finally:
            handle.remove()
        if ran:
            raise RuntimeError(_UNBOUND_BATCHNORM)

    @torch.no_grad()
    def ascent(self) -> list[Tensor | None]:
        """Move the perturbed parameters to ``w + e`` from their current gradients.

        Returns:
            Copies of the original values (``None`` where a tensor had no gradient), for
            :meth:`restore`.
        """
        return self._ascend(check_finite=False)  # type: ignore[return-value]

    @torch.no_grad()
    def _ascend(
        self, check_finite: bool, consume_grads: bool = False
    ) -> list[Tensor | None] | None:
        """:meth:`ascent`; with ``check_finite``, ``None`` (nothing moved) on an inf/NaN gradient.

        The perturbation is invariant to a loss scale (the gradient is normalised), so scaled
        gradients from a GradScaler need no unscaling here. With ``consume_grads`` the
        perturbation is computed in the gradient tensors themselves (the same operations, so the
        same values), which saves a model-sized buffer; for a step that zeroes them next.
        """
        perturbed = self._perturbed()
        moved = [(p, g) for p, g in perturbed if p.grad is not None]
        if not moved:
            return [None] * len(perturbed)
        grads = [p.grad for p, _ in moved]
        scaled = [(p.abs() + g["eta"]) * p.grad if g["adaptive"] else p.grad for p, g in moved]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
        if check_finite and not bool(torch.isfinite(norm)):
            return None
        backups = {id(p): p.detach().clone() for p, _ in moved}
        for group in self.param_groups:
            members = [(p, gr) for (p, g), gr in zip(moved, grads, strict=True) if g is group]
            if not members:
                continue
            e = [gr for _, gr in members]
            if consume_grads:
                torch._foreach_mul_(e, group["rho"] / (norm + self.eps))
            else:
                e = torch._foreach_mul(e, group["rho"] / (norm + self.eps))
            if group["adaptive"]:
                torch._foreach_mul_(e, [(p.abs() + group["eta"]).square() for p, _ in members])
            torch._foreach_add_([p for p, _ in members], e)
        return [backups.get(id(p)) for p, _ in perturbed]

    @torch.no_grad()
    def restore(self, backups: list[Tensor | None]) -> None:
        """Put back the values saved by :meth:`ascent` (exact copies, no subtraction)."""
        pairs = [
            (p, s) for (p, _), s in zip(self._perturbed(), backups, strict=True) if s is not None
        ]
        if pairs:
            torch._foreach_copy_(_local([p for p, _ in pairs]), _local([s for _, s in pairs]))

    def _passes(self, closure: Callable[[], Any], check_finite: bool) -> Any:
        """One step's forward-backward passes (two on a SAM step), weights restored after."""
        if not self._searched_at_step:
            self._searched_at_step = True
            self._bind_from_stack()
        self._check_trainer()
        sam_step = self.steps_taken % self.every_n_steps == 0
        self.steps_taken += 1
        if not sam_step:
            with torch.enable_grad():
                return closure()
        perturbed = self._perturbed()
        with torch.enable_grad(), self._first_pass(perturbed), self._refuse_unbound_batchnorm():
            loss = closure()
        if loss is None:
            return None
        backups = self._ascend(check_finite, consume_grads=True)  # pass 2 zeroes them
        if backups is None:  # overflow in pass 1: its inf gradient makes the scaler skip the step
            return loss
        try:
            self.zero_grad(set_to_none=True)
            with torch.enable_grad(), self._second_pass():
                closure()
        finally:
            self.restore(backups)
        return loss

    def both_passes(self, closure: Callable[[], Any]) -> Any:
        """Run the step's passes for a caller that steps through a GradScaler.

        Leaves the (scaled) gradient of the perturbed pass, the weights restored; the caller then
        unscales, clips, calls ``scaler.step(optimizer)`` (which calls :meth:`step` without a
        closure, or skips it on overflow in either pass) and ``scaler.update()`` once. Lightning's
        ``16-mixed`` plugin does this by itself once SAM is bound.

        Returns:
            The closure's value at the unperturbed point.
        """
        self._pending = None
        loss = self._passes(closure, check_finite=True)
        self._pending = (loss,)
        return loss

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run both passes of the closure and take the base optimizer's step.

        Without a closure, only after :meth:`both_passes` (the GradScaler route): the base step,
        returning the loss that :meth:`both_passes` returned.

        Returns:
            The closure's value at the unperturbed point (the loss to log), or ``None`` when the
            closure returned ``None`` (Lightning: ``training_step`` skipped the batch; no step).
        """
        if closure is None:
            if self._pending is None:
                self._bind_from_stack()
                raise RuntimeError(
                    _UNBOUND_16_MIXED if scaler_of(self._module) is not None else _NO_CLOSURE
                )
            (loss,) = self._pending
            self._pending = None
            self.base_optimizer.step()
            return loss
        self._pending = None
        loss = self._passes(closure, check_finite=False)
        if loss is None:
            return None
        self.base_optimizer.step()
        return loss
