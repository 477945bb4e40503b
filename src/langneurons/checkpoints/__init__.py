"""Neuron checkpoints: the measurement a run takes while it trains, and where it is kept.

- :mod:`.record`:   :class:`~.record.NeuronCheckpoint` (what one step measured) and the one on-disk format,
  ``neurons/step-<N>/``: ``write``, ``step_folders``, ``saved_steps``, ``read_record``, used by the run, the
  analysis and the tracker alike
- :mod:`.measure`:  :class:`~.measure.NeuronCheckpointer`: answers and accuracy, the probe, counts, identification,
  dynamics
- :mod:`.callback`: :class:`~.callback.NeuronCheckpointCallback`, which drives it from the Trainer
- :mod:`.summary`:  ``checkpoint_summary``, the first and last checkpoints side by side at the end of a run

Import from the modules themselves: the record and the summary load without transformers' Trainer (the analysis
reads checkpoints without it).
"""
