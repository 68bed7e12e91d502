"""``python -m lightning_climate.datasets.integrity MANIFEST [--root DIR]``: verify downloaded files."""

import sys

from lightning_climate.datasets.integrity import main

sys.exit(main())
