"""Build ``lightning_climate/models/element_table.csv``, the frozen element properties of PhAST.

PhAST's ``PhysEmbedding`` reads mendeleev at run time, which no longer installs cleanly (see
``shared/research/catalysts.md`` §0). We ship a frozen table instead, built from the data tables
of ASE (``ase.data``; the version is written in the CSV header). Columns, for Z = 1..118:

- ``period``, ``group`` (1..18; lanthanides Ce..Lu and actinides Th..Lr get 19, as in PhAST);
- ``atomic_mass`` (u), ``covalent_radius`` (Å, Cordero 2008), ``vdw_radius`` (Å, ASE default),
  ``vdw_radius_alvarez`` (Å, Alvarez 2013), ``magnetic_moment`` (ground-state atom, μB),
  ``atomic_volume`` (Å³ per atom of the reference crystal: fcc, bcc, hcp, diamond, sc only) and
  ``density`` (g/cm³ from mass and atomic volume). Missing values are left empty.

Run: ``python scripts/build_element_table.py``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import ase
from ase.data import (
    atomic_masses,
    chemical_symbols,
    covalent_radii,
    ground_state_magnetic_moments,
    reference_states,
    vdw_radii,
)
from ase.data.vdw_alvarez import vdw_radii as vdw_alvarez

from lightning_climate.utils import atomic_path

OUT = Path(__file__).resolve().parents[1] / "lightning_climate" / "models" / "element_table.csv"
_PERIOD_ENDS = (2, 10, 18, 36, 54, 86, 118)
_AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660


def period_group(z: int) -> tuple[int, int]:
    """Period and group of element ``z`` (f-block elements get group 19, as in PhAST)."""
    period = next(p for p, end in enumerate(_PERIOD_ENDS, start=1) if z <= end)
    start = (0, *_PERIOD_ENDS)[period - 1]
    position = z - start
    if period == 1:
        return 1, 1 if z == 1 else 18
    if period in (2, 3):
        return period, position if position <= 2 else position + 10
    if period in (4, 5):
        return period, position
    # periods 6 and 7: position 3 is La/Ac (group 3), 4..17 the f-block (group 19)
    if position <= 3:
        return period, position
    if position <= 17:
        return period, 19
    return period, position - 14


def atomic_volume(z: int) -> float:
    """Volume per atom (Å³) of ASE's reference crystal of ``z``, NaN for other structures."""
    state = reference_states[z]
    if not state or "a" not in state:
        return math.nan
    a = state["a"]
    per_cell = {"fcc": a**3 / 4, "bcc": a**3 / 2, "diamond": a**3 / 8, "sc": a**3}
    if state["symmetry"] in per_cell:
        return per_cell[state["symmetry"]]
    if state["symmetry"] == "hcp":
        return math.sqrt(3) / 2 * a**2 * state["c/a"] * a / 2
    return math.nan


def _get(table: object, z: int) -> float:
    """``table[z]``, or NaN where ASE's table stops before element ``z``."""
    return float(table[z]) if z < len(table) else math.nan  # type: ignore[arg-type,index]


def main() -> None:
    """Write the table next to the model code."""
    columns = [
        "Z",
        "symbol",
        "period",
        "group",
        "atomic_mass",
        "covalent_radius",
        "vdw_radius",
        "vdw_radius_alvarez",
        "magnetic_moment",
        "atomic_volume",
        "density",
    ]
    with atomic_path(OUT) as tmp, open(tmp, "w", newline="") as handle:
        handle.write(f"# built by scripts/build_element_table.py from ase {ase.__version__} data\n")
        writer = csv.writer(handle)
        writer.writerow(columns)
        for z in range(1, 119):
            period, group = period_group(z)
            volume = atomic_volume(z)
            density = atomic_masses[z] / volume * _AMU_PER_A3_TO_G_PER_CM3
            row = [
                z,
                chemical_symbols[z],
                period,
                group,
                atomic_masses[z],
                covalent_radii[z],
                _get(vdw_radii, z),
                _get(vdw_alvarez, z),
                _get(ground_state_magnetic_moments, z),
                volume,
                density,
            ]
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
