"""Run the command line interface with ``python -m lightning_climate``."""

from lightning_climate.main import main

if __name__ == "__main__":
    main()
