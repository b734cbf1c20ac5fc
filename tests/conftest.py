"""Shared test helpers: the official parity fixture and small Focus-DETR models."""
import signal
from pathlib import Path

import pytest
import torch
from torch.torch_version import TorchVersion

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PATH = REPO_ROOT.parent / "shared" / "fixtures" / "focus_detr_tiny.pt"
TINY_CONFIG = REPO_ROOT / "configs" / "testing" / "focus_detr_tiny_fixture.py"


def pytest_configure(config):
    # scripts/gpu_check.sh runs `pytest -m gpu`: every test that needs a CUDA device carries this marker.
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one; selected by scripts/gpu_check.sh)")


# The process's thread count before any test ran.
SESSION_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Command-line entry points run in-process set the thread count (``--threads``), also from module fixtures; a
    later test training in this process would then round differently from a run in a subprocess (a resume that must
    end bit-identical to an uninterrupted run, say). Every test ends with the session's count back."""
    yield
    if torch.get_num_threads() != SESSION_THREADS:
        torch.set_num_threads(SESSION_THREADS)


# A foreground process's dispositions of the signals that stop training. Started under nohup, or in the background
# of a non-interactive shell, a process begins with SIGHUP, resp. SIGINT, ignored, which the code honours as a user
# would mean it (nohup); the tests of signal handling check what a terminal session gets.
FOREGROUND_SIGNAL_HANDLERS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
if hasattr(signal, "SIGHUP"):
    FOREGROUND_SIGNAL_HANDLERS[signal.SIGHUP] = signal.SIG_DFL


@pytest.fixture(autouse=True)
def _foreground_signal_handlers():
    """Every test starts with :data:`FOREGROUND_SIGNAL_HANDLERS`, whatever the suite was started with, and ends with
    the suite's own dispositions back."""
    started_with = {number: signal.signal(number, handler) for number, handler in FOREGROUND_SIGNAL_HANDLERS.items()}
    yield
    for number, handler in started_with.items():
        signal.signal(number, handler)


@pytest.fixture(scope="session")
def parity_fixture_path():
    """Path of the official tiny fixture; skips the test where the checkout has no shared/ folder beside it."""
    if not FIXTURE_PATH.exists():
        pytest.skip(f"parity fixture not found at {FIXTURE_PATH} (it lives in the project's shared/ folder)")
    return FIXTURE_PATH


@pytest.fixture(scope="session")
def parity_fixture(parity_fixture_path):
    """The official outputs of the tiny configuration (../shared/fixtures/focus_detr_tiny.pt)."""
    with torch.serialization.safe_globals([TorchVersion]):
        return torch.load(parity_fixture_path, map_location="cpu", weights_only=True)


