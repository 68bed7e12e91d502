"""Command line interface: ``lightning-climate fit --config examples/<name>.yaml``.

Wraps :class:`~lightning.pytorch.cli.LightningCLI` with every task and datamodule of the package
registered, so configs can name them by their short class name (``class_path: DownscalingTask``).
``auto_configure_optimizers=False`` keeps each task's own ``configure_optimizers`` (and with it
optimizer wrappers such as SAM) from being replaced by a top-level ``optimizer:`` section.
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningCLI

# Imported for their side effect: the classes become visible to jsonargparse by short name.
import lightning_climate.callbacks
import lightning_climate.datamodules
import lightning_climate.tasks  # noqa: F401
from lightning_climate import __version__

__all__ = ["main"]


def main(args: ArgsType = None) -> None:
    """Parse ``args`` (or ``sys.argv``) and run the requested subcommand."""
    LightningCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        auto_configure_optimizers=False,
        parser_kwargs={"version": __version__},
        save_config_kwargs={"overwrite": True},
        args=args,
    )
