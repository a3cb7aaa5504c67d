"""Named fine-tuning protocols, the paper's numbers and each architecture's transfer units
(docs/design.md §1).

The protocol fields count an architecture's transfer units bottom-up: AlexNet's eight
weight layers (VGG-11's five stages and three fully connected layers map onto them), a
ResNet's stem, four stages and head. hpcxfer/worker/models.py says which modules make
each unit; this table is what the grid validates against, without importing torch.
"""

from __future__ import annotations

SIZES = (10, 25, 50, 100, 250, 500, "full")

#: Plested & Gedeon (2019) Table 2: per target size, the best n (transfer_layers),
#: d (initial_decay_epochs), f (frozen_layers) and the ImageNet validation accuracy (%).
TABLE2 = {
    10: {"transfer_layers": 6, "initial_decay_epochs": 10, "frozen_layers": 6, "val_acc": 30.8},
    25: {"transfer_layers": 6, "initial_decay_epochs": 5, "frozen_layers": 5, "val_acc": 38.1},
    50: {"transfer_layers": 6, "initial_decay_epochs": 3, "frozen_layers": 5, "val_acc": 42.7},
    100: {"transfer_layers": 6, "initial_decay_epochs": 3, "frozen_layers": 1, "val_acc": 46.6},
    250: {"transfer_layers": 6, "initial_decay_epochs": 3, "frozen_layers": 1, "val_acc": 52.2},
    500: {"transfer_layers": 6, "initial_decay_epochs": 0, "frozen_layers": 0, "val_acc": 56.3},
    "full": {"transfer_layers": 5, "initial_decay_epochs": 30, "frozen_layers": 0, "val_acc": 62.1},
}

#: The paper's section 3.2 finding: one high-lr layer (fc8); Table 2 does not list h.
OPTIMAL_HIGH_LR_LAYERS = 1

PROTOCOL_FIELDS = ("transfer_layers", "high_lr_layers", "initial_decay_epochs", "frozen_layers")

ALEXNET_UNITS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
RESNET_UNITS = ("stem", "layer1", "layer2", "layer3", "layer4", "head")
#: arch -> its transfer units, bottom-up; the last is the head, re-initialised for the target.
UNITS: dict[str, tuple[str, ...]] = {
    "alexnet-narrow": ALEXNET_UNITS, "alexnet": ALEXNET_UNITS, "vgg11": ALEXNET_UNITS,
    "resnet-narrow": RESNET_UNITS, "resnet18": RESNET_UNITS, "resnet50": RESNET_UNITS,
}
#: Architectures with AlexNet's eight units, the only ones Table 2 (`optimal`) describes.
TABLE2_ARCHS = ("alexnet-narrow", "alexnet", "vgg11")

COMMON = {"transfer_layers": 7, "high_lr_layers": 8, "initial_decay_epochs": 30, "frozen_layers": 0}
SCRATCH = {"transfer_layers": 0, "high_lr_layers": 8, "initial_decay_epochs": 30, "frozen_layers": 0}
NAMED = ("common", "scratch", "optimal")


def num_units(arch: str) -> int:
    return len(UNITS[arch])


def ranges(arch: str) -> dict[str, tuple[int, int]]:
    """Inclusive bounds of n, h and f for `arch`: the head is never transferred (n <= U-1)
    and at least one unit above the frozen ones trains (f <= U-2); AlexNet's are the
    paper's 0..7, 1..8 and 0..6."""
    u = num_units(arch)
    return {"transfer_layers": (0, u - 1), "high_lr_layers": (1, u), "frozen_layers": (0, u - 2)}


def common(arch: str = "alexnet") -> dict:
    """Every unit but the head transferred, all at the high rate (Yosinski's protocol)."""
    u = num_units(arch)
    return {"transfer_layers": u - 1, "high_lr_layers": u, "initial_decay_epochs": 30, "frozen_layers": 0}


def scratch(arch: str = "alexnet") -> dict:
    return {"transfer_layers": 0, "high_lr_layers": num_units(arch), "initial_decay_epochs": 30, "frozen_layers": 0}


def table2_row(examples_per_class: int | str) -> dict:
    """Table 2's row for a size; a size between the paper's uses the next smaller one.

    Sizes below 10 use the 10 row, sizes above 500 that are not `full` use the 500 row.
    """
    if examples_per_class == "full":
        return TABLE2["full"]
    smaller = [s for s in SIZES[:-1] if s <= examples_per_class]  # type: ignore[operator]
    return TABLE2[smaller[-1] if smaller else 10]


def optimal(examples_per_class: int | str, arch: str = "alexnet") -> dict:
    """Table 2's protocol at a size; ValueError for an architecture it does not describe."""
    if arch not in TABLE2_ARCHS:
        raise ValueError(f"'optimal' is the paper's Table 2, measured on AlexNet's eight layers; {arch} has "
                         f"{num_units(arch)} transfer units and no such table: give n, h, d and f instead")
    row = table2_row(examples_per_class)
    return {
        "transfer_layers": row["transfer_layers"],
        "high_lr_layers": OPTIMAL_HIGH_LR_LAYERS,
        "initial_decay_epochs": row["initial_decay_epochs"],
        "frozen_layers": row["frozen_layers"],
    }


def resolve(name: str, examples_per_class: int | str, arch: str = "alexnet") -> dict:
    """n, h, d, f of a named protocol at a size, for `arch`'s units."""
    if name == "common":
        return common(arch)
    if name == "scratch":
        return scratch(arch)
    if name == "optimal":
        return optimal(examples_per_class, arch)
    raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(NAMED)}")


def names_of(task: dict) -> list[str]:
    """The named protocols a resolved fine-tuning task is an instance of (may be several)."""
    if task.get("stage") != "finetune":
        return []
    size, arch = task["examples_per_class"], task.get("arch", "alexnet")
    if arch not in UNITS:
        arch = "alexnet"
    named = [n for n in NAMED if n != "optimal" or arch in TABLE2_ARCHS]
    return [n for n in named if all(task[k] == v for k, v in resolve(n, size, arch).items())]
