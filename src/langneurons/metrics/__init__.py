"""Evaluation metrics shipped with the project as ``evaluate`` modules, loadable offline by path."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

MATH_ACCURACY = Path(__file__).with_name("math_accuracy")


@lru_cache(maxsize=None)
def load_math_accuracy():
    """The ``math_accuracy`` metric (last number of the prediction vs the gold number), loaded from this package."""
    import evaluate

    return evaluate.load(str(MATH_ACCURACY))
