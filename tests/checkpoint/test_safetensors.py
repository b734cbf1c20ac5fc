"""safetensors weights: read and written by our own code, interchangeable with the ``safetensors`` package, refused
with one line for every malformed header, bit-identical outputs for the official fixture's weights, and written by
the trainer and the conversion tool on request."""
import json
import os
import sys

import pytest
import torch
from torch import nn

from conftest import REPO_ROOT, TINY_CONFIG, build_tiny_model
from focus_detr.checkpoint import FocusDETRCheckpointer, UnreadableCheckpointError, read_weights_file
from focus_detr.engine.checkpoint import save_weights
from hostile_files import write_malicious

sys.path.insert(0, str(REPO_ROOT / "tests" / "engine"))
from engine_test_utils import TOY_CONFIG, load_script, toy_dataset, train_net  # noqa: E402,F401 (fixtures)

WEIGHTS = {
    "backbone.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
    "backbone.num_batches_tracked": torch.tensor(7),
    "head.bias": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
    "head.mask": torch.tensor([True, False, True]),
    "head.empty": torch.zeros(0, 5, dtype=torch.float16),
}


def _same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def test_round_trip_keeps_every_dtype_shape_and_value(tmp_path):
    path = tmp_path / "w.safetensors"
    shared = dict(WEIGHTS, alias=WEIGHTS["backbone.weight"])  # tensors that share storage are written twice
    save_weights(path, shared)
    loaded = read_weights_file(str(path))
    assert loaded.format == "safetensors"
    _same(loaded.content, shared)
    assert set(os.listdir(tmp_path)) == {"w.safetensors"}  # written atomically, nothing left behind


def test_files_interchange_with_the_safetensors_package(tmp_path):
    package = pytest.importorskip("safetensors.torch")
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    save_weights(ours, WEIGHTS)
    _same(package.load_file(str(ours)), WEIGHTS)
    package.save_file(WEIGHTS, str(theirs), metadata={"format": "pt"})
    _same(read_weights_file(str(theirs)).content, WEIGHTS)


def test_checkpointer_loads_safetensors_of_any_extension_and_checks_keys(tmp_path):
    source = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    path = tmp_path / "weights.bin"  # the content decides the format, not the name
    save_weights(path.with_suffix(".safetensors"), source.state_dict())
    os.rename(path.with_suffix(".safetensors"), path)
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    FocusDETRCheckpointer(target).load(str(path))
    _same(target.state_dict(), source.state_dict())

    detector = {"transformer.weight": torch.zeros(1)}  # detector weights must fit the whole model
    save_weights(tmp_path / "detector.safetensors", detector)
    with pytest.raises(ValueError, match=r"detector.safetensors does not fit the model: .*missing keys"):
        FocusDETRCheckpointer(nn.Linear(1, 1)).load(str(tmp_path / "detector.safetensors"))


def test_weights_files_record_class_names_and_hostile_ones_are_one_line(tmp_path):
    # model_final.safetensors recorded no class names: a test set naming them otherwise went unchecked
    from focus_detr.checkpoint import CheckpointError, write_safetensors
    from focus_detr.engine.checkpoint_classes import checkpoint_classes

    source = nn.Linear(1, 1)
    for name in ("w.safetensors", "w.pth"):
        save_weights(tmp_path / name, source.state_dict(), thing_classes=["tree", "shrub"])
        extra = FocusDETRCheckpointer(nn.Linear(1, 1)).load(str(tmp_path / name))
        assert checkpoint_classes(extra, name) == ["tree", "shrub"]
    assert read_weights_file(str(tmp_path / "w.safetensors")).metadata == {
        "format": "pt", "thing_classes": '["tree", "shrub"]'}
    save_weights(tmp_path / "bare.safetensors", source.state_dict())  # as before: nothing recorded, nothing checked
    assert checkpoint_classes(FocusDETRCheckpointer(nn.Linear(1, 1)).load(str(tmp_path / "bare.safetensors")),
                              "bare.safetensors") is None

    for value, why in (("[tree", r"its safetensors __metadata__ entry thing_classes is not JSON \(JSONDecodeError"),
                       ('{"a": 1}', r"its thing_classes entry is a dict \(\{'a': 1\}\), not a list of class names"),
                       ('["a", 3]', r"its thing_classes entry is a list \(\['a', 3\]\), not a list of class names"),
                       ("[" * 100_000 + "]" * 100_000, r"its safetensors __metadata__ entry thing_classes is not JSON "
                                                       r"\(RecursionError")):
        path = tmp_path / "hostile.safetensors"
        with open(path, "wb") as f:
            write_safetensors(f, source.state_dict(), metadata={"thing_classes": value})
        with pytest.raises(CheckpointError, match=f"^cannot use checkpoint {path}: {why}") as raised:
            checkpoint_classes(FocusDETRCheckpointer(nn.Linear(1, 1)).load(str(path)), str(path))
        assert "\n" not in str(raised.value) and len(str(raised.value)) < len(str(path)) + 250


