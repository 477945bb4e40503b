"""langneurons: align multilingual causal LMs and watch their language neurons move.

The library is importable without Hydra; ``train.py`` and ``analyze.py`` are thin Hydra entry points over it.
"""

__version__ = "0.1.0"
