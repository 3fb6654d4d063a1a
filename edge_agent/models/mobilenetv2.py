"""Width-reduced MobileNetV2."""

from __future__ import annotations

import torch
from torch import nn

from edge_agent.models._common import InputShape

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
# Downsampling early (28 -> 14 -> 7) makes CPU inference ~6x faster than strides 1, 2, 2.
_CONFIG = ((1, 16, 1, 2), (4, 24, 2, 2), (4, 32, 2, 1), (4, 64, 1, 1))


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; residual when shapes agree."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = [_conv(c_in, hidden, 1)] if expansion != 1 else []
        layers += [
            _conv(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return x + out if self.residual else out


class MobileNetV2Small(nn.Module):
    """3x3 stem (16), inverted residual stages 16-24-32-64 (strides 2, 2, 1, 1), 1x1 conv to
    128, global average pool, FC.
    """

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv(input_shape[0], 16, 3)]
        c_in = 16
        for t, c, n, s in _CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers += [_conv(c_in, 128, 1), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(torch.flatten(self.features(x), 1))
        return logits