def _raw(header, data=b"", length=None):
    """A safetensors file's bytes: ``header`` (an object, or bytes as they are), ``data``, and a header length that
    is the real one unless ``length`` says otherwise."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(raw) if length is None else length).to_bytes(8, "little") + raw + data


def _tensor(dtype="F32", shape=(1,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _valid():
    return _raw({"a": _tensor(shape=(2,), offsets=(0, 8))}, bytes(8))


MALFORMED = {
    "data cut short": (_valid()[:-3], "past the 5 bytes after the header (the file is truncated"),
    "header cut short": (_valid()[:20], "the file is truncated: its safetensors header length is"),
    "header length beyond the file": (_raw(b"{}", length=10**6), "header length is 1000000 bytes but only 2 follow"),
    "huge header length": (_raw(b"{}", length=2**40), "more than the format's limit of 100000000"),
    "header not JSON": (_raw(b'{"a": '), "its safetensors header is not valid JSON"),
    "header not UTF-8": (_raw(b'{"\xff": 1}'), "not valid JSON (UnicodeDecodeError"),
    "deeply nested header": (_raw(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "not valid JSON"),
    "a name twice": (_raw(b'{"a": {}, "a": {}}'), "its safetensors header names 'a' twice"),
    "overlapping tensors": (
        _raw({"a": _tensor(offsets=(0, 4)), "b": _tensor(shape=(2,), offsets=(2, 10))}, bytes(10)),
        "tensors 'a' and 'b' overlap (data bytes 2..4)",
    ),
    "bytes of no tensor between two": (
        _raw({"a": _tensor(offsets=(0, 4)), "b": _tensor(offsets=(8, 12))}, bytes(12)),
        "data bytes 4..8 belong to no tensor",
    ),
    "bytes of no tensor at the end": (
        _raw({"a": _tensor()}, bytes(7)), "the last 3 bytes of the file belong to no tensor"
    ),
    "offsets out of range": (
        _raw({"a": _tensor(shape=(2**38,), offsets=(0, 2**40))}, bytes(4)),
        "tensor 'a' lies at data bytes 0..1099511627776, past the 4 bytes",
    ),
    "offsets reversed": (_raw({"a": _tensor(offsets=(4, 0))}, bytes(4)), "has data_offsets [4, 0], not [begin, end]"),
    "unknown dtype": (_raw({"a": _tensor(dtype="F128")}, bytes(4)), "tensor 'a' has dtype 'F128', not one of BOOL"),
    "size that does not fit the shape": (
        _raw({"a": _tensor(shape=(3,), offsets=(0, 8))}, bytes(8)),
        "tensor 'a' (F32, shape [3]) needs 12 bytes but its data_offsets [0, 8] span 8",
    ),
    "negative size": (_raw({"a": _tensor(shape=(-1,))}, bytes(4)), "tensor 'a' has shape [-1], not a list of sizes"),
    "non-tensor entry": (_raw({"note": "hello"}), "header entry 'note' is not a tensor (a str;"),
    "entry without offsets": (
        _raw({"a": {"dtype": "F32", "shape": [1]}}, bytes(4)),
        "header entry 'a' is not a tensor (fields ['dtype', 'shape'];",
    ),
    "metadata that is not strings": (_raw({"__metadata__": {"epoch": 3}}), "__metadata__ is not a map of strings"),
    "huge name": (_raw({"x" * 100_000: 1}), "header entry 'xxxx"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_get_one_line_naming_file_and_problem(tmp_path, case):
    content, why = MALFORMED[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(UnreadableCheckpointError) as raised:
        FocusDETRCheckpointer(nn.Linear(1, 1)).load(str(path))
    message = str(raised.value)
    assert message.startswith(f"cannot read checkpoint {path}: "), message
    assert why in message, message
    assert "\n" not in message and len(message) < len(str(path)) + 250, message


def test_code_named_safetensors_runs_no_code(tmp_path):
    marker = tmp_path / "marker"
    path = write_malicious(tmp_path / "evil.safetensors", marker)  # a pickle: the content decides how it is read
    with pytest.raises(UnreadableCheckpointError, match="it refers to posix.system, which is not allowed"):
        FocusDETRCheckpointer(nn.Linear(1, 1)).load(path)
    assert not marker.exists()


def test_writer_refuses_what_safetensors_cannot_hold_with_one_line(tmp_path):
    for weights, why in (
        ({"a": torch.zeros(2, dtype=torch.complex128)}, "cannot write 'a' to a safetensors file: torch.complex128"),
        ({"a": "text"}, "cannot write 'a' to a safetensors file: str has no safetensors dtype"),
        ({"__metadata__": torch.zeros(1)}, "cannot write '__metadata__' as a safetensors tensor name"),
    ):
        with pytest.raises(ValueError, match="^" + why) as raised:
            save_weights(tmp_path / "w.safetensors", weights)
        assert "\n" not in str(raised.value)
    assert os.listdir(tmp_path) == []  # no partial file


def _outputs(model, parity_fixture):
    item = parity_fixture["inputs"][0]
    with torch.no_grad():
        return model([{k: item[k] for k in ("image", "height", "width")}])[0]["instances"]


def test_official_fixture_weights_as_safetensors_give_bit_identical_outputs(parity_fixture, tmp_path):
    convert = load_script("tools/convert_detrex_checkpoint.py", "convert_detrex_checkpoint")
    official = tmp_path / "official.pth"
    torch.save({"model": parity_fixture["state_dict"]}, official)
    converted = tmp_path / "converted.safetensors"
    assert convert.main([str(official), str(converted), "--config-file", str(TINY_CONFIG)]) == 0
    # the official layout re-saved as safetensors as it is (aliased heads included): converted at load time
    official_safetensors = tmp_path / "official.safetensors"
    save_weights(official_safetensors, parity_fixture["state_dict"])

    model = build_tiny_model().eval()
    FocusDETRCheckpointer(model).load(str(official))
    expected_weights = {name: value.clone() for name, value in model.state_dict().items()}
    expected = _outputs(model, parity_fixture)
    for path in (official_safetensors, converted):
        for value in model.state_dict().values():
            value.zero_()  # a weight the file did not set would show
        FocusDETRCheckpointer(model).load(str(path))
        _same(model.state_dict(), expected_weights)
    ours = _outputs(model, parity_fixture)  # the same weights bit for bit: the same detections bit for bit
    assert torch.equal(ours.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert torch.equal(ours.scores, expected.scores) and torch.equal(ours.pred_classes, expected.pred_classes)


def test_trainer_writes_the_final_weights_as_safetensors_on_request(train_net, toy_dataset, tmp_path):
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}", "train.max_iter=2",
            "train.model_ema.enabled=True", "train.model_ema.decay=0.5", "train.checkpointer.save_safetensors=True"]
    train_net.main(train_net.default_argument_parser().parse_args(argv))
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    weights = read_weights_file(str(tmp_path / "model_final.safetensors")).content
    _same(weights, final["trainer"]["hooks"]["EMAHook"]["shadow"])  # the weights --eval-only would evaluate
    assert not torch.equal(weights["class_embed.weight"], final["model"]["class_embed.weight"])


def test_final_weights_that_cannot_be_written_leave_the_final_evaluation_run(train_net, toy_dataset, tmp_path,
                                                                             monkeypatch, capsys):
    # written before the final evaluation (which a stop may cut short), a full disk there had skipped the evaluation
    import focus_detr.engine.checkpoint as checkpoint_module
    from focus_detr.checkpoint import CheckpointError

    def full_disk(path, state_dict, thing_classes=None):
        raise CheckpointError(f"cannot save weights {path}: No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_weights", full_disk)
    argv = ["--config-file", TOY_CONFIG, f"train.output_dir={tmp_path}", "train.max_iter=2",
            "train.checkpointer.save_safetensors=True"]
    assert train_net.cli(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"error: cannot save weights {tmp_path / 'model_final.safetensors'}: No space left on device; "
                    f"training is complete and saved in {tmp_path / 'model_final.pth'}, and evaluated")
    assert (tmp_path / "eval_results.json").is_file() or "Evaluation results" in (tmp_path / "log.txt").read_text()
