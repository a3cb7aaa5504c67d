"""The architectures and their transfer units, numbered bottom-up (docs/design.md §1).

A unit is what transfers, freezes and shares a learning rate as one: one module or
several. Each architecture declares its units as data (`ARCHS`: attribute paths per unit,
named by hpcxfer/grid/protocols.py `UNITS`), and `unit_keys` checks that they cover every
parameter and buffer of the model exactly once. A ResNet's units are its stem (conv1,
bn1), its four stages and its head (fc).

Layer k (1..8) is features[0, 3, 6, 8, 10] for conv1..conv5 and classifier[1, 4, 6] for
fc6..fc8 in torchvision's AlexNet. The narrow variant keeps those indices, so the layer
map and every protocol apply to both unchanged.

Another architecture joins by numbering its weights the same way: eight layers, five
convolutional stages and three fully connected layers, where a "layer" may be several
modules that transfer, freeze and share a learning rate together. VGG-11 (cfg A: 1, 1, 2,
2, 2 convolutions in five stages, then fc6..fc8) maps its stages to layers 1..5, so the
named protocols (common n = 7, h = 8), Table 2 and every range of the grid keep their
meaning. Numbering its 11 weight layers one by one would give `common` and Table 2 no
counterpart.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hpcxfer.grid.protocols import ALEXNET_UNITS, UNITS

LAYER_NAMES = ALEXNET_UNITS
NUM_LAYERS = len(LAYER_NAMES)


class NarrowAlexNet(nn.Module):
    """AlexNet's eight weight layers at a width a CPU trains in minutes, for 28-32 px images.

    Same module indices as torchvision's AlexNet: five 3x3 convolutions (the first two
    and the last followed by max-pooling), then dropout / fc6 / fc7 / fc8.
    """

    def __init__(self, num_classes: int, in_channels: int = 1,
                 widths: tuple[int, ...] = (16, 32, 48, 32, 32), hidden: int = 128, dropout: float = 0.5):
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 0-2
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 3-5
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),  # 6-7
            nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(inplace=True),  # 8-9
            nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # 10-12
        )
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c5 * 9, hidden), nn.ReLU(inplace=True),  # 0-2
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),  # 3-5
            nn.Linear(hidden, num_classes),  # 6
        )
        # He initialisation keeps the signal alive through eight narrow layers; with
        # PyTorch's default init a from-scratch model sat at chance for hundreds of steps
        # on 50 images (measured: 0.20 vs 0.69 validation accuracy after 280 updates).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier[6].weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _torchvision(name: str) -> Callable[[int, int], nn.Module]:
    """A builder of torchvision's `name` (untrained), with conv1 taking `in_channels`."""

    def build(num_classes: int, in_channels: int) -> nn.Module:
        import torchvision.models

        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            old = model.features[0]
            model.features[0] = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
        return model

    return build


class NarrowResNet(nn.Module):
    """A ResNet for 28-32 px images that trains on a CPU in minutes: torchvision's basic
    block, one per stage at widths 16/32/64/64, a 3x3 stem without max-pooling, and
    torchvision's attribute names (conv1, bn1, layer1..layer4, fc), so that its units are
    resnet18's."""

    def __init__(self, num_classes: int, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, width = [], widths[0]
        for i, out in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or width != out:
                down = nn.Sequential(nn.Conv2d(width, out, 1, stride, bias=False), nn.BatchNorm2d(out))
            stages.append(nn.Sequential(BasicBlock(width, out, stride, down)))
            width = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _torchvision_resnet(name: str) -> Callable[[int, int], nn.Module]:
    """A builder of torchvision's ResNet `name` (untrained), conv1 taking `in_channels`."""

    def build(num_classes: int, in_channels: int) -> nn.Module:
        import torchvision.models

        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return model

    return build


#: A unit: one module's attribute path, or several that act as one.
Layer = str | tuple[str, ...]
RESNET_MAP: tuple[Layer, ...] = (("conv1", "bn1"), "layer1", "layer2", "layer3", "layer4", "fc")

#: arch name -> (builder(num_classes, in_channels), attribute paths of its units, bottom-up)
ARCHS: dict[str, tuple[Callable[[int, int], nn.Module], tuple[Layer, ...]]] = {
    "alexnet-narrow": (lambda k, c: NarrowAlexNet(k, c), (
        "features.0", "features.3", "features.6", "features.8", "features.10",
        "classifier.1", "classifier.4", "classifier.6")),
    "alexnet": (_torchvision("alexnet"), (
        "features.0", "features.3", "features.6", "features.8", "features.10",
        "classifier.1", "classifier.4", "classifier.6")),
    "vgg11": (_torchvision("vgg11"), (
        "features.0", "features.3", ("features.6", "features.8"), ("features.11", "features.13"),
        ("features.16", "features.18"), "classifier.0", "classifier.3", "classifier.6")),
    "resnet-narrow": (lambda k, c: NarrowResNet(k, c), RESNET_MAP),
    "resnet18": (_torchvision_resnet("resnet18"), RESNET_MAP),
    "resnet50": (_torchvision_resnet("resnet50"), RESNET_MAP),
}


def build_model(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    return ARCHS[arch][0](num_classes, in_channels)


def _names(layer: Layer) -> tuple[str, ...]:
    return (layer,) if isinstance(layer, str) else layer


def num_units(arch: str) -> int:
    return len(ARCHS[arch][1])


def weight_layers(model: nn.Module, arch: str) -> list[nn.Module]:
    """Units 1..U (index 0 is unit 1) of a model built by `build_model`; a unit of
    several modules is an nn.ModuleList of them."""
    out = []
    for layer in ARCHS[arch][1]:
        mods = [model.get_submodule(n) for n in _names(layer)]
        out.append(mods[0] if len(mods) == 1 else nn.ModuleList(mods))
    return out


def unit_keys(model: nn.Module, arch: str) -> list[list[str]]:
    """The state_dict keys of each unit; ValueError unless the units cover every key of the
    model (parameters and buffers) exactly once."""
    prefixes = layer_prefixes(arch)
    keys = list(model.state_dict())
    out: list[list[str]] = [[] for _ in prefixes]
    for k in keys:
        owners = [i for i, p in enumerate(prefixes) if k.startswith(p)]
        if len(owners) != 1:
            raise ValueError(f"{arch}: {k} is in {len(owners)} transfer units, not one")
        out[owners[0]].append(k)
    for i, unit in enumerate(out):
        if not unit:
            raise ValueError(f"{arch}: unit {UNITS[arch][i]} holds nothing")
    return out


def layer_prefixes(arch: str) -> tuple[str | tuple[str, ...], ...]:
    """state_dict key prefixes of units 1..U: a string, or a tuple of strings for a layer
    of several modules (either works as the argument of str.startswith)."""
    return tuple(names[0] if len(names) == 1 else names
                 for names in (tuple(n + "." for n in _names(layer)) for layer in ARCHS[arch][1]))
