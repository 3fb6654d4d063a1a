"""Model zoo for heterogeneous fleets (after KT-pFL's mix): logits from float32 (N, C, H, W)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from edge_agent.models._common import InputShape
from edge_agent.models.alexnet import AlexNetSmall
from edge_agent.models.lenet5 import LeNet5
from edge_agent.models.mobilenetv2 import MobileNetV2Small
from edge_agent.models.resnet import ResNetSmall
from edge_agent.models.shufflenet import ShuffleNetSmall

MIN_SIZE = 16

MODELS: dict[str, Callable[[InputShape, int], nn.Module]] = {
    "lenet5": LeNet5,
    "alexnet_small": AlexNetSmall,
    "resnet_small": ResNetSmall,
    "shufflenet_small": ShuffleNetSmall,
    "mobilenetv2_small": MobileNetV2Small,
}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build zoo model ``name`` for inputs (C, H, W) with H, W >= 16 and ``num_classes`` >= 2."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or shape[0] < 1 or min(shape[1:]) < MIN_SIZE:
        raise ValueError(f"input_shape must be (C, H, W) with H, W >= {MIN_SIZE}, got {shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return MODELS[name]((shape[0], shape[1], shape[2]), num_classes)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "build_model", "parameter_count"]
