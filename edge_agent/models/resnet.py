"""Width-reduced ResNet."""

from __future__ import annotations

import torch
from torch import nn

from edge_agent.models._common import InputShape, conv_bn_relu


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BatchNorm, identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn_relu(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """3x3 stem (16) and three basic blocks of width 16, 32, 48 (the last two stride 2)."""

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(input_shape[0], 16),
            BasicBlock(16, 16, 1),
            BasicBlock(16, 32, 2),
            BasicBlock(32, 48, 2),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc(torch.flatten(self.features(x), 1))
        return logits