# The export tests' shared fixtures are here, defined once for the session: imported from a helper module, each test
# module got its own copy and exported the same graph again; a tests/export/conftest.py would be imported as
# ``conftest`` too and shadow this one for every later ``from conftest import``.
@pytest.fixture(scope="session")
def export_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_model", REPO_ROOT / "tools" / "export_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fixture_checkpoint(parity_fixture, tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "official_tiny.pth"
    torch.save({"model": parity_fixture["state_dict"]}, path)
    return path


@pytest.fixture(scope="session")
def tiny_export(export_tool, fixture_checkpoint, tmp_path_factory):
    """The tiny configuration with the fixture's official weights, exported by the tool at 224x288. Shared by the
    session: read it, or copy it (``export_test_utils.copy_graph``) to change it."""
    output = tmp_path_factory.mktemp("tiny_onnx")
    failures = export_tool.main(export_tool.parse_args([
        "--config-file", str(TINY_CONFIG), "--output", str(output), "--sample-size", "224", "288", "--threads", "1",
        f"+train.init_checkpoint={fixture_checkpoint}",
    ]))
    assert failures == []
    return output


def build_tiny_model(**overrides):
    """The fixture's tiny configuration, with ``dotted.key=value`` style overrides given as a dict."""
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(str(TINY_CONFIG))
    cfg = LazyConfig.apply_overrides(cfg, [f"{k}={v!r}" for k, v in overrides.items()])
    return instantiate(cfg.model)


def image_input(image, height=None, width=None, boxes=None, classes=None):
    """A detectron2 model input dict for ``image`` ``(3, H, W)``: with ``height`` / ``width`` when given, and with
    ground truth when ``boxes`` (XYXY pixels) and ``classes`` are."""
    from detectron2.structures import Boxes, Instances

    item = {"image": image}
    if height is not None:
        item.update(height=height, width=width)
    if boxes is not None:
        item["instances"] = Instances(
            tuple(image.shape[-2:]), gt_boxes=Boxes(boxes.clone()), gt_classes=classes.clone()
        )
    return item


def fixture_inputs(parity_fixture, with_instances=False):
    """The parity fixture's images as model inputs, with their ground truth when ``with_instances``."""
    items = []
    for item in parity_fixture["inputs"]:
        inst = item["instances"]
        items.append(
            image_input(
                item["image"], item["height"], item["width"],
                inst["gt_boxes"] if with_instances else None, inst["gt_classes"] if with_instances else None,
            )
        )
    return items


@pytest.fixture
def tiny_model(parity_fixture):
    """The tiny configuration loaded with the official fixture weights, in eval mode."""
    from focus_detr.checkpoint import FocusDETRCheckpointer

    torch.manual_seed(0)
    model = build_tiny_model()
    FocusDETRCheckpointer(model).load_model_state(parity_fixture["state_dict"])
    return model.eval()


@pytest.fixture(scope="session")
def official_r50_shapes():
    """Key -> shape of the official R50 checkpoint (../shared/reference/official_r50_state_dict.tsv)."""
    path = REPO_ROOT.parent / "shared" / "reference" / "official_r50_state_dict.tsv"
    if not path.exists():
        pytest.skip(f"{path} not found (it lives in the project's shared/ folder)")
    shapes = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _ = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return shapes


def fixture_targets(parity_fixture):
    """The fixture's ground truth as the model's targets: xyxy / [w, h, w, h] -> cxcywh, image_size = tensor size."""
    from focus_detr.layers.box_ops import box_xyxy_to_cxcywh

    targets = []
    for item in parity_fixture["inputs"]:
        instances = item["instances"]
        h, w = instances["image_size"]
        boxes = instances["gt_boxes"] / torch.as_tensor([w, h, w, h], dtype=torch.float)
        targets.append({"labels": instances["gt_classes"], "boxes": box_xyxy_to_cxcywh(boxes), "image_size": (h, w)})
    return targets


class _StandInGraphs:
    """``_capture_graph`` without CUDA: replay reruns ``detect`` and copies into the captured outputs."""

    def __init__(self):
        self.captures = 0
        self.fail = None  # an exception the next capture raises
        self.corrupt = False  # replays write other values than eager

    def __call__(self, wrapper, detect):
        if self.fail is not None:
            raise self.fail
        self.captures += 1
        expected = detect()
        outputs = detect()

        def replay():
            from focus_detr.analysis.dispatch_counts import tensors_in

            for out, new in zip(tensors_in(outputs), tensors_in(detect())):
                out.copy_(new + 1 if self.corrupt and out.is_floating_point() else new)

        return replay, outputs, expected, []


@pytest.fixture
def stand_in_cuda_graphs(monkeypatch):
    """``focus_detr.engine.cuda_graphs`` on the CPU, with :class:`_StandInGraphs` for the graphs (its ``captures``,
    ``fail`` and ``corrupt`` attributes)."""
    from focus_detr.engine import cuda_graphs

    graphs = _StandInGraphs()
    monkeypatch.setattr(cuda_graphs, "graphs_available", lambda device: True)
    monkeypatch.setattr(cuda_graphs.CUDAGraphInference, "_capture_graph", lambda self, detect: graphs(self, detect))
    return graphs
