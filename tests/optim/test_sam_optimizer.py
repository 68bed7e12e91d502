from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_climate.optim import SAM, in_perturbed_pass


def quadratic_loss(w: Tensor, x: Tensor) -> Tensor:
    return ((x @ w).tanh() ** 2).sum() + (w**3).sum()


def grad_at(w: Tensor, x: Tensor) -> Tensor:
    w = w.detach().clone().requires_grad_(True)
    quadratic_loss(w, x).backward()
    return w.grad


def make_closure(opt: SAM, w: nn.Parameter, x: Tensor, log: list[Any] | None = None) -> Any:
    def closure() -> Tensor:
        opt.zero_grad()
        loss = quadratic_loss(w, x)
        loss.backward()
        if log is not None:
            log.append((loss.item(), in_perturbed_pass()))
        return loss.detach()

    return closure


@pytest.fixture
def problem() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(5, generator=g, dtype=torch.float64), torch.randn(
        7, 5, generator=g, dtype=torch.float64
    )


def test_sam_step_equals_hand_written_update(problem: tuple[Tensor, Tensor]) -> None:
    w0, x = problem
    w = nn.Parameter(w0.clone())
    opt = SAM([w], functools.partial(torch.optim.SGD, lr=0.1), rho=0.3)
    log: list[Any] = []
    loss = opt.step(make_closure(opt, w, x, log))
    g = grad_at(w0, x)
    eps = 0.3 * g / g.norm()
    expected = w0 - 0.1 * grad_at(w0 + eps, x)
    torch.testing.assert_close(w.detach(), expected)
    # the returned loss is the first pass's, and the closure saw one pass of each kind
    torch.testing.assert_close(loss, quadratic_loss(w0, x))
    assert [flag for _, flag in log] == [False, True]


def test_asam_step_equals_hand_written_update(problem: tuple[Tensor, Tensor]) -> None:
    w0, x = problem
    w = nn.Parameter(w0.clone())
    opt = SAM([w], functools.partial(torch.optim.SGD, lr=0.05), rho=2.0, adaptive=True, eta=0.01)
    opt.step(make_closure(opt, w, x))
    g = grad_at(w0, x)
    t = w0.abs() + 0.01
    eps = 2.0 * t**2 * g / (t * g).norm()
    # the perturbation has radius rho in the T^-1-scaled space
    torch.testing.assert_close((eps / t).norm(), torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(w.detach(), w0 - 0.05 * grad_at(w0 + eps, x))


def test_global_norm_over_groups_with_group_rho(problem: tuple[Tensor, Tensor]) -> None:
    w0, x = problem
    a, b = nn.Parameter(w0[:2].clone()), nn.Parameter(w0[2:].clone())

    def closure() -> Tensor:
        opt.zero_grad()
        loss = quadratic_loss(torch.cat([a, b]), x)
        loss.backward()
        return loss

    opt = SAM(
        [{"params": [a]}, {"params": [b], "rho": 0.0}],
        functools.partial(torch.optim.SGD, lr=0.1),
        rho=0.5,
    )
    opt.step(closure)
    g = grad_at(w0, x)
    eps = torch.cat([0.5 * g[:2], 0.0 * g[2:]]) / g.norm()
    torch.testing.assert_close(torch.cat([a, b]).detach(), w0 - 0.1 * grad_at(w0 + eps, x))


def test_rho_zero_equals_base_optimizer(problem: tuple[Tensor, Tensor]) -> None:
    w0, x = problem
    w_sam, w_ref = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    sam = SAM([w_sam], functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), rho=0.0)
    ref = torch.optim.SGD([w_ref], lr=0.1, momentum=0.9)
    for _ in range(3):
        sam.step(make_closure(sam, w_sam, x))
        ref.zero_grad()
        quadratic_loss(w_ref, x).backward()
        ref.step()
    torch.testing.assert_close(w_sam.detach(), w_ref.detach())


class TinyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.ln(self.bn(self.lin(x)).relu()))


def test_norm_only_perturbs_exactly_norm_params_and_restores() -> None:
    torch.manual_seed(0)
    model = TinyBN()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, norm_only=True).bind(model)
    x = torch.randn(8, 4)
    model(x).square().mean().backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    backups = opt.ascent()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"bn.weight", "bn.bias", "ln.weight", "ln.bias"}
    # radius rho over the perturbed tensors only
    delta = torch.cat(
        [(p - before[n]).flatten() for n, p in model.named_parameters() if n in moved]
    )
    torch.testing.assert_close(delta.norm(), torch.tensor(0.5))
    opt.restore(backups)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


