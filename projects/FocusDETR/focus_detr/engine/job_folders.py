"""The output folders of ``tools/main_job.py`` run without ``--output``: ``base``, ``base-2``, ``base-3``, ... A new
job claims the first that holds no run and no live job holds; ``--resume`` takes the one unfinished job's."""
import contextlib
import itertools
import os
import re

from .config import ConfigError
from .output_lock import OutputDirInUseError, OutputDirLock, check_no_earlier_run, claim_output_dir

__all__ = ["claimed_new_folder", "unfinished_job"]


def _numbered_folders(base):
    """The folders ``base``, ``base-2``, ``base-3``, ... that exist, in that order."""
    parent, name = os.path.split(base)
    try:
        entries = os.listdir(parent or ".")
    except OSError:
        return []
    pattern = re.compile(re.escape(name) + r"(?:-([2-9]|[1-9]\d+))?")
    numbered = [(int(match.group(1) or 1), entry) for entry in entries if (match := pattern.fullmatch(entry))]
    return [os.path.join(parent, entry) for _, entry in sorted(numbered) if os.path.isdir(os.path.join(parent, entry))]


def _holds_run(folder):
    """Whether ``folder`` holds an earlier run's checkpoints (a ``last_checkpoint`` tag, or checkpoint files)."""
    try:
        check_no_earlier_run(folder, key="--output")
    except ConfigError:
        return True
    return False


def _running(folder):
    """Whether a live job holds ``folder``'s lock."""
    try:
        with OutputDirLock(os.path.abspath(folder), key="--output"):
            return False
    except OutputDirInUseError:
        return True


@contextlib.contextmanager
def claimed_new_folder(base):
    """Holds, for the block, the first of ``base``, ``base-2``, ``base-3``, ... that holds no run (no checkpoint) and
    that no live job holds (one started just before has no checkpoint yet), so running the job again, or twice at
    once, never touches another run's results. Choosing is claiming: a folder whose lock another job took first,
    also in the same instant, is passed over like one holding a run, never refused (naming an ``--output`` that was
    never given). Yields ``(folder, claim)``: the :class:`~focus_detr.engine.output_lock.OutputDirClaim` held."""
    for folder in (base if n == 1 else f"{base}-{n}" for n in itertools.count(1)):
        if _holds_run(folder):
            continue
        with contextlib.ExitStack() as held:
            try:
                claim = held.enter_context(claim_output_dir(os.path.abspath(folder), key="--output"))
            except OutputDirInUseError:  # a live job holds it
                continue
            if _holds_run(folder):  # the job that held it saved a checkpoint and ended meanwhile
                continue
            yield folder, claim
            return


def unfinished_job(base, finished_file):
    """For ``--resume`` without ``--output``: the one of the existing folders ``base``, ``base-N`` whose job is
    unfinished (no ``finished_file`` written: interrupted in training or after it, or before its first checkpoint),
    passing over those a live job holds; none or several is a ConfigError naming them (the job to finish is then
    given with ``--output``): continuing the wrong run, or a finished one, is never guessed."""
    folders = _numbered_folders(base)
    unfinished = [folder for folder in folders if not os.path.isfile(os.path.join(folder, finished_file))]
    running = [folder for folder in unfinished if _running(folder)]
    unfinished = [folder for folder in unfinished if folder not in running]
    if len(unfinished) == 1:
        return unfinished[0]
    if unfinished:
        raise ConfigError(f"--resume: several main jobs are unfinished ({', '.join(unfinished)}): name the one to "
                          "finish with --output")
    if running:
        raise ConfigError(f"--resume: the only unfinished main job(s) ({', '.join(running)}) are running now: wait "
                          "for them to end")
    if folders:
        raise ConfigError(f"--resume: nothing to resume, every main job is finished ({', '.join(folders)}); to train "
                          "one longer: --output FOLDER --resume train.max_iter=N (more than before)")
    raise ConfigError(f"--resume: nothing to resume, no main job folder {base} (or {base}-2, ...) exists; run "
                      "without --resume to start one")
