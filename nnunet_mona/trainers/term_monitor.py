"""Warnings for loss terms stuck at a degenerate value (representation collapse).

A contrastive InfoNCE term whose value sits at ln(1 + negatives) sees every similarity as equal:
the embeddings no longer separate anything. A nearest-neighbour pull at 0 is met by a constant
representation. Both happen in real trainings and silently cost Dice; the training log says so.
"""
import math
from typing import Dict, List, Mapping


def chance_value(num_negatives: int) -> float:
    """InfoNCE with one positive and ``num_negatives`` negatives, all similarities equal: ln(1 + N)."""
    return math.log(1 + int(num_negatives))


def degenerate_term_warnings(terms: Mapping[str, float], chance_values: Dict[str, float],
                             zero_terms: tuple = (), rel_tol: float = 2e-3, zero_tol: float = 1e-4) -> List[str]:
    """Messages for each term at its chance value (relative tolerance) or at 0 (absolute tolerance).

    terms: {name: epoch mean}; chance_values: {name: ln(1 + negatives)}; zero_terms: names whose 0
    means collapse. Missing or non-finite terms are skipped.
    """
    messages = []
    for name, chance in chance_values.items():
        value = terms.get(name)
        if value is not None and math.isfinite(value) and abs(value - chance) <= rel_tol * chance:
            messages.append(f"WARNING: loss term '{name}' = {value:.4f} sits at its chance value ln(1 + negatives) = "
                            f"{chance:.4f}: the representation may have collapsed (all similarities equal).")
    for name in zero_terms:
        value = terms.get(name)
        if value is not None and math.isfinite(value) and abs(value) <= zero_tol:
            messages.append(f"WARNING: loss term '{name}' = {value:.4f}: a nearest-neighbour pull at 0 is met by a "
                            f"constant representation (collapse).")
    return messages
