"""Two-process CPU tests that cannot abort at exit or collide on ports.

A gloo process group still alive when a worker process exits is destroyed during interpreter
shutdown, and its C++ worker threads can then abort the process with SIGABRT ("terminate called
without an active exception", pytorch/pytorch#190489). Lightning destroys the group at exit only
for NCCL, so every CPU ``ddp_spawn`` worker used to exit with a live gloo group, and CI failed now
and then on rank 1 of a test that passes alone. Here every worker destroys its group before it
returns: :func:`register_ddp_spawn` makes ``strategy="ddp_spawn"`` do so (``tests/conftest.py``
calls it); tests that start processes with ``mp.spawn`` call ``dist.destroy_process_group()``
themselves. Ports come from :func:`free_port` (the OS picks an unused one), never from a fixed
number or the pid (two tests of one session shared ``29500 + pid % 1000``), and the conftest
removes ``MASTER_PORT`` before each test, which Lightning otherwise leaves set for the next one.
"""

from __future__ import annotations

import socket
from typing import Any

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

__all__ = ["TeardownDDPSpawnStrategy", "free_port", "register_ddp_spawn"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no process listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _TeardownLauncher(_MultiProcessingLauncher):
    """Lightning's spawn launcher whose workers destroy their process group before returning."""

    def _wrapping_function(self, *args: Any, **kwargs: Any) -> None:
        try:
            super()._wrapping_function(*args, **kwargs)
        finally:
            _destroy_group()


class TeardownDDPSpawnStrategy(DDPStrategy):
    """``DDPStrategy(start_method="spawn")`` whose workers exit without a live process group."""

    def _configure_launcher(self) -> None:
        self._launcher = _TeardownLauncher(self, start_method=self._start_method)


def register_ddp_spawn() -> None:
    """Make ``strategy="ddp_spawn"`` mean :class:`TeardownDDPSpawnStrategy` in this process."""
    StrategyRegistry.register(
        "ddp_spawn",
        TeardownDDPSpawnStrategy,
        description="DDP with start_method 'spawn'; workers destroy their process group on exit",
        override=True,
        start_method="spawn",
    )
