"""Stopping training cleanly on Ctrl-C (SIGINT) or a scheduler's SIGTERM.

The first signal asks the run to stop at the end of the current iteration: there it saves a checkpoint (the same
save a periodic checkpoint makes, so ``--resume`` continues bit-exactly) and ends with one line naming the iteration,
the checkpoint a resume starts from and the command that resumes. A second Ctrl-C stops at once, without saving: the
last saved checkpoint stays the resume point. A file being written (a checkpoint) is finished first: signals that
arrive meanwhile take effect once it is complete. A signal during the last iteration stops the run once that is
saved, before the final evaluation; a signal during the final evaluation stops it at once. All processes of a
multi-process run agree on the iteration to stop after. SIGHUP (the terminal closed) counts as SIGTERM, unless the
run was started ignoring it (``nohup``). The exit status is 128 + the signal number (130 for SIGINT, 143 for SIGTERM,
129 for SIGHUP), as shells do.
"""
import contextlib
import logging
import multiprocessing
import os
import shlex
import signal
import sys
import threading

from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = [
    "STOP_SIGNALS",
    "ForwardedStop",
    "SignalInterrupt",
    "StopOnRequestHook",
    "StopRequest",
    "TrainingFinishedInterrupted",
    "TrainingInterrupted",
    "evaluation_command",
    "ignore_stop_signals",
    "resume_command",
    "stop_signals_deferred",
    "stop_signals_interrupt",
]

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())


def resume_command(argv=None):
    """The shell command that resumes the run started by ``argv`` (default: this process's own command line,
    interpreter and its options included): the same command with ``--resume``."""
    argv = list(sys.orig_argv if argv is None else argv)
    if "--resume" not in argv:
        end = argv.index("--") if "--" in argv else len(argv)
        argv.insert(end, "--resume")
    return shlex.join(argv)


def evaluation_command(resume_command, checkpoint):
    """The shell command that evaluates ``checkpoint`` with the run of ``resume_command``'s config and overrides: the
    same command without ``--resume``, with ``--eval-only train.init_checkpoint=CHECKPOINT``."""
    argv = [arg for arg in shlex.split(resume_command) if arg != "--resume"]
    end = argv.index("--") if "--" in argv else len(argv)
    return shlex.join(argv[:end] + ["--eval-only", f"train.init_checkpoint={checkpoint}"] + argv[end:])


