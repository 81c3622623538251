"""The ACDC-style benchmark: ``nnUNetv2_mona_benchmark`` (plan -> train -> predict -> evaluate -> report, resumable)
and ``nnUNetv2_mona_evaluate`` (per-volume Dice / HD95 / ASD, MONA protocol and in mm)."""
