"""Command line interface: ``lightning-climate fit --config examples/<name>.yaml``.

Runs :class:`~lightning_climate.cli.ClimateCLI` (LightningCLI with every task and datamodule of the
package registered, so configs can name them by their short class name: ``class_path:
DownscalingTask``). A top-level ``optimizer:`` / ``lr_scheduler:`` section replaces the module's
``configure_optimizers`` (LightningCLI's automatic optimizer configuration, for modules without an
``optimizer`` argument; a SAM optimizer there is bound to the module).

What the command does besides LightningCLI's work:
- ``lightning-climate --help`` and ``--version`` answer without importing torch (about 0.1 s
  instead of the 10+ s it takes to import Lightning and the package).
- Unless ``OMP_NUM_THREADS`` is set, torch uses as many threads as there are cores available to the
  process (CPU affinity and cgroup quota), not the machine's core count.
- Lightning's advertising tips, its ``log_every_n_steps`` warning for small datasets and two
  deprecation warnings raised inside third-party imports are not shown. The filters only apply
  while :func:`main` runs; nothing changes in the caller's process afterwards.
- After ``fit`` it prints why training stopped (e.g. ``max_time`` reached after 7 of 30 epochs)
  and a table of the last logged metrics.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from lightning_climate import __version__

__all__ = ["main"]

_HELP = f"""\
usage: lightning-climate [-h] [--version] [-c CONFIG] [--print_config[=flags]]
                         {{fit,validate,test,predict}} ...

lightning-climate {__version__}: LightningCLI with the package's tasks, datamodules and callbacks.

options:
  -h, --help            Show this help message and exit.
  --version             Print version and exit.
  -c CONFIG, --config CONFIG
                        Path to a configuration file in json or yaml format.
  --print_config [=flags]
                        Print the configuration after applying all other
                        arguments and exit (flags: comments, skip_default,
                        skip_unset).

subcommands:
  For the options of a subcommand, add it followed by --help
  (e.g. `lightning-climate fit --help`).

    fit                 Runs the full optimization routine.
    validate            Perform one evaluation epoch over the validation set.
    test                Perform one evaluation epoch over the test set.
    predict             Run inference on your data.

example:
  lightning-climate fit --config examples/navier_stokes_dfno.yaml
"""

#: warnings hidden while the CLI runs: (message regex, why it is noise for a CLI user)
_QUIET_WARNINGS = (
    # Lightning, for datasets with fewer batches than log_every_n_steps; epoch metrics are logged.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # Raised while torch_geometric is imported; nothing a user of the CLI can change.
    r"`torch\.jit\.script` is deprecated",
    # Raised inside Lightning with recent torch versions.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


class _DropTips(logging.Filter):
    """Drop Lightning's "💡 Tip: try installing ..." advertisements."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


@contextmanager
def _cli_environment() -> Iterator[None]:
    """Noise filters and thread count for the duration of one CLI call, restored afterwards."""
    tips = _DropTips()
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with warnings.catch_warnings():
        for message in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        import torch

        from lightning_climate.cli import available_cores

        threads = torch.get_num_threads()
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(available_cores())
        rank_zero_logger.addFilter(tips)
        try:
            yield
        finally:
            rank_zero_logger.removeFilter(tips)
            torch.set_num_threads(threads)


def main(args: Sequence[str] | dict[str, Any] | None = None) -> None:
    """Parse ``args`` (or ``sys.argv``) and run the requested subcommand."""
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, Sequence) and list(argv) in (["-h"], ["--help"]):
        print(_HELP, end="")
        return
    if isinstance(argv, Sequence) and list(argv) == ["--version"]:
        print(__version__)
        return
    with _cli_environment():
        from lightning.pytorch import LightningDataModule, LightningModule

        from lightning_climate.cli import ClimateCLI

        ClimateCLI(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            parser_kwargs={"version": __version__},
            save_config_kwargs={"overwrite": True},
            args=args,
        )
