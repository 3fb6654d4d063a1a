"""LeNet-5."""

from __future__ import annotations

import torch
from torch import nn

from edge_agent.models._common import InputShape, flat_features


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling, no BatchNorm.

    conv 6@5x5 (padding 2), pool, conv 16@5x5, pool, FC 120, FC 84, FC classes.
    """

    def __init__(self, input_shape: InputShape, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(flat_features(self.features, input_shape), 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(self.features(x), 1))
        return logits
