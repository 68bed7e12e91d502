from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from lightning_climate.datamodules import DigitsDataModule, ResumableDataLoader, ResumableSampler

DATA = TensorDataset(torch.arange(20))


class RandomDataset(Dataset[Tensor]):
    """Each item is its index and one number drawn from the global torch generator."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> Tensor:
        return torch.tensor([float(index), torch.rand(1).item()])


def test_order_is_distributed_samplers_and_leaves_the_global_generator_alone() -> None:
    state = torch.get_rng_state()
    for epoch in (0, 3):
        shards = []
        for rank in (0, 1):
            ours = ResumableSampler(DATA, num_replicas=2, rank=rank, seed=7)
            theirs = DistributedSampler(DATA, num_replicas=2, rank=rank, seed=7)
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            shards.append(list(ours))
            assert shards[-1] == list(theirs)
        assert sorted(shards[0] + shards[1]) == list(range(20))
    assert torch.equal(torch.get_rng_state(), state)


def test_start_skips_once_and_a_new_epoch_starts_from_the_beginning() -> None:
    sampler = ResumableSampler(DATA, seed=1)
    full = list(sampler)
    sampler.load_state_dict({"seed": 1, "epoch": 0, "start": 5})
    assert list(sampler) == full[5:]
    assert list(sampler) == full
    sampler.load_state_dict({"seed": 1, "epoch": 0, "start": 5})
    sampler.set_epoch(1)
    assert len(list(sampler)) == 20 and list(sampler) != full


def test_loader_state_resumes_the_rest_of_the_epoch() -> None:
    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(DATA, batch_size=3, sampler=ResumableSampler(DATA, seed=2))

    first = loader()
    first.sampler.set_epoch(4)
    batches = iter(first)
    seen = [next(batches)[0] for _ in range(2)]
    state = first.state_dict()
    assert state == {"seed": 2, "epoch": 4, "start": 6}
    rest = [b[0] for b in batches]
    second = loader()
    second.load_state_dict(state)
    resumed = [b[0] for b in second]
    assert len(seen) + len(resumed) == len(first) == 7
    assert all(torch.equal(a, b) for a, b in zip(rest, resumed, strict=True))
    # before the next epoch's first batch, the state points at that epoch's beginning
    first.sampler.set_epoch(5)
    assert first.state_dict() == {"seed": 2, "epoch": 5, "start": 0}


def test_worker_draws_depend_on_seed_epoch_and_rank_only() -> None:
    def run(epoch: int) -> Tensor:
        data = RandomDataset()
        sampler = ResumableSampler(data, seed=0)
        sampler.set_epoch(epoch)
        return torch.cat(
            list(ResumableDataLoader(data, batch_size=4, sampler=sampler, num_workers=2))
        )

    torch.manual_seed(0)
    first = run(1)
    torch.manual_seed(1)  # another global state: the workers must not depend on it
    assert torch.equal(run(1), first)
    assert not torch.equal(run(2)[:, 1], first[:, 1])


def test_loader_refuses_shuffle_and_is_plain_with_another_sampler() -> None:
    with pytest.raises(TypeError, match="Pass the sampler instead of shuffle=True"):
        ResumableDataLoader(DATA, batch_size=2, shuffle=True)
    plain = ResumableDataLoader(DATA, batch_size=5)  # what Lightning makes for overfit_batches
    assert next(b[0].tolist() for b in plain) == [0, 1, 2, 3, 4]
    assert plain.state_dict() == {}


def test_sampler_built_for_other_ranks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = ResumableSampler(DATA)  # built before the processes started: 1 process
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    with pytest.raises(RuntimeError, match=r"built for rank 0 of 1 .* runs on rank 1 of 2"):
        list(sampler)


def test_package_datamodules_train_with_the_resumable_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    dm = DigitsDataModule(batch_size=16)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    assert loader.sampler.seed == 11 and loader.sampler.shuffle
    assert type(dm.val_dataloader()) is DataLoader
