"""``comparison.png``: per-class Dice of each trainer side by side, then the test slices where they differ most.

Top: a grouped bar chart of the rows of results.md (Dice per foreground class and their mean over the held-out test
cases, nnU-Net's evaluation), one bar per trainer in each group. Below: image, ground truth and each trainer's
prediction on the test slices where the trainers' per-slice Dice differ most (``slice_selection``: largest
max - min over the trainers, at most one slice per case), each prediction titled with its Dice on that slice.
Those rows are picked from the predictions, so they are not typical slices; the caption says so.
"""
import os
from typing import Dict, List, Optional

import numpy as np

from nnunet_mona.demo.evaluation import display_name
from nnunet_mona.demo.slice_selection import choose_slices, per_slice_dice, read_volume

# Trainer colours: none of the overlay's class colours (red, blue, yellow, ...), so a bar is not read as a class.
TRAINER_COLORS = ["0.6", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"]
CLASS_COLORS = [(0, 0, 0, 0), (0.95, 0.3, 0.2, 0.55), (0.2, 0.6, 1.0, 0.55), (1.0, 0.9, 0.1, 0.8),
                (0.3, 0.9, 0.3, 0.55), (0.8, 0.3, 0.9, 0.55)]


def _bar_chart(ax, rows: Dict[str, Dict[str, Optional[float]]], groups: List[str]) -> None:
    """One group of bars per entry of ``groups`` (class names, then 'mean'), one bar per trainer (row of
    ``rows``), its Dice in % printed above it; the legend sits above the axes, where no bar can be."""
    x = np.arange(len(groups))
    width = 0.8 / len(rows)
    for i, (trainer, row) in enumerate(rows.items()):
        values = [row.get(g) for g in groups]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, [100 * v if v is not None else 0 for v in values],
                      width, label=display_name(trainer), color=TRAINER_COLORS[i % len(TRAINER_COLORS)])
        for bar, v in zip(bars, values):
            ax.annotate(f"{100 * v:.1f}" if v is not None else "n/a", (bar.get_x() + width / 2, bar.get_height()),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 112)  # headroom for the printed values
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("Dice (%)", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(rows), fontsize=9, frameon=False)


def make_comparison_figure(output_png: str, image_folder: str, label_folder: str,
                           prediction_folders: Dict[str, str], rows: Dict[str, Dict[str, Optional[float]]],
                           class_names: Dict[int, str], file_ending: str, num_rows: int = 3) -> str:
    """Writes ``output_png``: the bar chart of ``rows`` ({trainer: {class name: Dice in [0, 1] or None, ...,
    'mean': ...}}, as in results.md) above ``num_rows`` slice rows with columns image, ground truth, one per
    trainer. Images, labels and predictions are (Z, Y, X) volumes; ``class_names``: {label value: name} of the
    foreground classes. Returns ``output_png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    dice = per_slice_dice(label_folder, prediction_folders, file_ending, sorted(class_names))
    slices = choose_slices(dice, num_rows)
    n_labels = max(class_names) + 1
    cmap = ListedColormap([CLASS_COLORS[i % len(CLASS_COLORS)] if i else CLASS_COLORS[0] for i in range(n_labels)])
    n_cols = 2 + len(prediction_folders)
    fig = plt.figure(figsize=(max(2.6 * n_cols, 8), 3.6 + 2.7 * len(slices) + 1.0))
    grid = fig.add_gridspec(1 + len(slices), n_cols, height_ratios=[1.25] + [1] * len(slices))
    _bar_chart(fig.add_subplot(grid[0, :]), rows, [class_names[k] for k in sorted(class_names)] + ["mean"])
    for r, (case, z) in enumerate(slices):
        image = read_volume(os.path.join(image_folder, f"{case}_0000{file_ending}"))[z]
        lo, hi = np.percentile(image, (0.5, 99.5))
        panels = [(f"{case} z={z}", None),
                  ("ground truth", read_volume(os.path.join(label_folder, case + file_ending))[z])]
        for trainer, folder in prediction_folders.items():
            title = f"slice Dice {100 * dice[(case, z)][trainer]:.1f}"
            panels.append((display_name(trainer) + "\n" + title if r == 0 else title,
                           read_volume(os.path.join(folder, case + file_ending))[z]))
        for c, (title, seg) in enumerate(panels):
            ax = fig.add_subplot(grid[r + 1, c])
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if seg is not None:
                ax.imshow(seg, cmap=cmap, vmin=0, vmax=n_labels - 1, interpolation="nearest")
            ax.set_title(title if c != 1 or r == 0 else "", fontsize=9)
            ax.axis("off")
    handles = [Patch(color=cmap(i), label=class_names[i]) for i in sorted(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    n_cases = sum(f.endswith(file_ending) for f in os.listdir(label_folder))
    fig.suptitle(f"Top: Dice per class over all {n_cases} held-out test cases (%, as in results.md)\n"
                 f"Below: the {len(slices)} test slices where the trainers differ most (largest spread of per-slice "
                 "Dice, at most one per case):\nchosen to show the differences, not typical slices; titles: each "
                 "trainer's Dice on that slice (%)", fontsize=9.5)
    fig.tight_layout(rect=(0, 0.02, 1, 0.96))
    fig.savefig(output_png, dpi=110)
    plt.close(fig)
    return output_png
