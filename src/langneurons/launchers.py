"""What Hydra's submitit launchers (hydra-submitit-launcher) add here: they say what each job of a multirun does.

The launchers themselves are in ``hydra_plugins.langneurons_launcher.launcher`` (Hydra instantiates launchers only
from the ``hydra_plugins`` package): the plugin's LocalLauncher and SlurmLauncher with :class:`ReportingLauncher`
mixed in. ``conf/hydra/launcher/{local,slurm}.yaml`` point ``_target_`` there; every key of the plugin's configs works
as before. The plugin itself prints nothing per job, and a job's output goes to its submitit log only (a local job's
too), so a user sees neither where a job writes nor why it failed. These launchers print, per job, one line when it
is submitted (its overrides, its job id, its log ``<sweep dir>/.submitit/<job id>/<job id>_0_log.out``) and one line
when it ends: ``ok`` with its run folder, or ``failed`` with its error line (train.py's ``error: ...``, or a crash's
exception line, read from the job's ``_log.err``) and where that log is. They wait for every job of a batch (the
plugin stopped at the first failed one and left the rest running unwatched), then hand Hydra a failed job as a
one-line error instead of a traceback through submitit.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf

from .errors import error_line, shown_path, tail

log = logging.getLogger(__name__)


class JobFailed(CompactHydraException):
    """A job of a multirun failed; the message is its error line (Hydra prints it without a traceback)."""


def _varying(job_overrides: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each job's overrides without those every job of the batch shares (``lang=xx`` of ``lang=xx,sw model=tiny``)."""
    lists = [list(filter_overrides(o)) for o in job_overrides]
    shared = set.intersection(*(set(o) for o in lists))
    return [[x for x in o if x not in shared] for o in lists]


class ReportingLauncher:
    """A mixin for hydra-submitit-launcher's BaseSubmititLauncher subclasses (first in the bases: its ``launch``
    replaces the plugin's, its ``__call__`` wraps the plugin's job)."""

    # Whether a finished job's result file may show up late (a cluster's shared file system): submitit then waits
    # up to 15 s for it; a local job's is there when its process ends.
    _RESULT_LAG = True
    _POLL_S = 1.0

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict[type, Singleton]) -> JobReturn:
        """In the job: the plugin's job, and a task's exception written to the job's ``_log.err`` (Hydra keeps it
        in the job's result only, so the log would not say why the job failed)."""
        ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        if ret.status == JobStatus.FAILED:
            error = ret._return_value
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
            sys.stderr.flush()
        return ret

    def _executor(self) -> Any:
        """The submitit executor with this launcher's parameters, as the plugin builds it."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        init_keys = {"max_num_timeout"}
        init_params = {"folder": self.params["submitit_folder"],
                       **{f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in init_keys}}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in self.params.items()
                                      if k not in init_keys | {"submitit_folder"}})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and len(job_overrides) > 0
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir: {shown_path(sweep_dir)}")
        indices = [initial_job_idx + i for i in range(len(job_overrides))]
        job_params = [(list(o), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
                      for idx, o in zip(indices, job_overrides)]
        jobs = executor.map_array(self, *zip(*job_params))
        submitted = time.perf_counter()
        for idx, overrides, job in zip(indices, job_overrides, jobs):
            log.info(f"#{idx} {' '.join(filter_overrides(overrides))}: submitted as job {job.job_id}, log "
                     f"{shown_path(job.paths.stdout)}")
        names = [f"#{idx}" + (f" {' '.join(v)}" if v else "") for idx, v in zip(indices, _varying(job_overrides))]

        returns: list[JobReturn | None] = [None] * len(jobs)
        errors: dict[int, str] = {}
        pending = set(range(len(jobs)))
        while pending:
            for i in sorted(pending):
                if not jobs[i].done():
                    continue
                pending.discard(i)
                ret, error = self._outcome(jobs[i], job_overrides[i])
                took = f"{time.perf_counter() - submitted:.0f} s"
                if error is None:
                    folder = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
                    where = f"run folder {shown_path(folder)}, " if folder else ""
                    log.info(f"{names[i]}: ok after {took}: {where}log {shown_path(jobs[i].paths.stdout)}")
                else:
                    errors[i] = error
                    log.info(f"{names[i]}: failed after {took}: {error}   full log: "
                             f"{shown_path(jobs[i].paths.stderr)}")
                returns[i] = ret
            if pending:
                time.sleep(self._POLL_S)
        if errors and len(jobs) > 1:
            log.info(f"{len(errors)} of {len(jobs)} jobs failed: {', '.join(names[i] for i in sorted(errors))}")
        # Hydra raises the first failed job's error in job order (it reads each return's ``return_value``); the
        # private ``_return_value`` is read here because the property itself raises for a failed job.
        for i in sorted(errors):
            cause = returns[i]._return_value if returns[i].status == JobStatus.FAILED else None
            message = f"{names[i]} failed: {errors[i]}   full log: {shown_path(jobs[i].paths.stderr)}"
            if len(errors) > 1:
                message = f"{len(errors)} of {len(jobs)} jobs failed; {message}"
            failed = JobFailed(message)
            failed.__cause__ = cause if isinstance(cause, BaseException) else None
            returns[i].status = JobStatus.FAILED
            returns[i].return_value = failed
        return returns

    def _outcome(self, job: Any, overrides: Sequence[str]) -> tuple[JobReturn, str | None]:
        """A finished job's JobReturn and, when it failed, its error line."""
        import submitit

        ret: JobReturn | None = None
        if self._RESULT_LAG or job.paths.result_pickle.exists():
            try:
                ret = job.results()[0]
            except submitit.core.utils.UncompletedJobError:  # it raised (FailedJobError), or left no result
                pass
        if ret is not None and ret.status != JobStatus.FAILED:
            return ret, None
        if ret is not None:  # the task raised: Hydra kept the exception
            error = traceback.format_exception_only(type(ret._return_value), ret._return_value)[-1].strip()
            return ret, error
        # train.py's HarnessError exits the job (exit 2) with its line on stderr; a killed job leaves its state.
        error = error_line(tail(job.paths.stderr))
        if error is None:
            state = job.state
            error = f"no result and an empty log (job state {state})"
        elif job.state not in ("FINISHED", "COMPLETED", "UNKNOWN"):
            error = f"{error} (job state {job.state})"
        return JobReturn(overrides=list(overrides), status=JobStatus.FAILED), error
