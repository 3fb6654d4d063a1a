"""Small AlexNet-style CNN."""

from __future__ import annotations

import torch
from torch import nn

from edge_agent.models._common import InputShape, conv_bn_relu, flat_features


class AlexNetSmall(nn.Module):
    """AlexNet layout (5 convolutions, 3 max pools, 2 fully connected layers) at small width.

    Every convolution is followed by BatchNorm, and the classifier has only light dropout
    (p = 0.1): a dropout-heavy AlexNet without BatchNorm collapsed under distillation in our
    calibration runs (ALGORITHMS.md, "Measured").
    """

    def __init__(self, input_shape: InputShape, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(input_shape[0], 16),
            nn.MaxPool2d(2),
            *conv_bn_relu(16, 32),
            nn.MaxPool2d(2),
            *conv_bn_relu(32, 48),
            *conv_bn_relu(48, 48),
            *conv_bn_relu(48, 32),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(flat_features(self.features, input_shape), 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(torch.flatten(self.features(x), 1))
        return logits