def _install(handler, numbers=STOP_SIGNALS):
    """``handler`` for each of the signals ``numbers``, except those ignored at start: a SIGHUP under ``nohup`` (the
    run must outlive its terminal), a SIGINT in a background job of a script (the shell ignores it there, so that a
    Ctrl-C at the terminal stops the script alone). Returns the handlers it replaced. Installs nothing outside the
    main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    replaced = {}
    for number in numbers:
        if signal.getsignal(number) is not signal.SIG_IGN:
            replaced[number] = signal.signal(number, handler)
    return replaced


def _restore(replaced):
    for number, handler in replaced.items():
        # None: a handler not installed from Python; the default is the closest Python can put back. A handler
        # meant for a command's imports only (focus_detr.entry_point's) is not put back either.
        restore_default = handler is None or getattr(handler, "restored_as_default", False)
        signal.signal(number, signal.SIG_DFL if restore_default else handler)


@contextlib.contextmanager
def stop_signals_deferred(what="a file is being written", until="the file is complete"):
    """Within the block, stop signals are held and then handled when it ends, by the handlers in place then (in the
    order they came): a file being written is never cut short by a Ctrl-C (a torn write can also abort the process
    from a destructor later), the signal takes effect once it is complete. The first signal held is logged as
    "SIGINT received while {what}: it takes effect once {until}". Within an enclosing block (a checkpoint
    save around its file's write) it changes nothing: the enclosing block holds the signals, and says so once (the
    inner block's held signal, handed on to it, was announced twice)."""
    if any(getattr(signal.getsignal(number), "holds_stop_signals", False) for number in STOP_SIGNALS):
        yield
        return
    held = []

    def hold(signal_number, frame):
        if not held:
            logger.warning(f"{signal.Signals(signal_number).name} received while {what}: it takes effect once {until}")
        held.append(signal_number)

    hold.holds_stop_signals = True
    replaced = _install(hold)
    try:
        yield
    finally:
        _restore(replaced)
        for number in held:
            signal.raise_signal(number)  # runs the restored Python handler before returning


class SignalInterrupt(KeyboardInterrupt):
    """A SIGTERM or SIGHUP that interrupts like Ctrl-C: ``str()`` is the line to show, ``exit_status`` 128 + its
    number."""

    def __init__(self, signal_number):
        self.signal_number = signal_number
        self.exit_status = 128 + signal_number
        super().__init__(f"interrupted by {signal.Signals(signal_number).name}")


@contextlib.contextmanager
def stop_signals_interrupt():
    """Within the block, SIGTERM and SIGHUP raise :class:`SignalInterrupt` as Ctrl-C raises KeyboardInterrupt (one
    line and exit status 143 / 129 from the command line, a lock released on the way out) instead of ending the
    process silently; handlers installed inside (training's :class:`StopRequest`) take over while active."""

    def interrupt(signal_number, frame):
        raise SignalInterrupt(signal_number)

    replaced = _install(interrupt, [number for number in STOP_SIGNALS if number != signal.SIGINT])
    try:
        yield
    finally:
        _restore(replaced)


def _exit_on_sigterm_from(parent_pid):
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent_pid:
            os._exit(0)


def ignore_stop_signals(worker_id=None):
    """``worker_init_fn`` of data-loader workers: a Ctrl-C or a SIGTERM meant for the whole job (a terminal's process
    group, a scheduler signalling every process) leaves them running, so that the training process can finish its
    iteration and save; SIGTERM from the training process itself (how it ends its workers) still ends them, as do
    SIGKILL and the training process's death. Where the sender of a signal cannot be told (no ``sigwaitinfo``),
    only Ctrl-C is ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    # Blocked here, before the worker starts any thread, so every thread blocks it and only the waiter receives it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_sigterm_from, args=(os.getppid(),), daemon=True).start()


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal. ``str()`` is the line to show; ``exit_status`` is 128 + the signal number.

    Args:
        signal_number (int): the signal that stopped the run.
        where (str): "after iteration 5", "during iteration 7", "before iteration 0".
        max_iter (int): the run's ``train.max_iter``.
        checkpoint (tuple or None): (iteration, path) of the checkpoint a resume starts from; None: none yet.
        saved_now (bool): that checkpoint was saved at this stop.
        command (str or None): the command that resumes the run.
    """

    def __init__(self, signal_number, where, max_iter, checkpoint, saved_now=False, command=None):
        self.signal_number = signal_number
        self.exit_status = 128 + signal_number
        self.checkpoint = checkpoint
        name = signal.Signals(signal_number).name
        if checkpoint is None:
            resume_point = "no checkpoint yet: a resume starts from scratch"
        else:
            iteration, path = checkpoint
            resume_point = (f"checkpoint {path} ({'saved now; ' if saved_now else ''}a resume continues at iteration "
                            f"{iteration + 1})")
        unsaved = "" if saved_now or where.startswith("before") else ", without saving"
        resume = f"; resume with: {command}" if command else "; continue it with --resume"
        super().__init__(
            f"training stopped by {name} {where} (train.max_iter {max_iter}){unsaved}; {resume_point}{resume}"
        )


class TrainingFinishedInterrupted(KeyboardInterrupt):
    """Training finished and was saved; a signal stopped what followed: the final evaluation, or the run's wrapping
    up (writing the last metrics). ``str()`` is the line to show; ``exit_status`` is 128 + the signal number.

    Args:
        signal_number (int): the signal.
        max_iter (int): the run's ``train.max_iter``.
        checkpoint (str): the final checkpoint.
        evaluation_pending (bool): whether the final evaluation was stopped (else nothing is left to redo).
        command (str or None): the command that evaluates the checkpoint.
    """

    def __init__(self, signal_number, max_iter, checkpoint, evaluation_pending, command=None):
        self.signal_number = signal_number
        self.exit_status = 128 + signal_number
        name = signal.Signals(signal_number).name
        finished = f"training finished (train.max_iter {max_iter}; checkpoint {checkpoint})"
        if evaluation_pending:
            evaluate = command or f"--eval-only train.init_checkpoint={checkpoint}"
            message = f"{finished}; its evaluation was stopped by {name}; evaluate it with: {evaluate}"
        else:
            message = f"{finished}; {name} stopped the run as it was wrapping up: nothing needs to be redone"
        super().__init__(message)


class StopRequest:
    """Context manager: while active, the stop signals do not interrupt this process but record a request to stop
    (``signal_number``, the first signal received); a second SIGINT raises KeyboardInterrupt (stop at once), and
    after :meth:`stop_at_once` any stop signal does (``last_signal``: the signal that raised). Processes forked
    inside the block (data-loader workers) inherit the handler and ignore these signals: their parent ends them.
    Installs nothing outside the main thread (Python delivers signals only there)."""

    def __init__(self):
        self.signal_number = None
        self.last_signal = None
        self.at_once = False
        self._pid = None
        self._previous = {}

    def stop_at_once(self):
        """From now on a stop signal interrupts at once: nothing is left to save (training ended and was saved)."""
        self.at_once = True

    def _handle(self, signal_number, frame):
        if os.getpid() != self._pid:  # a forked data-loader worker: the training process decides when it ends
            return
        name = signal.Signals(signal_number).name
        if self.at_once:
            logger.warning(f"{name} received: training is complete and saved; stopping now")
        elif self.signal_number is None:
            self.signal_number = signal_number
            logger.warning(f"{name} received: stopping after this iteration, once its checkpoint is saved (Ctrl-C "
                           "again stops at once, without saving)")
            return
        elif signal_number != signal.SIGINT:
            return
        self.last_signal = signal_number
        raise KeyboardInterrupt

    def __enter__(self):
        self._pid = os.getpid()
        self._previous = _install(self._handle)
        return self

    def __exit__(self, *exc_info):
        _restore(self._previous)
        self._previous = {}


class ForwardedStop(logging.Filter):
    """Context manager for a process that waits for the training processes it started (detectron2's ``launch``
    with several processes): the stop signals do not interrupt it; each is recorded (``signal_number``, the first)
    and passed on to its child processes as SIGTERM, a stop request for them. A terminal's Ctrl-C reaches the
    children directly as well: a SIGTERM after a SIGINT changes nothing for them, while a second Ctrl-C still stops
    them at once. ``stopped_status(exit_code)`` tells whether a child's exit status is that of a stopped run.

    Once a signal came, torch's warning that it terminates the processes still running after one ended with a
    non-zero status is expected (they are ending too) and is not shown.
    """

    _SPAWN_LOGGER = "torch.multiprocessing.spawn"

    def __init__(self):
        super().__init__()
        self.signal_number = None
        self._previous = {}

    def filter(self, record):
        return self.signal_number is None or not record.getMessage().startswith("Terminating process")

    @staticmethod
    def stopped_status(exit_code):
        return exit_code in tuple(128 + number for number in STOP_SIGNALS)

    def _handle(self, signal_number, frame):
        if self.signal_number is None:
            self.signal_number = signal_number
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)

    def __enter__(self):
        self._previous = _install(self._handle)
        logging.getLogger(self._SPAWN_LOGGER).addFilter(self)
        return self

    def __exit__(self, *exc_info):
        logging.getLogger(self._SPAWN_LOGGER).removeFilter(self)
        _restore(self._previous)
        self._previous = {}


