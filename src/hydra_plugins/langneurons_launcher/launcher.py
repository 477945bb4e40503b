"""hydra-submitit-launcher's LocalLauncher and SlurmLauncher, saying what each job does (:mod:`langneurons.launchers`).

Here because Hydra instantiates a launcher only from the ``hydra_plugins`` package; conf/hydra/launcher/*.yaml name
these classes as ``_target_``. Hydra imports this module whenever it starts: without hydra-submitit-launcher (the
``slurm`` extra) it defines nothing.
"""

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _plugin
except ImportError:  # pip install -e ".[slurm]"
    _plugin = None

if _plugin is not None:
    from langneurons.launchers import ReportingLauncher

    class LocalLauncher(ReportingLauncher, _plugin.LocalLauncher):
        """Every job a subprocess on this machine (``hydra/launcher=local``)."""

        _RESULT_LAG = False

    class SlurmLauncher(ReportingLauncher, _plugin.SlurmLauncher):
        """Every job a task of a SLURM job array (``hydra/launcher=slurm``)."""

        _POLL_S = 5.0
