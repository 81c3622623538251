"""``comparison.png``: a few test slices with image, ground truth and each trainer's prediction.

Slices are chosen from the ground truth only (never from the predictions): test cases in sorted order,
cases that contain the rare class first, and in each case the slice with the most foreground.
"""
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_mona.demo.evaluation import display_name


def _read(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path))  # (Z, Y, X)


def choose_slices(label_folder: str, case_ids: List[str], file_ending: str, rare_label: int,
                  num_rows: int = 3) -> List[Tuple[str, int]]:
    """[(case id, slice index)]: up to ``num_rows`` cases (half of them, rounded up, with the rare class when
    there are such cases), each with its slice that shows the rare class (largest area) or the most foreground."""
    with_rare, without_rare = [], []
    for case in sorted(case_ids):
        seg = _read(os.path.join(label_folder, case + file_ending))
        rare_area = (seg == rare_label).reshape(seg.shape[0], -1).sum(1)
        if rare_area.max() > 0:
            with_rare.append((case, int(rare_area.argmax())))
        else:
            without_rare.append((case, int((seg > 0).reshape(seg.shape[0], -1).sum(1).argmax())))
    n_rare = min(len(with_rare), (num_rows + 1) // 2)
    chosen = with_rare[:n_rare] + without_rare[:num_rows - n_rare]
    if len(chosen) < num_rows:
        chosen += with_rare[n_rare:n_rare + num_rows - len(chosen)]
    return chosen


def make_comparison_figure(output_png: str, image_folder: str, label_folder: str,
                           prediction_folders: Dict[str, str], case_dice: Dict[str, Dict[str, Optional[float]]],
                           class_names: Dict[int, str], file_ending: str, rare_label: int, num_rows: int = 3) -> str:
    """Rows: test slices; columns: image, ground truth, one per trainer (title: that case's mean foreground
    Dice). Returns ``output_png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    case_ids = [f[:-len(file_ending)] for f in os.listdir(label_folder) if f.endswith(file_ending)]
    rows = choose_slices(label_folder, case_ids, file_ending, rare_label, num_rows)
    colors = [(0, 0, 0, 0), (0.95, 0.3, 0.2, 0.55), (0.2, 0.6, 1.0, 0.55), (1.0, 0.9, 0.1, 0.8),
              (0.3, 0.9, 0.3, 0.55), (0.8, 0.3, 0.9, 0.55)]
    n_labels = max(class_names) + 1
    cmap = ListedColormap([colors[i % len(colors)] if i else colors[0] for i in range(n_labels)])
    columns = ["image", "ground truth"] + [display_name(t) for t in prediction_folders]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.6 * len(columns), 2.8 * len(rows) + 0.8),
                             squeeze=False)
    for r, (case, z) in enumerate(rows):
        image = _read(os.path.join(image_folder, f"{case}_0000{file_ending}"))[z]
        lo, hi = np.percentile(image, (0.5, 99.5))
        panels = [("image", None), ("ground truth", _read(os.path.join(label_folder, case + file_ending))[z])]
        for trainer, folder in prediction_folders.items():
            dice = case_dice.get(trainer, {}).get(case)
            title = (display_name(trainer) + "\n" if r == 0 else "") + \
                (f"Dice {100 * dice:.1f}" if dice is not None else "Dice n/a")
            panels.append((title, _read(os.path.join(folder, case + file_ending))[z]))
        for c, (title, seg) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if seg is not None:
                ax.imshow(seg, cmap=cmap, vmin=0, vmax=n_labels - 1, interpolation="nearest")
            ax.set_title(f"{case} z={z}" if c == 0 else title if c > 1 or r == 0 else "", fontsize=9)
            ax.axis("off")
    handles = [Patch(color=cmap(i), label=class_names[i]) for i in sorted(class_names) if i > 0]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.suptitle("Held-out test slices (Dice = mean over foreground classes of the whole case, %)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(output_png, dpi=110)
    plt.close(fig)
    return output_png
