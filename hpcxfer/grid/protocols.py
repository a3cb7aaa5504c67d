"""Named fine-tuning protocols and the paper's numbers (docs/design.md §1)."""

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

COMMON = {"transfer_layers": 7, "high_lr_layers": 8, "initial_decay_epochs": 30, "frozen_layers": 0}
SCRATCH = {"transfer_layers": 0, "high_lr_layers": 8, "initial_decay_epochs": 30, "frozen_layers": 0}
NAMED = ("common", "scratch", "optimal")


def table2_row(examples_per_class: int | str) -> dict:
    """Table 2's row for a size; a size between the paper's uses the next smaller one.

    Sizes below 10 use the 10 row, sizes above 500 that are not `full` use the 500 row.
    """
    if examples_per_class == "full":
        return TABLE2["full"]
    smaller = [s for s in SIZES[:-1] if s <= examples_per_class]  # type: ignore[operator]
    return TABLE2[smaller[-1] if smaller else 10]


def optimal(examples_per_class: int | str) -> dict:
    row = table2_row(examples_per_class)
    return {
        "transfer_layers": row["transfer_layers"],
        "high_lr_layers": OPTIMAL_HIGH_LR_LAYERS,
        "initial_decay_epochs": row["initial_decay_epochs"],
        "frozen_layers": row["frozen_layers"],
    }


def resolve(name: str, examples_per_class: int | str) -> dict:
    """n, h, d, f of a named protocol at a size."""
    if name == "common":
        return dict(COMMON)
    if name == "scratch":
        return dict(SCRATCH)
    if name == "optimal":
        return optimal(examples_per_class)
    raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(NAMED)}")


def names_of(task: dict) -> list[str]:
    """The named protocols a resolved fine-tuning task is an instance of (may be several)."""
    if task.get("stage") != "finetune":
        return []
    size = task["examples_per_class"]
    return [n for n in NAMED if all(task[k] == v for k, v in resolve(n, size).items())]
