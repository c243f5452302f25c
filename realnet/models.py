"""Models: torchvision ResNet-34 (the paper's model) / ResNet-18 with an optional small-image stem, and
the CIFAR ResNet-20 of He et al. (2015, sec. 4.2). BatchNorm everywhere, as in the paper.

``create_model(name, num_classes, small_stem=..., width=...)``; parameters are initialised from the
global torch RNG (seed it first: :func:`realnet.trainer.train` does).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["create_model", "ResNet20", "count_parameters", "MODEL_NAMES"]

MODEL_NAMES = ("resnet34", "resnet18", "resnet20")


class _BasicBlockA(nn.Module):
    """3x3-3x3 residual block with the parameter-free option-A shortcut (stride-2 subsampling + zero
    channel padding), as used by He et al. for the CIFAR ResNets."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride = stride
        self.pad = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x
        if self.stride != 1:
            sc = sc[:, :, :: self.stride, :: self.stride]
        if self.pad:
            sc = F.pad(sc, (0, 0, 0, 0, 0, self.pad))
        return F.relu(out + sc)


class ResNet20(nn.Module):
    """ResNet-20 for small images (He et al. 2015, sec. 4.2): 3x3 conv, 3 stages of 3 basic blocks with
    ``width``, ``2*width``, ``4*width`` channels (16/32/64 in the paper; ~0.27M parameters), global
    average pooling, linear classifier."""

    def __init__(self, num_classes: int = 10, width: int = 16, blocks_per_stage: int = 3, in_channels: int = 3):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1; got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks_per_stage):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(_BasicBlockA(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def create_model(name: str, num_classes: int, *, small_stem: bool = False, width: int = 16) -> nn.Module:
    """Build ``resnet34`` / ``resnet18`` (torchvision, ``weights=None``) or ``resnet20``.

    small_stem: for torchvision ResNets, replace the 7x7/2 conv + max-pool stem by a 3x3/1 conv and no
    max-pool (for 8x8..64x64 inputs). ResNet-20 always has the small stem. width: ResNet-20 base width.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
    if name == "resnet20":
        return ResNet20(num_classes=num_classes, width=width)
    if name in ("resnet34", "resnet18"):
        import torchvision
        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if small_stem:
            model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
            model.maxpool = nn.Identity()
        return model
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
