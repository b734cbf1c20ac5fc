"""Every command imports ``focus_detr.entry_point`` first: no FutureWarning from fvcore's and detectron2's imports,
and a Ctrl-C that nothing handles (e.g. during the seconds of imports) is one line and exit status 130; a SIGTERM or
SIGHUP one line and 143 / 129."""
import ast
import glob
import os
import signal
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# compare_revision.py imports another revision's package; gpu_report.py imports neither torch nor detectron2
COMMANDS = ["train_net.py", "demo/demo.py", *sorted(glob.glob("tools/*.py", root_dir=REPO_ROOT)),
            "scripts/selection_quality_cost.py", "scripts/side_by_side_memory.py"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_imports_the_entry_point_before_anything_else(command):
    with open(os.path.join(REPO_ROOT, command)) as source:
        tree = ast.parse(source.read())
    first_import = next(node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))
    assert isinstance(first_import, ast.Import) and first_import.names[0].name == "focus_detr.entry_point"


def _python(*args, **kwargs):
    return subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def test_a_command_prints_no_import_time_future_warning():
    process = _python("train_net.py", "--help")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0 and "usage:" in out
    assert "FutureWarning" not in err and err.strip() == ""


def test_a_command_on_a_cpu_machine_says_nothing_of_a_missing_cuda_runtime():
    # every train_net.py run printed torch's "No CUDA runtime is found, using CUDA_HOME=..." where a CUDA toolkit is
    # installed without a GPU (detectron2's environment report imports the extension builder); silent elsewhere
    process = _python("-c", "import focus_detr.entry_point, torch.utils.cpp_extension")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0 and "No CUDA runtime" not in err


def test_an_unhandled_ctrl_c_is_one_line_and_status_130():
    process = _python("-c", "import focus_detr.entry_point, time; print('ready', flush=True); time.sleep(60)")
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert err == "interrupted\n"
    assert process.returncode == -signal.SIGINT  # as Python ends on an unhandled KeyboardInterrupt: 130 in a shell


@pytest.mark.parametrize("name, status", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_or_sighup_before_the_command_s_own_handlers_is_one_line_and_its_status(name, status):
    # it ended the command silently (a scheduler's SIGTERM, a closed terminal during the seconds of the imports)
    process = _python("-c", "import focus_detr.entry_point, sys, time; print('printed'); "  # not flushed yet
                            "print('ready', file=sys.stderr, flush=True); time.sleep(60)")
    assert process.stderr.readline() == "ready\n"
    process.send_signal(getattr(signal, name))
    out, err = process.communicate(timeout=60)
    assert (out, err, process.returncode) == ("printed\n", f"interrupted by {name}\n", status)


@pytest.mark.parametrize("stderr", ["closed", "broken pipe"])
def test_sigterm_before_the_command_s_own_handlers_ends_it_without_a_stderr_too(stderr):
    # the handler's write raised (EBADF, EPIPE) before its exit: the command went on as if nothing had come
    script = ("import focus_detr.entry_point, os, signal, sys, time; print('ready', flush=True); "
              "os.kill(os.getpid(), signal.SIGTERM); time.sleep(1); print('survived', flush=True)")
    if stderr == "closed":  # 2>&-
        process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: os.close(2))
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)  # nobody reads: a write raises BrokenPipeError
        process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                   stderr=write_end, text=True)
        os.close(write_end)
    out, _ = process.communicate(timeout=120)
    assert (out, process.returncode) == ("ready\n", 143)


def test_the_command_s_own_handlers_take_over_from_the_entry_point_s():
    # run_reporting_errors raises SIGTERM as an interruption, so that the work's clean-up runs before its line
    process = _python("-c", "import focus_detr.entry_point, os, signal, sys, time\n"
                            "from focus_detr.engine.cli import run_reporting_errors\n"
                            "def work():\n    try:\n        os.kill(os.getpid(), signal.SIGTERM); time.sleep(60)\n"
                            "    finally:\n        print('cleaned up', flush=True)\n"
                            "sys.exit(run_reporting_errors(work))")
    out, err = process.communicate(timeout=120)
    assert (out, err, process.returncode) == ("cleaned up\n", "interrupted by SIGTERM\n", 143)


def test_after_the_command_s_own_handling_sigterm_has_its_default_action_again():
    # the entry point's handler came back and stayed until the exit, where no Python handler runs while a driver's
    # teardown hangs in C code: a SIGTERM no longer ended such a process
    process = _python("-c", "import focus_detr.entry_point, signal\n"
                            "from focus_detr.engine.cli import run_reporting_errors\n"
                            "run_reporting_errors(lambda: None)\n"
                            "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)")
    out, err = process.communicate(timeout=120)
    assert (out, process.returncode) == ("True\n", 0), err


# Runs a command, sending itself SIGTERM at its first import of a module not loaded yet once focus_detr.entry_point
# has installed its handler: in the middle of the command's imports (torch's, detectron2's, ...).
_SIGTERM_DURING_IMPORTS = """
import os, runpy, signal, sys
class SigtermAtTheNextImport:
    def find_spec(self, name, path=None, target=None):
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGTERM)
        return None
sys.meta_path.insert(0, SigtermAtTheNextImport())
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_sigterm_during_its_imports_with_one_line(command):
    process = _python("-c", _SIGTERM_DURING_IMPORTS, command, "--help")
    out, err = process.communicate(timeout=120)
    assert (err, process.returncode) == ("interrupted by SIGTERM\n", 143)


# Runs a command whose next import, once focus_detr.entry_point is in place, meets a Ctrl-C that the imported code
# swallows, as a C extension's initialisation can (scipy's, importing numpy: an unrelated RecursionError followed).
_CTRL_C_SWALLOWED_DURING_IMPORTS = """
import os, runpy, signal, sys
class SwallowedCtrlCAtTheNextImport:
    def find_spec(self, name, path=None, target=None):
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            sys.meta_path.remove(self)
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                pass
        return None
