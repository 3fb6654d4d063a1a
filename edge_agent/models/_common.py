"""Helpers shared by the model zoo."""

from __future__ import annotations

import torch
from torch import nn

InputShape = tuple[int, int, int]


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    """3x3 convolution (padding 1, no bias), BatchNorm, ReLU."""
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def flat_features(features: nn.Module, input_shape: InputShape) -> int:
    """Number of features ``features`` outputs per sample, by a dry run in eval mode.

    Eval mode keeps BatchNorm running statistics untouched.
    """
    was_training = features.training
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, *input_shape))
    features.train(was_training)
    return int(out[0].numel())
