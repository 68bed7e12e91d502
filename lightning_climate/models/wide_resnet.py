"""Wide residual network for 32x32 images (Zagoruyko & Komodakis 2016), the SAM-ON paper's WRN-28-10."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["WideResNet"]


class _Block(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 plus a (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        o = self.norm1(x).relu()
        y = self.conv2(self.dropout(self.norm2(self.conv1(o)).relu()))
        # the projection sees the pre-activated input, as in the reference WRN
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``; WRN-28-10 has 36.5 M parameters for 100 classes.

    Args:
        depth: total depth, ``6 n + 4`` for ``n`` blocks per stage.
        widen_factor: width multiplier ``k`` of the stages 16k, 32k, 64k.
        num_classes: outputs of the linear head.
        in_channels: image channels.
        dropout: dropout between the two convolutions of a block.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}.")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be >= 1, got {widen_factor}.")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        for stage, stride in enumerate((1, 2, 2)):
            for i in range(n):
                c_in = widths[stage] if i == 0 else widths[stage + 1]
                blocks.append(_Block(c_in, widths[stage + 1], stride if i == 0 else 1, dropout))
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm2d(widths[3])
        self.head = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``."""
        h = self.norm(self.blocks(self.stem(x))).relu()
        return self.head(h.mean(dim=(2, 3)))
