"""PhAST atom embeddings: atomic number, OC20 tag, period, group and physical properties.

The physical properties come from a frozen table shipped with the package
(``element_table.csv``, built from ASE's data by ``scripts/build_element_table.py``) instead of
mendeleev at run time. They are normalised as in PhAST: z-score over Z = 1..``n_elements - 1``,
columns with at least half of the values missing are dropped, the remaining gaps are filled with
the column mean (0 after the z-score), and row 0 is a zero padding row. Lanthanides and actinides
have group 19, so there are 20 group and 8 period embeddings (index 0 is padding).
"""

from __future__ import annotations

import csv
import math
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["PhysEmbedding", "element_properties", "element_table"]

_TABLE = Path(__file__).with_name("element_table.csv")
_NUM_GROUPS = 20
_NUM_PERIODS = 8
_NUM_TAGS = 3


@cache
def element_table() -> tuple[list[str], Tensor]:
    """Column names and raw values (rows Z = 1..118; NaN where unknown) of the element table."""
    with open(_TABLE, newline="") as handle:
        rows = list(csv.reader(line for line in handle if not line.startswith("#")))
    header, body = rows[0], rows[1:]
    values = [[float(v) if v else math.nan for v in row[2:]] for row in body]
    return header[2:], torch.tensor(values, dtype=torch.float64)


def element_properties(n_elements: int = 85) -> tuple[list[str], Tensor, Tensor, Tensor]:
    """Normalised property matrix and period/group lookups for Z = 0..``n_elements - 1``.

    Returns:
        Property names kept, properties (n_elements, P) float32 with row 0 zero, period (n_elements,)
        and group (n_elements,) long with 0 for the padding row.
    """
    names, table = element_table()
    rows = table[: n_elements - 1]
    period, group = rows[:, 0].long(), rows[:, 1].long()
    props, kept = rows[:, 2:], names[2:]
    keep = props.isnan().sum(0) < props.shape[0] / 2
    props, kept = props[:, keep], [n for n, k in zip(kept, keep.tolist(), strict=True) if k]
    mean = torch.nanmean(props, 0)
    std = torch.sqrt(torch.nanmean((props - mean) ** 2, 0)).clamp_min(1e-12)
    props = torch.nan_to_num((props - mean) / std, nan=0.0)
    zero = torch.zeros(1, dtype=torch.long)
    return (
        kept,
        torch.cat([torch.zeros(1, props.shape[1], dtype=torch.float64), props]).float(),
        torch.cat([zero, period]),
        torch.cat([zero, group]),
    )


class PhysEmbedding(nn.Module):
    """Concatenation of learned Z/tag/period/group embeddings and fixed physical properties.

    Args:
        z_emb_size: width of the learned atomic-number embedding (0 disables it).
        tag_emb_size: width of the OC20 tag embedding (0 disables it).
        period_emb_size: width of the period embedding (0 disables it).
        group_emb_size: width of the group embedding (0 disables it).
        properties: append the normalised physical properties.
        properties_proj_size: project the properties with a linear layer of this width (0: raw).
        properties_grad: make the property table learnable.
        final_proj_size: final linear projection width (0: none).
        n_elements: table size; atomic numbers must be below it (85 covers OC20 and the
            PhAST super-node Z = 84).
    """

    def __init__(
        self,
        z_emb_size: int = 32,
        tag_emb_size: int = 32,
        period_emb_size: int = 32,
        group_emb_size: int = 32,
        properties: bool = True,
        properties_proj_size: int = 0,
        properties_grad: bool = False,
        final_proj_size: int = 0,
        n_elements: int = 85,
    ) -> None:
        super().__init__()
        if not 2 <= n_elements <= 119:
            raise ValueError(f"n_elements must be in 2..119, got {n_elements}.")
        if properties_proj_size > 0 and not properties:
            raise ValueError("properties_proj_size > 0 needs properties=True.")
        self.n_elements = n_elements
        names, table, period, group = element_properties(n_elements)
        self.property_names = names
        self.register_buffer("period_mapping", period, persistent=False)
        self.register_buffer("group_mapping", group, persistent=False)
        self.z_emb = nn.Embedding(n_elements, z_emb_size) if z_emb_size else None
        self.tag_emb = nn.Embedding(_NUM_TAGS, tag_emb_size) if tag_emb_size else None
        self.period_emb = nn.Embedding(_NUM_PERIODS, period_emb_size) if period_emb_size else None
        self.group_emb = nn.Embedding(_NUM_GROUPS, group_emb_size) if group_emb_size else None
        self.properties: Tensor | None
        if properties and properties_grad:
            self.properties = nn.Parameter(table)
        elif properties:
            self.register_buffer("properties", table, persistent=False)
        else:
            self.properties = None
        self.properties_proj = (
            nn.Linear(table.shape[1], properties_proj_size) if properties_proj_size else None
        )
        width = z_emb_size + tag_emb_size + period_emb_size + group_emb_size
        if properties:
            width += properties_proj_size or table.shape[1]
        if width == 0:
            raise ValueError("every part of PhysEmbedding is disabled; enable at least one.")
        self.final_proj = nn.Linear(width, final_proj_size) if final_proj_size else None
        self.out_channels = final_proj_size or width

    def forward(self, z: Tensor, tag: Tensor | None = None) -> Tensor:
        """Embed atomic numbers ``z`` (any shape, long) and tags; returns ``z.shape + (D,)``."""
        if bool((z < 0).any() | (z >= self.n_elements).any()):
            raise ValueError(
                f"atomic numbers {z[(z < 0) | (z >= self.n_elements)].unique().tolist()} are "
                f"outside the embedding table (0..{self.n_elements - 1}); raise n_elements."
            )
        parts = []
        if self.z_emb is not None:
            parts.append(self.z_emb(z))
        if self.properties is not None:
            props = self.properties[z]
            parts.append(self.properties_proj(props) if self.properties_proj is not None else props)
        if self.period_emb is not None:
            parts.append(self.period_emb(self.period_mapping[z]))
        if self.group_emb is not None:
            parts.append(self.group_emb(self.group_mapping[z]))
        if self.tag_emb is not None:
            if tag is None:
                raise ValueError("this PhysEmbedding has a tag embedding; pass the OC20 `tags`.")
            parts.append(self.tag_emb(tag))
        out = torch.cat(parts, dim=-1)
        return self.final_proj(out) if self.final_proj is not None else out
