"""Small user-defined CNNs with the architecture features the engine must handle: functional and
in-place activations, residuals, concatenation, views, LayerNorm, sorting, Conv1d/Conv3d, grouped and
depthwise convolutions."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class MixedNet(nn.Module):
    """F.relu, nn.ReLU (in place or not), ``+=`` residual, torch.cat, a squeeze-excitation gate
    (``mul_`` in place), a reused max pool, a view, dropout, unfolded and folded batch norms.
    Input (B, 3, 16, 16)."""

    def __init__(self, inplace: bool = True, classes: int = 10) -> None:
        super().__init__()
        self.inplace = inplace
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv_a = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(16)
        self.conv_b = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.branch1 = nn.Conv2d(16, 8, 1)
        self.branch3 = nn.Conv2d(16, 8, 3, padding=1)
        self.pre_bn = nn.BatchNorm2d(16)  # batch norm before a conv: not foldable
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(16 * 4 * 4, classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        identity = x
        out = self.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        if self.inplace:
            out += identity
        else:
            out = out + identity
        out = self.relu(out)
        out = self.pool(out)
        out = torch.cat([self.branch1(out), self.branch3(out)], dim=1)
        out = F.relu(out, inplace=self.inplace)
        out = self.pre_bn(out)
        out = out.relu_() if self.inplace else out.relu()
        gate = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(F.adaptive_avg_pool2d(out, 1)))))
        out = out.mul_(gate) if self.inplace else out * gate
        out = self.pool(out)
        out = out.view(out.size(0), -1)
        out = self.dropout(out)
        return self.fc(out)


def mixed_net(inplace: bool = True, seed: int = 0) -> MixedNet:
    torch.manual_seed(seed)
    return MixedNet(inplace).eval()


class GroupNormNet(nn.Module):
    """A group norm, for which relprop has no rule."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(OrderedDict(conv=nn.Conv2d(4, 4, 1), norm=nn.GroupNorm(2, 4)))
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.block(self.features(x)), 1))


class SortHead(nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=1).values


class SortNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)
        self.ranker = SortHead()

    def forward(self, x):
        return self.ranker(self.fc(torch.flatten(self.pool(self.conv(x)), 1)))


def conv1d_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(8, 16, 3, padding=1, groups=2), nn.BatchNorm1d(16), nn.ReLU(inplace=True), nn.AvgPool1d(2),
        nn.Conv1d(16, 16, 3, padding=1, groups=16), nn.ReLU6(), nn.AdaptiveAvgPool1d(4),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 5),
    ).eval()


def conv3d_net() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(4, 8, 3, padding=1, groups=2), nn.BatchNorm3d(8), nn.SiLU(), nn.Dropout3d(0.1),
        nn.AvgPool3d(2), nn.Conv3d(8, 8, 1), nn.Hardswish(), nn.AdaptiveMaxPool3d(1), nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


class MobileNet(nn.Module):
    """Grouped and depthwise convolutions with ReLU6, SiLU and Hardswish (in-place ones too)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.SiLU(inplace=True),
            nn.Conv2d(16, 32, 1, groups=4, bias=False), nn.BatchNorm2d(32), nn.Hardswish(inplace=True),
            nn.Conv2d(32, 32, 5, stride=2, padding=2, groups=32), nn.BatchNorm2d(32), nn.ReLU6(),
        )
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(32, 6)

    def forward(self, x):
        x = self.features(x)
        x = x.mean((2, 3))
        return self.classifier(F.dropout(x, 0.2, self.training))
