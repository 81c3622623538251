"""Published ACDC numbers (method_spec D.2 = ARCO paper, Table 1), shown as reference rows — never measured here.

Their protocol differs from a benchmark run here: SSL4MIS U-Net, 2D slices at 256², 30k iterations, the 40-volume
ACDC *test* set (this project's ACDC copy evaluates on the 20 *val* volumes), MONA evaluation protocol (Dice [%],
ASD [voxel]; HD95 not reported).
"""
from typing import Dict, List, Optional, Sequence

SOURCE = "ARCO (NeurIPS 2023, arXiv 2302.01735v5) Table 1, via method_spec.md D.2"
CLASSES = ("RV", "MYO", "LV")

# {row name: {labeled patients: ((avg Dice %, avg ASD vox), (RV), (MYO), (LV))}}
ACDC_TABLE: Dict[str, Dict[int, tuple]] = {
    "UNet-L (labeled only)": {
        1: ((40.3, 22.7), (29.0, 25.4), (43.6, 15.3), (48.2, 27.5)),
        3: ((51.7, 13.1), (36.9, 30.1), (54.9, 4.27), (63.4, 5.11)),
        7: ((79.5, 2.73), (65.9, 0.892), (82.9, 2.70), (89.6, 4.60)),
    },
    "Mean Teacher": {
        1: ((42.9, 15.1), (32.5, 21.9), (46.2, 8.99), (50.1, 14.7)),
        3: ((58.3, 11.2), (39.0, 21.5), (58.7, 7.47), (77.3, 4.72)),
        7: ((80.1, 2.33), (75.2, 1.22), (79.2, 2.32), (86.0, 3.45)),
    },
    "MONA": {
        1: ((82.6, 1.43), (80.2, 1.57), (79.9, 1.10), (87.8, 1.43)),
        3: ((86.9, 1.07), (84.7, 1.01), (85.4, 0.731), (90.6, 1.48)),
        7: ((87.7, 1.33), (86.9, 0.687), (85.7, 1.70), (90.5, 2.14)),
    },
}


def is_acdc_like(class_names: Sequence[str]) -> bool:
    """Foreground classes RV, MYO (or Myo), LV in this order (label values 1, 2, 3 of the ACDC converters)."""
    return [n.upper() for n in class_names] == list(CLASSES)


def published_rows(n_labeled: int) -> List[dict]:
    """Rows for ``n_labeled`` patients (empty if the paper has no such column)."""
    rows = []
    for name, by_n in ACDC_TABLE.items():
        values: Optional[tuple] = by_n.get(n_labeled)
        if values is None:
            continue
        rows.append({"name": f"{name} (published)", "dice_mean": values[0][0] / 100, "asd_mean": values[0][1],
                     "dice_per_class": {c: v[0] / 100 for c, v in zip(CLASSES, values[1:])},
                     "asd_per_class": {c: v[1] for c, v in zip(CLASSES, values[1:])}, "source": SOURCE})
    return rows
