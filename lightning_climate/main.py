"""Command line interface: ``lightning-climate fit --config examples/<name>.yaml``.

Wraps :class:`~lightning.pytorch.cli.LightningCLI` with every task and datamodule of the package
registered, so configs can name them by their short class name (``class_path: DownscalingTask``).
A top-level ``optimizer:`` / ``lr_scheduler:`` section replaces the module's ``configure_optimizers``
(LightningCLI's automatic optimizer configuration, for modules without an ``optimizer`` argument).
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType

# Imported for their side effect: the classes become visible to jsonargparse by short name.
import lightning_climate.callbacks
import lightning_climate.datamodules
import lightning_climate.tasks  # noqa: F401
from lightning_climate import __version__
from lightning_climate.cli import ClimateCLI

__all__ = ["main"]


def main(args: ArgsType = None) -> None:
    """Parse ``args`` (or ``sys.argv``) and run the requested subcommand."""
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
