"""The Trainer callback that takes neuron checkpoints while a model trains: at step 0, every ``every_n_steps`` and at
the end of training (the measurement itself: :mod:`.measure`)."""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback

from ..distributed import is_rank_zero
from .measure import NeuronCheckpointer
from .record import NeuronCheckpoint

log = logging.getLogger(__name__)


def checkpoint_line(ckpt: NeuronCheckpoint) -> str:
    """One console line for a checkpoint: its accuracy per language and the neurons of each type."""
    acc = " ".join(f"{lang} {v:.2f}" for lang, v in ckpt.accuracy.items() if lang != "avg")
    line = f"neuron checkpoint at step {ckpt.step} ({ckpt.seconds:.1f} s): accuracy {acc} (avg {ckpt.accuracy.get('avg', 0):.2f})"
    if ckpt.ident is not None:
        t = ckpt.ident.totals
        line += f"; neurons: {t['specific']} specific, {t['related']} related, {t['general']} general"
    return line + "".join(f"; note: {n}" for n in ckpt.notes)


class NeuronCheckpointCallback(TrainerCallback):
    """Drives a :class:`NeuronCheckpointer` from the Trainer: step 0, every ``every_n_steps``, and the end.

    On a step where the Trainer also saves, the neuron checkpoint is taken right *after* the trainer checkpoint
    (``on_save``), so the two always agree: a crash in between leaves a trainer checkpoint without its neuron
    checkpoint, and the resumed run takes exactly that one again, from the same weights. With
    ``every_n_steps`` a multiple of ``trainer.save_steps`` a resumed run repeats no checkpoint step and misses none.
    """

    def __init__(self, checkpointer: NeuronCheckpointer, every_n_steps: int, on_checkpoint=None):
        self.checkpointer = checkpointer
        self.every = int(every_n_steps or 0)
        self.on_checkpoint = on_checkpoint  # called on rank 0 with each NeuronCheckpoint (the tracker's hook)
        self.taken: set[int] = set()
        self.pending: int | None = None

    def _take(self, model: torch.nn.Module, step: int) -> None:
        if step in self.taken:
            return
        ckpt = self.checkpointer.take(model, step)
        self.taken.add(step)
        if is_rank_zero():
            log.info("%s", checkpoint_line(ckpt))
        if self.on_checkpoint is not None and is_rank_zero():
            self.on_checkpoint(ckpt)

    def _due(self, step: int) -> bool:
        return step == 0 or (self.every > 0 and step % self.every == 0)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0:  # resumed: continue the saved history instead of starting a new one
            self.taken.update(self.checkpointer.restore(state.global_step))
        if self._due(state.global_step):
            self._take(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._due(state.global_step):
            if control.should_save:
                self.pending = state.global_step
            else:
                self._take(model, state.global_step)

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.pending == state.global_step:
            self.pending = None
            self._take(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._take(model, state.global_step)