sys.meta_path.insert(0, SwallowedCtrlCAtTheNextImport())
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("command", ["train_net.py", "tools/export_model.py"])
def test_a_ctrl_c_during_the_command_s_imports_ends_it_in_one_line_even_if_swallowed(command):
    # the command went on as if never interrupted (here: printed its help), or ended in an unrelated traceback
    process = _python("-c", _CTRL_C_SWALLOWED_DURING_IMPORTS, command, "--help")
    out, err = process.communicate(timeout=120)
    assert (out, err, process.returncode) == ("", "interrupted\n", -signal.SIGINT)


def test_a_ctrl_c_outside_the_command_s_imports_is_a_keyboard_interrupt_it_can_handle(tmp_path):
    # in the command's own code, and in an import that a function of it makes later (cleaning up is its to do)
    script = tmp_path / "command.py"
    script.write_text("import focus_detr.entry_point\nimport os, signal, sys\n\n\n"
                      "class CtrlCAtTheNextImport:\n    def find_spec(self, name, path=None, target=None):\n"
                      "        sys.meta_path.remove(self)\n        os.kill(os.getpid(), signal.SIGINT)\n\n\n"
                      "def main():\n    try:\n        os.kill(os.getpid(), signal.SIGINT)\n"
                      "    except KeyboardInterrupt:\n        print('handled')\n"
                      "    sys.meta_path.insert(0, CtrlCAtTheNextImport())\n"
                      "    try:\n        import fractions\n    except KeyboardInterrupt:\n"
                      "        print('handled in an import')\n\n\n"
                      "main()\n")
    process = _python(str(script))
    out, err = process.communicate(timeout=120)
    assert (out, process.returncode) == ("handled\nhandled in an import\n", 0), err


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
def test_a_signal_ignored_at_start_stays_ignored():
    # nohup: the command must outlive its terminal
    process = _python("-c", "import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
                            "import focus_detr.entry_point; assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN; "
                            "assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err


def test_a_process_started_by_multiprocessing_keeps_the_default_sigterm(tmp_path):
    # a training process of --num-gpus N imports train_net.py again: the launching process reports its stop, which
    # one line from each process would repeat
    script = tmp_path / "command.py"
    script.write_text("import focus_detr.entry_point\nimport multiprocessing, signal\n\n\n"
                      "def report():\n    print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)\n\n\n"
                      "if __name__ == '__main__':\n    report()\n"
                      "    process = multiprocessing.get_context('spawn').Process(target=report)\n"
                      "    process.start()\n    process.join()\n")
    process = _python(str(script))
    out, err = process.communicate(timeout=120)
    assert (out, process.returncode) == ("False\nTrue\n", 0), err


def test_other_uncaught_errors_keep_their_traceback():
    process = _python("-c", "import focus_detr.entry_point\nraise RuntimeError('a bug')")
    _, err = process.communicate(timeout=60)
    assert "Traceback (most recent call last)" in err and "RuntimeError: a bug" in err and process.returncode == 1


def test_importing_the_package_leaves_the_process_settings_alone():
    process = _python("-c", "import sys, warnings; hook = sys.excepthook; "
                            "import focus_detr, focus_detr.layers, focus_detr.engine; "
                            "assert sys.excepthook is hook; "
                            "assert not [f for f in warnings.filters if f[1] and f[1].search('`torch.jit.script`')]")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "FutureWarning: `torch.jit.script` is deprecated" in err  # still the user's to see


def test_output_whose_reader_is_gone_is_dropped_and_the_command_goes_on(tmp_path):
    # `train_net.py ... | head -1`: each logging call printed a BrokenPipeError traceback, and the next print()
    # (pycocotools' in an evaluation) ended the work with "error: [Errno 32] Broken pipe"
    done = tmp_path / "done"
    script = ("import focus_detr.entry_point, logging, sys\n"
              "log = logging.getLogger('x'); log.addHandler(logging.StreamHandler(sys.stdout))\n"
              "print('first', flush=True); sys.stdin.readline()\n"  # the reader closes its end meanwhile
              "for i in range(2000):\n    log.warning('line %d', i); print('x' * 100)\n"
              "sys.stdout.writelines(['y\\n'] * 100); sys.stdout.flush()\n"
              f"open({str(done)!r}, 'w').close()\n")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "first\n"
    process.stdout.close()
    process.stdin.write("go\n")
    process.stdin.close()
    err = process.stderr.read()
    assert process.wait(timeout=120) == 0 and err == "" and done.exists()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="no pseudo-terminals here")
def test_output_to_a_closed_terminal_is_dropped_and_the_command_goes_on(tmp_path):
    # a closed terminal answers a write with EIO, not a broken pipe: "OSError: [Errno 5] Input/output error"
    done = tmp_path / "done"
    script = ("import focus_detr.entry_point, sys, time\nprint('first', flush=True); time.sleep(1)\n"
              f"for i in range(200):\n    print('x' * 100)\nsys.stdout.flush(); open({str(done)!r}, 'w').close()\n")
    terminal, terminal_end = os.openpty()
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=terminal_end,
                               stderr=subprocess.PIPE, text=True)
    os.close(terminal_end)
    assert os.read(terminal, 100).startswith(b"first")
    os.close(terminal)  # the terminal goes away
    err = process.stderr.read()
    assert process.wait(timeout=120) == 0 and err == "" and done.exists()
