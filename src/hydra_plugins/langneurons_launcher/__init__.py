"""Hydra plugins of langneurons: the submitit launchers that report each job (see :mod:`langneurons.launchers`)."""
