"""Width-reduced ShuffleNetV2."""

from __future__ import annotations

import torch
from torch import nn

from edge_agent.models._common import InputShape, conv_bn_relu


def _pw(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _dw(c: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c)]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups."""
    return torch.unflatten(x, 1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit. Stride 1: channel split, one branch transformed, concat, shuffle.
    Stride 2: both branches downsample and the channels double (``c_out`` = 2 * ``c_in``
    or any even width).
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = c_out // 2
        branch_in = c_in if stride == 2 else half
        self.branch = nn.Sequential(*_pw(branch_in, half), *_dw(half, stride), *_pw(half, half))
        self.down: nn.Module = nn.Identity()
        if stride == 2:
            self.down = nn.Sequential(*_dw(c_in, 2), *_pw(c_in, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, x = x.chunk(2, dim=1)
        else:
            kept = self.down(x)
        return channel_shuffle(torch.cat((kept, self.branch(x)), dim=1), 2)


class ShuffleNetSmall(nn.Module):
    """3x3 stem (24), stages of 2 units at widths 48 and 96 (each opening with stride 2),
    1x1 conv to 192, global average pool, FC.
    """

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(input_shape[0], 24),
            ShuffleUnit(24, 48, 2),
            ShuffleUnit(48, 48, 1),
            ShuffleUnit(48, 96, 2),
            ShuffleUnit(96, 96, 1),
            *_pw(96, 192),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(192, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(torch.flatten(self.features(x), 1))
        return logits
