"""demo/demo.py over inputs that are not all images: it draws every image it can, names each other file on stderr
with why (one line each), and exits non-zero only when nothing was drawn. Folders stand for their files."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tools_test_utils import TINY_TOY_CONFIG, load_script, toy_dataset  # noqa: F401 (fixture)
from cli_output import shows_traceback  # noqa: E402 (tests/engine is on sys.path once tools_test_utils is imported)


@pytest.fixture(scope="module")
def demo():
    return load_script("demo/demo.py", "demo_inputs")


def _png(path, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def _mixed_folder(folder):
    """Two images among files that are not: text, empty, truncated, a subfolder. Returns {name: why} of the others."""
    folder.mkdir()
    _png(folder / "a.png", 0)
    _png(folder / "c.jpg", 1)
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    whole = (folder / "a.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])  # a valid header, half the pixels
    (folder / "sub").mkdir()
    return {
        "empty.png": "an empty file (0 bytes)",
        "notes.txt": "not an image (Pillow does not recognise its format)",
        "sub": "a folder inside an input folder (only the files of an input folder are read)",
        "truncated.png": "OSError: ",
    }


def _run(demo, inputs, output, capsys):
    from focus_detr.engine.cli import run_reporting_errors

    code = run_reporting_errors(demo.main, demo.parse_args(
        ["--config-file", TINY_TOY_CONFIG, "--input", *inputs, "--output", str(output)]
    ))
    captured = capsys.readouterr()
    assert not shows_traceback(captured.err)
    # the demo's own lines (in-process, stderr can also hold logging noise from earlier tests' closed streams)
    return code, captured.out, [line for line in captured.err.splitlines() if line.startswith(("skipped ", "error:"))]


def _skipped(err):
    """{file name: why} of the 'skipped <path>: <why>' lines."""
    lines = [line[len("skipped "):] for line in err if line.startswith("skipped ")]
    return dict((os.path.basename(path), why) for path, why in (line.split(": ", 1) for line in lines))


@pytest.mark.parametrize("as_glob", [False, True], ids=["folder", "folder/*"])
def test_every_image_is_drawn_and_every_other_file_named_once(demo, toy_dataset, tmp_path, capsys, as_glob):
    folder = tmp_path / "in"
    expected = _mixed_folder(folder)
    inputs = sorted(str(p) for p in folder.iterdir()) if as_glob else [str(folder)]
    if as_glob:  # a folder named on the command line is read, not skipped; a shell glob names the subfolder
        expected.pop("sub")
        (folder / "sub" / "b.png").write_bytes((folder / "a.png").read_bytes())
    code, out, err = _run(demo, inputs, tmp_path / "out", capsys)
    assert code == 0, err
    drawn = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert drawn == sorted(["a_detections.png", "c_detections.png"] + (["b_detections.png"] if as_glob else []))
    skipped = _skipped(err)
    assert skipped.keys() == expected.keys()
    for name, why in expected.items():
        assert skipped[name].startswith(why), (name, skipped[name])
    assert len(err) == len(expected)  # one line per skipped file, no error


def test_nothing_drawable_exits_2_before_building_the_model(demo, toy_dataset, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    code, _, err = _run(demo, [str(folder), str(tmp_path / "missing.png")], tmp_path / "out", capsys)
    assert code == 2
    assert err == [
        f"skipped {folder / 'notes.txt'}: not an image (Pillow does not recognise its format)",
        f"skipped {tmp_path / 'missing.png'}: not found",
        "error: no image to draw: all 2 inputs were skipped (each is named above)",
    ]
    assert not (tmp_path / "out").exists()  # stopped before the model and the output folder


def test_only_damaged_images_exit_2_naming_each(demo, toy_dataset, tmp_path, capsys):
    good = _png(tmp_path / "good.png")
    truncated = tmp_path / "truncated.png"
    whole = open(good, "rb").read()
    truncated.write_bytes(whole[: len(whole) // 2])
    code, _, err = _run(demo, [str(truncated)], tmp_path / "out", capsys)
    assert code == 2
    assert len(err) == 2 and err[0].startswith(f"skipped {truncated}: OSError: ")
    assert err[1] == "error: no image drawn: none of the 1 image files could be used (each is named above)"


def test_an_image_the_resize_cannot_take_is_skipped_and_the_others_drawn(demo, toy_dataset, tmp_path, capsys):
    # resized to 800 / 1333, a 1x3000 image has a side of 0 pixels: PIL's "height and width must be > 0" ended the
    # whole run, naming no file
    thin = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 3000, 3), dtype=np.uint8)).save(thin)
    good = _png(tmp_path / "good.png")
    code, out, err = _run(demo, [str(thin), good], tmp_path / "out", capsys)
    assert code == 0
    assert err == [f"skipped {thin}: image (1x3000 pixels) cannot be resized by the config's test-time resize: "
                   "height and width must be > 0 (a side resized to 0 pixels: the image is too elongated, or a size of "
                   "dataloader.test.mapper's augmentation is 0)"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_detections.png"]


def test_an_output_where_a_picture_would_overwrite_an_input_is_refused_before_anything_runs(demo, toy_dataset,
                                                                                          tmp_path, capsys):
    # the user's own a_detections.png was overwritten by the picture of a.png
    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder / "a.png", 0)
    theirs = _png(folder / "a_detections.png", 1)
    before = open(theirs, "rb").read()
    code, _, err = _run(demo, [str(folder)], folder, capsys)
    assert (code, err) == (2, [f"error: --output {folder}: the picture of {folder / 'a.png'} would overwrite the input "
                               f"{theirs}; choose another --output folder"])
    assert open(theirs, "rb").read() == before and sorted(p.name for p in folder.iterdir()) == [
        "a.png", "a_detections.png"]
    # the same folder without such a name is fine: the pictures go next to the images
    (folder / "a_detections.png").unlink()
    code, _, err = _run(demo, [str(folder / "a.png")], folder, capsys)
    assert (code, err) == (0, [])


def test_an_input_that_is_no_image_is_not_overwritten_by_a_picture_either(demo, toy_dataset, tmp_path, capsys):
    # it was skipped as no image, then replaced by the picture of a.png
    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder / "a.png", 0)
    (folder / "a_detections.png").write_text("my notes")
    code, _, err = _run(demo, [str(folder)], folder, capsys)
    assert code == 2 and err[-1] == (
        f"error: --output {folder}: the picture of {folder / 'a.png'} would overwrite the input "
        f"{folder / 'a_detections.png'}; choose another --output folder")
    assert (folder / "a_detections.png").read_text() == "my notes"


def test_a_picture_that_cannot_be_written_is_named_with_why_and_the_others_are_drawn(demo, toy_dataset, tmp_path,
                                                                                  capsys):
    # one name too long once "_detections.png" is added ended the run, "cannot write <path>" without why
    folder = tmp_path / "in"
    folder.mkdir()
    long_name = _png(folder / ("a" * 245 + ".png"), 0)
    _png(folder / "b.png", 1)
    code, out, err = _run(demo, [str(folder)], tmp_path / "out", capsys)
    assert code == 0
    assert err == [f"skipped {long_name}: cannot write {tmp_path / 'out' / ('a' * 245 + '_detections.png')}: File name "
                   "too long"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b_detections.png"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full to fill the disk with")
def test_a_picture_cut_short_by_a_full_disk_is_not_left_under_its_name(demo, toy_dataset, tmp_path, capsys):
    # a 1 MiB disk kept the first megabyte of a 2.2 MB picture as <name>_detections.png
    output = tmp_path / "out"
    output.mkdir()
    picture = output / "a_detections.png"
    picture.symlink_to("/dev/full")  # every write there fails with "No space left on device"
    code, _, err = _run(demo, [_png(tmp_path / "a.png", 0), _png(tmp_path / "b.png", 1)], output, capsys)
    assert code == 0 and err == [f"skipped {tmp_path / 'a.png'}: cannot write {picture}: No space left on device"]
    assert sorted(p.name for p in output.iterdir()) == ["b_detections.png"]


def test_a_picture_that_cannot_be_opened_is_left_as_it_was(demo, toy_dataset, tmp_path, capsys, monkeypatch):
    # the clean-up of a picture cut short deleted an earlier picture the demo could not open (read-only)
    output = tmp_path / "out"
    output.mkdir()
    earlier = output / "a_detections.png"
    earlier.write_bytes(b"an earlier picture")

    def read_only(path, *args, **kwargs):
        if str(path) == str(earlier):
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(demo, "open", read_only, raising=False)
    code, _, err = _run(demo, [_png(tmp_path / "a.png", 0)], output, capsys)
    assert err[0] == f"skipped {tmp_path / 'a.png'}: cannot write {earlier}: Permission denied"
    assert earlier.read_bytes() == b"an earlier picture"


def test_inputs_with_one_name_do_not_overwrite_each_other(demo, toy_dataset, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    inputs = [_png(tmp_path / "x" / "im.png", 0), _png(tmp_path / "y" / "im.png", 1), _png(tmp_path / "x" / "im.jpg", 2)]
    code, out, err = _run(demo, inputs, tmp_path / "out", capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "im-2_detections.png", "im-3_detections.png", "im_detections.png"
    ]
    assert [line.split(": ")[0] for line in out.splitlines() if line.endswith(".png")] == inputs


def test_a_quoted_glob_is_expanded_and_one_matching_nothing_is_one_line(demo, toy_dataset, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder / "b.png", 0)
    _png(folder / "a.png", 1)
    (folder / "notes.txt").write_text("not an image")
    code, out, err = _run(demo, [str(folder / "*.png")], tmp_path / "out", capsys)
    assert (code, err) == (0, [])
    assert [line.split(": ")[0] for line in out.splitlines()] == [str(folder / "a.png"), str(folder / "b.png")]
    code, _, err = _run(demo, [str(folder / "a.png"), str(folder / "*.gif")], tmp_path / "out2", capsys)
    assert (code, err) == (2, [f"error: no file matches {str(folder / '*.gif')!r}"])
    assert not (tmp_path / "out2").exists()


def test_an_existing_file_as_output_for_images_is_one_line_naming_it(demo, toy_dataset, tmp_path, capsys):
    output = tmp_path / "model.onnx"
    output.write_bytes(b"not a folder")
    code, _, err = _run(demo, [_png(tmp_path / "a.png")], output, capsys)
    # os.makedirs said only "cannot access <file>: File exists"
    assert (code, err) == (2, [f"error: --output {output} is a file; for image inputs it must be a folder (the "
                               "pictures are written into it)"])


def test_an_output_folder_that_cannot_be_written_is_one_line_before_the_model_runs(demo, toy_dataset, tmp_path,
                                                                                    capsys, monkeypatch):
    # the model ran on every image, then each picture was "skipped ...: Read-only file system", one line per image
    (tmp_path / "taken").write_text("a file where the folder would go")
    output = tmp_path / "taken" / "pictures"
    monkeypatch.setattr(demo, "FocusDETRPredictor", lambda *args, **kwargs: pytest.fail("the model was built"))
    code, _, err = _run(demo, [_png(tmp_path / "a.png")], output, capsys)
    assert (code, err) == (2, [f"error: --output {output} cannot be created: {tmp_path / 'taken'} is a file, not a "
                               "folder"])
    code, _, err = _run(demo, [_png(tmp_path / "a.png")], "", capsys)  # makedirs("") after the model ran
    assert (code, err) == (2, ["error: --output is empty: name the folder for the pictures"])


def test_a_backend_the_environment_asks_for_that_cannot_run_is_one_line_not_each_images_problem(
        demo, toy_dataset, tmp_path, capsys, monkeypatch):
    # FOCUS_DETR_MSDA_BACKEND=cuda on a CPU machine: "skipped <image>: MSDA backend 'cuda' ..." for every image, then
    # "no image drawn: none of the 3 image files could be used"
    monkeypatch.setenv("FOCUS_DETR_MSDA_BACKEND", "cuda" if not torch.cuda.is_available() else "banana")
    code, _, err = _run(demo, [_png(tmp_path / "a.png", 0), _png(tmp_path / "b.png", 1)], tmp_path / "out", capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: MSDA backend ")
    assert "FOCUS_DETR_MSDA_BACKEND" in err[0]


def test_a_cuda_device_without_a_gpu_names_the_device_flag(demo, toy_dataset, tmp_path, capsys, monkeypatch):
    import torch

    from focus_detr.engine.cli import run_reporting_errors

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    argv = ["--config-file", TINY_TOY_CONFIG, "--input", _png(tmp_path / "a.png"), "--output", str(tmp_path / "out"),
            "--device", "cuda"]
    assert run_reporting_errors(demo.main, demo.parse_args(argv)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    # not "train.device is 'cuda'": the user gave --device, not the config key
    assert errors == ["error: --device is 'cuda' but no CUDA GPU is visible; use --device cpu"]


def test_an_animated_image_is_drawn_from_its_first_frame_which_is_said(demo, toy_dataset, tmp_path, capsys):
    frames = [Image.fromarray(np.full((24, 32, 3), 60 * i, dtype=np.uint8)) for i in range(3)]
    animated = tmp_path / "clip.gif"
    frames[0].save(animated, save_all=True, append_images=frames[1:], duration=100)
    still = _png(tmp_path / "still.png")
    from focus_detr.engine.cli import run_reporting_errors

    code = run_reporting_errors(demo.main, demo.parse_args(
        ["--config-file", TINY_TOY_CONFIG, "--input", str(animated), still, "--output", str(tmp_path / "out")]
    ))
    err = capsys.readouterr().err
    assert code == 0 and not shows_traceback(err)
    assert [line for line in err.splitlines() if line.startswith("note:")] == [
        f"note: {animated} is animated (3 frames): its first frame is drawn (--video-input draws every frame)"
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip_detections.png", "still_detections.png"]


def test_labels_of_a_test_set_that_names_the_classes_otherwise_are_not_drawn(demo, toy_dataset, tmp_path, capsys):
    # the model's "box" was labelled as the test set's class of the same index without a word
    from toy_detector import register_edited_toy_dataset
    from focus_detr.engine.cli import run_reporting_errors

    def rename_class(coco):
        coco["categories"] = [{"id": 1, "name": "crate"}]

    register_edited_toy_dataset("focus_detr_toy_demo_crates", str(tmp_path / "crates"), rename_class)
    code = run_reporting_errors(demo.main, demo.parse_args(
        ["--config-file", TINY_TOY_CONFIG, "--input", _png(tmp_path / "a.png"), "--output", str(tmp_path / "out"),
         "dataloader.test.dataset.names=focus_detr_toy_demo_crates"]
    ))
    err = capsys.readouterr().err
    assert code == 0 and not shows_traceback(err)
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: no class names for the labels, boxes are numbered by class instead: the training set focus_detr_toy "
        "and the test set focus_detr_toy_demo_crates name their classes differently: class 0 is 'box' in "
        "focus_detr_toy and 'crate' in focus_detr_toy_demo_crates; the model's classes would be taken for the test "
        "set's classes of the same index (give both jsons the same categories with the same ids: classes are "
        "numbered in the order of their ids)"
    ]


def test_a_large_image_shrunk_by_the_test_resize_and_a_full_set_of_detections_are_noted(demo, toy_dataset, tmp_path,
                                                                                         capsys):
    # a 960 x 1280 photo drawn by a model tested at 48 px is a thumbnail to it; at a threshold this low every returned
    # detection is drawn, so the image may hold more objects than the model returns (at 0, drawing all is asked for)
    large = tmp_path / "large.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (960, 1280, 3), dtype=np.uint8)).save(large)
    small = _png(tmp_path / "small.png")
    from focus_detr.engine.cli import run_reporting_errors

    code = run_reporting_errors(demo.main, demo.parse_args(
        ["--config-file", TINY_TOY_CONFIG, "--input", str(large), small, "--output", str(tmp_path / "out"),
         "--confidence-threshold", "1e-9"]
    ))
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert code == 0 and not shows_traceback(err)
    shrunk = [note for note in notes if "shrinks it" in note]
    assert shrunk == [f"note: {large}: the config's test-time resize (evaluation's) shrinks it 20.0x: "
                      "small objects may be missed; cut a large image into tiles of the training images' size"]
    full = [note for note in notes if "detections the model returns score >= 1e-09" in note]
    assert len(full) == 2 and full[0].startswith(f"note: {large}: all ")


def test_resize_scale_follows_a_fixed_shortest_edge_resize_only():
    from detectron2.data import transforms as T

    from focus_detr.engine.predictor import resize_scale

    fixed = T.AugmentationList([T.ResizeShortestEdge(800, 1333)])
    assert resize_scale(fixed, 3000, 4000) == pytest.approx(800 / 3000, abs=1e-3)
    assert resize_scale(fixed, 1000, 8000) == pytest.approx(1333 / 8000, abs=1e-3)  # the long side caps it
    assert resize_scale(fixed, 400, 600) == pytest.approx(2.0)
    assert resize_scale(T.AugmentationList([T.ResizeShortestEdge((640, 800), 1333, "choice")]), 600, 800) is None
    assert resize_scale(T.AugmentationList([T.RandomFlip(), T.ResizeShortestEdge(800, 1333)]), 600, 800) is None
