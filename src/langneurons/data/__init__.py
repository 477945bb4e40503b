"""Data: parallel problem sets (generated, MGSM, MSVAMP) and the training sets built from them."""

from .problems import SOURCES, load_problems
from .preferences import correctness_pairs, load_jsonl, sft_examples

__all__ = ["SOURCES", "load_problems", "correctness_pairs", "load_jsonl", "sft_examples"]
