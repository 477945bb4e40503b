"""The tiny base model the default experiment aligns: pretrained by the harness on its own generated problems,
with a skewed language mix (English-rich, a few languages rare), cached on disk and built once per configuration.

- corpus:   :func:`documents` (the pretraining documents), :func:`held_out_keys` (evaluation problems kept out)
- pretrain: :func:`pretrain` (the CPU training loop)
- cache:    :func:`tiny_base` (load or build), :func:`base_tokenizer`, :func:`cache_key`, :func:`key_material`
"""

from .cache import base_tokenizer, cache_key, cache_root, key_material, load_entry, tiny_base
from .corpus import Document, documents, held_out_keys
from .pretrain import PretrainReport, pretrain

__all__ = ["Document", "PretrainReport", "base_tokenizer", "cache_key", "cache_root", "documents", "held_out_keys",
           "key_material", "load_entry", "pretrain", "tiny_base"]
