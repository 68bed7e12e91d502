#!/usr/bin/env python3
"""Write the ERA5 test data of this folder (seeded, idempotent: existing files are kept).

- ``era5_sample.nc``: a subset of the real ERA5 file ``era5-levels-members.nc`` (cfgrib sample
  data, see README.md for the attribution): ensemble members 0-4, all 4 times, both levels,
  packed to int16 with scale_factor/add_offset as in legacy CDS files.
- ``generated_cds/era5_{2000,2001}.nc`` and ``generated_cfgrib/era5_2000.nc``: synthetic files
  in the two ERA5 NetCDF layouts, written by ``lightning_climate.datasets.era5_generate.generate_era5``.

Usage: ``python tests/data/era5/data.py [path/to/era5-levels-members.nc]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr

from lightning_climate.datasets.era5_generate import generate_era5
from lightning_climate.utils import atomic_path

HERE = Path(__file__).parent
# ../shared/era5_sample beside the repository (see README.md for its origin)
SOURCE = HERE.parents[3] / "shared" / "era5_sample" / "era5-levels-members.nc"


def _packing(values: np.ndarray) -> dict[str, float]:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    # 65532 steps: the extremes map to +-32766, clear of the fill value -32767
    scale = (hi - lo) / (2**16 - 4)
    return {"scale_factor": scale, "add_offset": (hi + lo) / 2}


def write_sample(source: Path) -> None:
    out = HERE / "era5_sample.nc"
    if out.exists():
        return
    ds = xr.open_dataset(source).isel(number=slice(0, 5)).load()
    encoding = {}
    for name in ("t", "z"):
        encoding[name] = {"dtype": "int16", "_FillValue": -32767, "zlib": True, "complevel": 9,
                          **_packing(ds[name].values)}
    ds.attrs["history"] = (
        ds.attrs.get("history", "") + "\nsubset (number 0-4) and int16 packing by tests/data/era5/data.py"
    )
    ds.attrs["copyright"] = "Contains modified Copernicus Climate Change Service information"
    with atomic_path(out) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)


def main() -> None:
    write_sample(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
    generate_era5(HERE / "generated_cds", years=(2000, 2001), hours=24 * 30, grid=(17, 32), naming="cds")
    generate_era5(HERE / "generated_cfgrib", years=(2000,), hours=24 * 30, grid=(17, 32), naming="cfgrib")


if __name__ == "__main__":
    main()