@pytest.mark.parametrize("adaptive", [False, True])
def test_step_ascends_like_public_ascent_bit_for_bit(adaptive: bool) -> None:
    # step() computes the perturbation in the first-pass gradients (saving a buffer); the public
    # ascent() keeps the gradients: both must move the weights to the same values
    torch.manual_seed(0)
    model, twin = TinyBN(), TinyBN()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(8, 4)
    sgd = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    opt = SAM(model.parameters(), sgd, rho=0.5, adaptive=adaptive).bind(model)
    ref = SAM(twin.parameters(), sgd, rho=0.5, adaptive=adaptive).bind(twin)
    perturbed: list[dict[str, Tensor]] = []

    def closure() -> Tensor:
        opt.zero_grad()
        if in_perturbed_pass():
            perturbed.append({n: p.detach().clone() for n, p in model.named_parameters()})
        loss = model(x).square().mean()
        loss.backward()
        return loss

    opt.step(closure)
    twin(x).square().mean().backward()  # pass 1 (its BatchNorm statistics as in step())
    grads = {n: p.grad.clone() for n, p in twin.named_parameters()}
    backups = ref.ascent()
    for n, p in twin.named_parameters():
        assert torch.equal(p, perturbed[0][n]), n
        assert torch.equal(p.grad, grads[n]), n  # ascent() left the gradient as it was
    ref.zero_grad()
    with torch.no_grad():  # pass 2 without touching the running statistics, as step() does
        stats = {k: v.clone() for k, v in twin.bn.named_buffers()}
    twin(x).square().mean().backward()
    ref.restore(backups)
    for k, v in stats.items():
        getattr(twin.bn, k).copy_(v)
    ref.base_optimizer.step()
    for n, p in twin.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[n]), n


def test_norm_only_first_backward_skips_weight_gradients() -> None:
    torch.manual_seed(0)
    model = TinyBN()
    opt = SAM(
        model.parameters(), functools.partial(torch.optim.SGD, lr=0.1), norm_only=True, rho=1.0
    )
    opt.bind(model)
    x = torch.randn(8, 4)
    seen: list[set[str]] = []

    def closure() -> Tensor:
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        seen.append({n for n, p in model.named_parameters() if p.grad is not None})
        return loss

    opt.step(closure)
    assert seen[0] == {"bn.weight", "bn.bias", "ln.weight", "ln.bias"}
    assert seen[1] == {n for n, _ in model.named_parameters()}
    assert all(p.requires_grad for p in model.parameters())


def test_norm_only_step_matches_manual_computation() -> None:
    torch.manual_seed(0)
    model = TinyBN()
    ref = TinyBN()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(8, 4)
    opt = SAM(
        model.parameters(), functools.partial(torch.optim.SGD, lr=0.1), norm_only=True, rho=0.7
    )
    opt.bind(model)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    opt.step(closure)
    # by hand on the reference copy
    norm_names = ["bn.weight", "bn.bias", "ln.weight", "ln.bias"]
    params = dict(ref.named_parameters())
    grads = torch.autograd.grad(ref(x).square().mean(), [params[n] for n in norm_names])
    gnorm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for n, g in zip(norm_names, grads, strict=True):
            params[n].add_(0.7 * g / gnorm)
    full = torch.autograd.grad(ref(x).square().mean(), list(params.values()))
    with torch.no_grad():
        for n, g in zip(norm_names, grads, strict=True):
            params[n].sub_(0.7 * g / gnorm)
        for p, g in zip(params.values(), full, strict=True):
            p.sub_(0.1 * g)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, params[n], msg=n)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_statistics_only_from_first_pass(momentum: float | None) -> None:
    torch.manual_seed(0)
    model = TinyBN()
    model.bn.momentum = momentum
    twin = TinyBN()
    twin.load_state_dict(model.state_dict())
    twin.bn.momentum = momentum
    x = torch.randn(8, 4)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5).bind(model)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    opt.step(closure)
    twin(x)  # one unperturbed forward in train mode
    torch.testing.assert_close(model.bn.running_mean, twin.bn.running_mean)
    torch.testing.assert_close(model.bn.running_var, twin.bn.running_var)
    assert int(model.bn.num_batches_tracked) == 1


def test_without_closure_names_the_fix() -> None:
    w = nn.Parameter(torch.ones(2))
    opt = SAM([w], torch.optim.SGD)
    with pytest.raises(RuntimeError, match=r"call optimizer.step\(closure\).*both_passes"):
        opt.step()


