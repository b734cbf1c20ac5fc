"""The folder an export writes (``tools/export_model.py --output DIR``): ``model.onnx`` and ``model.json`` (and the
graphs in the other MSDA forms, :data:`FORM_GRAPHS`) are written into a temporary folder inside DIR
(:data:`STAGE_PREFIX`), checked there, and only then moved into DIR, replacing an earlier export and the files written
about its graph (evaluation, benchmark, the other MSDA forms), which the new graph would otherwise appear to have.
``--evaluate`` writes its report and the evaluators' files likewise (:func:`install_evaluation`)."""
import contextlib
import os

from ..engine.interrupt import stop_signals_deferred
from ..layers.ms_deform_attn_onnx import MSDA_ONNX_FORMS
from ..partial_files import remove_abandoned

__all__ = ["EVALUATION_FILES", "FORM_GRAPHS", "GRAPH_FILES", "RESULTS_OF_A_GRAPH", "STAGE_PREFIX", "STAGE_SUFFIX",
           "check_graph_targets", "earlier_export", "install_evaluation", "install_export", "naming_final_file",
           "remove_abandoned_exports"]

GRAPH_FILES = ("model.onnx", "model.json")
# the graph in each MSDA form, for --compare-msda-forms' benchmark: staged with the main graph when asked for
FORM_GRAPHS = tuple(f"model_{form}.onnx" for form in MSDA_ONNX_FORMS)
# --evaluate's report and the evaluators' files (DIR/evaluation/{pytorch,onnx}/), staged and moved in together
EVALUATION_FILES = ("evaluation.json", "evaluation")
RESULTS_OF_A_GRAPH = (*EVALUATION_FILES, "benchmark.json", *FORM_GRAPHS)
# the temporary folder of an export or evaluation being written: .export.<random>.partial/{model.onnx, ...}
STAGE_PREFIX, STAGE_SUFFIX = ".export.", ".partial"


def check_graph_targets(folder):
    """ValueError (one line) naming ``folder``'s model.onnx or model.json when it is a folder: the new file cannot
    replace it. Checked before the export starts (seconds, not after the tracing) and again before anything moves."""
    for name in GRAPH_FILES:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder, where the export writes its {name}: move or remove it")


def remove_abandoned_exports(folder):
    """Removes what exports killed midway left in ``folder`` (their temporary folders, and the temporary files of
    exports that wrote into ``folder`` itself), keeping those of exports still running; returns the removed paths."""
    return (remove_abandoned(folder, STAGE_PREFIX, STAGE_SUFFIX, folders=True)
            + remove_abandoned(folder, ".model.", ".onnx.partial") + remove_abandoned(folder, ".model.json.", ".tmp"))


@contextlib.contextmanager
def naming_final_file(stage, name, folder):
    """Within the block, an OSError about a file in the temporary folder ``stage`` (a full disk's names none) is
    raised again naming ``folder``'s file ``name``, which the user knows: the temporary one is gone by then."""
    try:
        yield
    except OSError as error:
        inside = error.filename is None or os.path.abspath(os.fspath(error.filename)).startswith(
            os.path.abspath(stage) + os.sep)
        if error.errno is None or not inside:
            raise
        raise type(error)(error.errno, error.strerror, os.path.join(folder, name)) from error


def earlier_export(folder):
    """The names of what ``folder`` holds of an earlier export: its graph files and the results about its graph."""
    return [name for name in GRAPH_FILES + RESULTS_OF_A_GRAPH if os.path.lexists(os.path.join(folder, name))]


def _move(source, target, done):
    """``os.replace(source, target)``, recorded in ``done``; an OSError names ``target`` (the file the user knows,
    not a temporary one)."""
    try:
        os.replace(source, target)
    except OSError as error:
        raise type(error)(error.errno, error.strerror, target) from error
    done.append((source, target))


def _install(stage, folder, new, earlier, what):
    """Moves the names ``earlier`` of ``folder`` into ``stage/earlier``, where they go with the temporary folder
    ``stage`` (inside ``folder``, on its file system), then the names ``new`` of ``stage`` into ``folder``. Every step
    is a rename; when one fails, those done are undone, which leaves ``folder`` as it was, and the error names the file
    in ``folder``. A Ctrl-C or SIGTERM meanwhile takes effect once every file is moved (or every move undone).
    ``what``: what is moved, for the line that says a signal was held."""
    aside = os.path.join(stage, "earlier")
    os.mkdir(aside)
    done = []
    # An interruption right after a rename, before ``done`` records it, left that file in the temporary folder (gone
    # with it), and one while undoing stopped the undoing: DIR held parts of both exports.
    with stop_signals_deferred(f"{what} is moved into {folder}", "every file is moved in, or every move undone"):
        try:
            for name in earlier:
                _move(os.path.join(folder, name), os.path.join(aside, name), done)
            for name in new:
                _move(os.path.join(stage, name), os.path.join(folder, name), done)
        except BaseException:
            for source, target in reversed(done):
                os.replace(target, source)
            with contextlib.suppress(OSError):
                os.rmdir(aside)
            raise


def install_export(stage, folder):
    """Moves ``stage``'s model.onnx and model.json, and those of :data:`FORM_GRAPHS` it holds, into ``folder``
    (:func:`_install`), replacing the earlier export's files (:func:`earlier_export`). Returns the names of the
    earlier results that were removed (not those replaced by a new file)."""
    check_graph_targets(folder)
    new = GRAPH_FILES + tuple(name for name in FORM_GRAPHS if os.path.lexists(os.path.join(stage, name)))
    earlier = earlier_export(folder)
    _install(stage, folder, new, earlier, "the export")
    return [name for name in earlier if name not in new]


def install_evaluation(stage, folder):
    """Moves ``stage``'s evaluation.json and evaluation/ into ``folder`` (:func:`_install`), replacing both of an
    earlier evaluation: an evaluation.json never sits beside another evaluation's detections."""
    earlier = [name for name in EVALUATION_FILES if os.path.lexists(os.path.join(folder, name))]
    _install(stage, folder, EVALUATION_FILES, earlier, "the evaluation")
