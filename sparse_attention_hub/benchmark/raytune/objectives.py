"""Objectives of the hyperparameter search: a score (lower is better) from the mean attention
output error and the mean density of a short run. No task accuracy enters the score.

- ``sparsity_<p>`` (p in 5, 10, 15, 20, 25): ``0.99 error + 0.01 density`` plus
  ``10 max(0, density - p/100)``: the least error at no more than p% density;
- ``default``: ``error + 0.1 density``, plus 5 when the density is above 0.5.

A run that came out dense (density 1, error 0) scores :data:`DENSE_SCORE`; a failed run
scores :data:`FAILURE_SCORE` (the reference's constants).
"""

from __future__ import annotations

from typing import Callable, Dict

Objective = Callable[[float, float], float]

#: Score of a configuration that attended densely: never the best sparse configuration.
DENSE_SCORE = 100.0
#: Score of a trial whose run failed.
FAILURE_SCORE = 5.0


def create_sparsity_objective(target_density: float, penalty_weight: float = 10.0) -> Objective:
    """``0.99 error + 0.01 density + penalty_weight * max(0, density - target_density)``."""
    if not 0.0 < target_density <= 1.0:
        raise ValueError(f"target_density must be in (0, 1], got {target_density}")

    def objective(error: float, density: float) -> float:
        return 0.99 * error + 0.01 * density + penalty_weight * max(0.0, density - target_density)

    objective.__name__ = f"objective_sparsity_{round(target_density * 100)}_percent"
    return objective


def default_objective(error: float, density: float) -> float:
    """``error + 0.1 density``, plus 5 when more than half of the keys are attended."""
    return error + 0.1 * density + (5.0 if density > 0.5 else 0.0)


OBJECTIVE_FUNCTIONS: Dict[str, Objective] = {
    **{f"sparsity_{p}": create_sparsity_objective(p / 100) for p in (5, 10, 15, 20, 25)},
    "default": default_objective,
}


def get_objective(name: str) -> Objective:
    """The objective called ``name`` in :data:`OBJECTIVE_FUNCTIONS`."""
    if name not in OBJECTIVE_FUNCTIONS:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVE_FUNCTIONS)}, got {name!r}")
    return OBJECTIVE_FUNCTIONS[name]
