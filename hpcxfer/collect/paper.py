"""The published numbers (docs/design.md §1) that an ImageNet study prints beside its own.

Plested & Gedeon (2019) report means over 4 class splits of ILSVRC2012; Yosinski et al.
(2014) report their released logs' baseB and AnB+. Accuracies here are percentages, as
printed in the papers; hpcxfer's records hold fractions.
"""

from __future__ import annotations

from hpcxfer.grid.protocols import TABLE2

#: Datasets whose studies the published numbers describe.
PAPER_DATASETS = ("imagenet",)

#: Table 1: training / validation loss of the section 3.1 sweep (h = 8, d = 30, f = 0) at
#: 10, 25 and 50 per class, and the average generalisation gap, per n (transfer_layers).
TABLE1: dict[int, dict] = {
    4: {"loss": {10: (1.55, 5.07), 25: (1.22, 4.27), 50: (1.35, 3.51)}, "gap": 2.91},
    5: {"loss": {10: (0.71, 5.38), 25: (0.82, 4.43), 50: (1.06, 3.67)}, "gap": 3.63},
    6: {"loss": {10: (0.49, 5.34), 25: (0.60, 4.48), 50: (0.83, 3.81)}, "gap": 3.90},
    7: {"loss": {10: (0.39, 6.26), 25: (0.48, 5.18), 50: (0.71, 4.29)}, "gap": 4.72},
}

#: Table 2's validation accuracy (%) of the best protocol per size.
TABLE2_ACC: dict = {size: row["val_acc"] for size, row in TABLE2.items()}

#: Section 3 text, 10 per class: the common protocol, and n = 5 with h = 8, d = 30.
COMMON_AT_10 = 20.9
N5_AT_10 = 23.4
#: The optimal protocol relative to the common one at 10 per class (%).
OPTIMAL_VS_COMMON_AT_10 = 47.8

#: Yosinski et al.'s released logs: baseB (500 classes from scratch) and AnB+ for n = 1..7.
YOSINSKI_BASE_B = 62.5
YOSINSKI_ANB_PLUS = (63.7, 64.7)


def applies(dataset: str | None) -> bool:
    """Whether the published numbers describe a study of this data set."""
    return dataset in PAPER_DATASETS