def test_norm_only_without_bind_or_norm_layers() -> None:
    w = nn.Parameter(torch.ones(2))
    opt = SAM([w], torch.optim.SGD, norm_only=True)
    with pytest.raises(RuntimeError, match=r"call `optimizer.bind\(model\)`"):
        opt.step(lambda: torch.tensor(0.0))
    lin = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="found no normalisation parameters in Linear"):
        SAM(lin.parameters(), torch.optim.SGD, norm_only=True).bind(lin)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rho": -1.0}, ValueError, "rho must be >= 0"),
        ({"eta": -0.1}, ValueError, "eta must be >= 0"),
        ({"eps": 0.0}, ValueError, "eps must be > 0"),
        ({"perturbation": "ranks"}, ValueError, "perturbation must be 'global' or 'local'"),
        ({"every_n_steps": 0}, ValueError, "every_n_steps must be an integer >= 1"),
        ({"every_n_steps": 1.5}, ValueError, "every_n_steps must be an integer >= 1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SAM([nn.Parameter(torch.ones(1))], torch.optim.SGD, **kwargs)


def test_wrap_keeps_groups_state_and_scheduler(problem: tuple[Tensor, Tensor]) -> None:
    w0, x = problem
    w = nn.Parameter(w0.clone())
    base = torch.optim.SGD([w], lr=1.0, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(base, step_size=1, gamma=0.5)
    opt = SAM.wrap(base, rho=0.1)
    assert opt.param_groups is base.param_groups and opt.state is base.state
    opt.step(make_closure(opt, w, x))
    sched.step()
    assert base.param_groups[0]["lr"] == 0.5 == opt.param_groups[0]["lr"]
    assert "momentum_buffer" in opt.state[w]
    with pytest.raises(TypeError, match="already a SAM optimizer"):
        SAM.wrap(opt)
    with pytest.raises(ValueError, match="must hold exactly"):
        SAM([nn.Parameter(torch.ones(1))], base)


def test_state_dict_round_trip_continues_identically(problem: tuple[Tensor, Tensor]) -> None:
    w0, x = problem
    make = functools.partial(torch.optim.Adam, lr=0.01)
    w = nn.Parameter(w0.clone())
    opt = SAM([w], make, rho=0.2)
    for _ in range(2):
        opt.step(make_closure(opt, w, x))
    state = copy.deepcopy(opt.state_dict())  # as if saved to disk: no shared tensors
    assert state["param_groups"][0]["rho"] == 0.2
    w2 = nn.Parameter(w.detach().clone())
    opt2 = SAM([w2], make, rho=0.9)
    opt2.load_state_dict(state)
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    assert opt2.state is opt2.base_optimizer.state
    assert opt2.param_groups[0]["rho"] == 0.2
    for _ in range(2):
        opt.step(make_closure(opt, w, x))
        opt2.step(make_closure(opt2, w2, x))
    torch.testing.assert_close(w2.detach(), w.detach())


def test_add_param_group_reaches_base() -> None:
    opt = SAM([nn.Parameter(torch.ones(1))], functools.partial(torch.optim.SGD, lr=0.1), rho=0.3)
    extra = nn.Parameter(torch.ones(2))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    assert opt.base_optimizer.param_groups[-1]["rho"] == 0.3
    assert opt.param_groups[-1]["params"][0] is extra


def test_every_n_steps_alternates_sam_and_plain_steps(problem: tuple[Tensor, Tensor]) -> None:
    w0, x = problem
    w = nn.Parameter(w0.clone())
    opt = SAM(
        [w], functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), rho=0.3, every_n_steps=2
    )
    log: list[Any] = []
    for _ in range(4):
        opt.step(make_closure(opt, w, x, log))
    # steps 0 and 2 are SAM steps (two passes), steps 1 and 3 plain (one pass)
    assert [flag for _, flag in log] == [False, True, False, False, True, False]
    w_ref = nn.Parameter(w0.clone())
    sgd = torch.optim.SGD([w_ref], lr=0.1, momentum=0.9)
    for step in range(4):
        g = grad_at(w_ref, x)
        if step % 2 == 0:
            g = grad_at(w_ref.detach() + 0.3 * g / g.norm(), x)
        w_ref.grad = g
        sgd.step()
    torch.testing.assert_close(w.detach(), w_ref.detach())


def test_every_n_steps_count_survives_state_dict(problem: tuple[Tensor, Tensor]) -> None:
    w0, x = problem
    make = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    w = nn.Parameter(w0.clone())
    opt = SAM([w], make, rho=0.3, every_n_steps=2)
    opt.step(make_closure(opt, w, x))
    state = copy.deepcopy(opt.state_dict())
    assert state["sam_steps_taken"] == 1
    w2 = nn.Parameter(w.detach().clone())
    opt2 = SAM([w2], make, rho=0.3, every_n_steps=2)
    opt2.load_state_dict(state)
    log: list[Any] = []
    for _ in range(3):
        opt.step(make_closure(opt, w, x))
        opt2.step(make_closure(opt2, w2, x, log))
    assert [flag for _, flag in log] == [False, False, True, False]  # plain, SAM, plain
    torch.testing.assert_close(w2.detach(), w.detach())
