"""A model of a user's own, outside the project's package, for the tests that name it
by import path (``model.name: tests.own_models:WideAndDeep``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class WideAndDeep(nn.Module):
    """A linear ("wide") part beside a small MLP ("deep") over a table's features, the
    category codes read as numbers: a module the project does not ship, which takes the
    shapes the table gives and one argument of its own."""

    def __init__(self, numeric_features: int, cardinalities: Sequence[int], num_outputs: int,
                 hidden: int = 16):
        super().__init__()
        width = numeric_features + len(cardinalities)
        self.wide = nn.Linear(width, num_outputs)
        self.deep = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wide(x) + self.deep(x)


class TinyConvNet(nn.Module):
    """An image classifier of a user's own: it names the two shapes images give and
    takes one argument of its own."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