class StopOnRequestHook(HookBase):
    """Ends training at an iteration boundary once ``stop_request`` holds a signal on any process: saves a checkpoint
    there through ``checkpoint_hook`` (a :class:`ResumableCheckpointHook`; no second save when it has just saved this
    iteration) and raises :class:`TrainingInterrupted`. A request during the last iteration (or its save) stops the
    run once it is saved, before the final evaluation; after it, a new signal stops the final evaluation at once
    (KeyboardInterrupt in both cases, which ``run_training`` turns into :class:`TrainingFinishedInterrupted`).

    Register it after the checkpoint hook (and the hooks whose state that one saves), on every process: the
    decision is collective (an all-gather per iteration when there are several processes), so all of them stop after
    the same iteration and save together.
    """

    def __init__(self, stop_request, checkpoint_hook, command=None):
        self.stop_request = stop_request
        self.checkpoint_hook = checkpoint_hook
        self.command = command

    def _requested_signal(self):
        """The signal some process received (the lowest rank's), or None; the same on every process."""
        local = self.stop_request.signal_number
        if comm.get_world_size() == 1:
            return local
        return next((number for number in comm.all_gather(local) if number is not None), None)

    def interrupted(self, signal_number, where, saved_now=False):
        return TrainingInterrupted(signal_number, where, self.trainer.max_iter, self.checkpoint_hook.last_saved,
                                   saved_now=saved_now, command=self.command)

    def before_train(self):
        signal_number = self._requested_signal()
        if signal_number is not None:  # received while the model and data were being set up
            raise self.interrupted(signal_number, f"before iteration {self.trainer.start_iter}")

    def after_step(self):
        signal_number = self._requested_signal()
        if self.trainer.iter >= self.trainer.max_iter - 1:
            # the checkpoint hook (before this one) has saved the final state: what follows (the final evaluation)
            # loses nothing when stopped, a signal from now on stops it at once
            self.stop_request.stop_at_once()
            # also one that came since the check above, which nothing would read again (the processes decide
            # together: one more all-gather per run)
            signal_number = self._requested_signal()
            # one that came during the last iteration or its save stops the run here, the final evaluation undone: a
            # scheduler's SIGTERM ran the whole evaluation (its SIGKILL could come first) and the run exited 0
            if signal_number is not None:
                self.stop_request.last_signal = signal_number
                raise KeyboardInterrupt
            return
        if signal_number is None:
            return
        self.checkpoint_hook.save_current_iteration()
        raise self.interrupted(signal_number, f"after iteration {self.trainer.iter}", saved_now=True)
