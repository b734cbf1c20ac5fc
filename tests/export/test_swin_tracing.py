"""A Swin model's ONNX graph runs at every input size: detectron2's Swin traced as TraceableSwin returns exactly its
features, and the exported graph gives the PyTorch model's detections at sizes other than the traced one."""
import sys
import warnings

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import SwinTransformer

from conftest import REPO_ROOT, TINY_CONFIG

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

sys.path.insert(0, str(REPO_ROOT / "tests" / "tools"))
from export_test_utils import check_against_pytorch  # noqa: E402

from focus_detr.analysis.inputs import synthetic_inputs  # noqa: E402
from focus_detr.export import OnnxPredictor, export_onnx  # noqa: E402
from focus_detr.export.swin_tracing import TraceableSwin, traceable_backbone  # noqa: E402
from focus_detr.export.verification import compare_with_pytorch  # noqa: E402

# a narrow Swin with two blocks per stage: every stage has a shifted-window block
SMALL_SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7, out_indices=(1, 2, 3))
# window padding at every stage; odd sizes also pad the patch embedding and the patch merging
SIZES = [(64, 96), (61, 101), (224, 160), (33, 250)]


def _small_swin(**settings):
    torch.manual_seed(0)
    return SwinTransformer(**{**SMALL_SWIN, **settings}).eval()


@pytest.mark.parametrize("settings", [{}, {"ape": True, "pretrain_img_size": 64}, {"window_size": 12}])
def test_traceable_swin_returns_exactly_swins_features(settings):
    # window 12: Swin-B / Swin-L (384 pre-training); ape: the absolute position embedding, interpolated per size
    swin = _small_swin(**settings)
    traceable = TraceableSwin(swin)
    with torch.no_grad():
        for size in SIZES:
            images = torch.randn(2, 3, *size)
            expected, features = swin(images), traceable(images)
            assert features.keys() == expected.keys() == {"p1", "p2", "p3"}
            for name, feature in features.items():
                assert torch.equal(feature, expected[name]), (size, name)


def test_traced_swin_runs_at_other_sizes_than_the_traced_one():
    swin = _small_swin()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(TraceableSwin(swin), torch.randn(1, 3, 96, 128), strict=False)
        for size in SIZES:
            images = torch.randn(1, 3, *size)
            expected, features = swin(images), traced(images)
            for name, feature in features.items():
                torch.testing.assert_close(feature, expected[name], rtol=0, atol=1e-5, msg=f"{size} {name}")


def test_traced_swin_runs_at_other_batch_sizes_than_the_traced_one():
    # A batched graph is traced on two images; detectron2's window_reverse froze that batch size, and the graph's
    # features at batch 1 and 3 were scrambled (differences up to 1.0), with no error.
    swin = _small_swin()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(TraceableSwin(swin), torch.randn(2, 3, 96, 128), strict=False)
        for batch_size, size in ((1, (96, 128)), (3, (61, 101)), (5, (64, 96))):
            images = torch.randn(batch_size, 3, *size)
            expected, features = swin(images), traced(images)
            for name, feature in features.items():
                torch.testing.assert_close(feature, expected[name], rtol=0, atol=1e-5, msg=f"{batch_size} {name}")


def test_traceable_backbone_swaps_only_a_swin_and_puts_it_back():
    class Holder(torch.nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

    swin, other = _small_swin(), torch.nn.Conv2d(3, 3, 1)
    with traceable_backbone(Holder(other)) as holder:
        assert holder.backbone is other
    holder = Holder(swin)
    with pytest.raises(RuntimeError), traceable_backbone(holder):
        assert isinstance(holder.backbone, TraceableSwin) and holder.backbone.swin is swin
        raise RuntimeError("export failed")
    assert holder.backbone is swin


def test_swin_model_graph_matches_pytorch_at_other_sizes(tmp_path):
    # the graph ran only at its traced size before ("Non-zero status code returned while running Reshape")
    cfg = LazyConfig.load(str(TINY_CONFIG))
    cfg.model.backbone = L(SwinTransformer)(**SMALL_SWIN, drop_path_rate=0.0)
    cfg.model.neck.input_shapes = {name: ShapeSpec(channels=16 * 2**i) for i, name in enumerate(["p1", "p2", "p3"], 1)}
    cfg.model.neck.in_features = ["p1", "p2", "p3"]
    cfg.model.backbone_channels_last = False
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    path = str(tmp_path / "swin.onnx")
    export_onnx(model, path, synthetic_inputs(224, 288)[0]["image"])
    assert type(model.backbone) is SwinTransformer  # the model is left as it was
    check_against_pytorch(model, OnnxPredictor(path, num_threads=1), [(224, 288), (256, 320), (320, 224), (160, 192)])
    # a batched graph (traced on two images) at other batch sizes: 1 and 3 images got scrambled features before
    batched_path = str(tmp_path / "swin_batched.onnx")
    export_onnx(model, batched_path, synthetic_inputs(224, 288)[0]["image"], batched=True)
    predictor = OnnxPredictor(batched_path, num_threads=1, decisions=True)
    for sizes in ([(256, 320)], [(224, 288), (200, 256), (224, 288)]):
        items = [synthetic_inputs(height, width, seed=3 + i)[0] for i, (height, width) in enumerate(sizes)]
        line, ok = compare_with_pytorch(model, predictor, items)
        assert ok, line
