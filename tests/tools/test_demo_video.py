"""demo/demo.py --video-input: an annotated video with the input's frame count and frame rate, the measured frames
per second, and one line (exit status 2) for a video that cannot be read or an output it cannot write."""
import cv2
import numpy as np
import pytest

from tools_test_utils import TINY_TOY_CONFIG, load_script, toy_dataset  # noqa: F401 (fixture)
from cli_output import shows_traceback  # noqa: E402 (tests/engine is on sys.path once tools_test_utils is imported)

FRAMES, FPS, SIZE = 5, 7.0, (40, 30)  # width, height


@pytest.fixture(scope="module")
def demo():
    return load_script("demo/demo.py", "demo_video")


@pytest.fixture
def video(tmp_path):
    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    rng = np.random.default_rng(0)
    for _ in range(FRAMES):
        writer.write(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))
    writer.release()
    return path


def _run(demo, argv, capsys):
    from focus_detr.engine.cli import run_reporting_errors

    code = run_reporting_errors(demo.main, demo.parse_args(["--config-file", TINY_TOY_CONFIG, *argv]))
    captured = capsys.readouterr()
    assert not shows_traceback(captured.err)
    return code, captured.out, [line for line in captured.err.splitlines() if line.startswith(("error:", "warning:"))]


def _frames_and_fps(path):
    capture = cv2.VideoCapture(path)
    count = 0
    while capture.read()[0]:
        count += 1
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return count, fps


@pytest.mark.parametrize("output", ["out/annotated.mp4", "out"])
def test_annotated_video_keeps_frame_count_and_rate(demo, toy_dataset, video, tmp_path, capsys, output):
    code, out, err = _run(demo, ["--video-input", video, "--output", str(tmp_path / output),
                                 "--confidence-threshold", "0.0"], capsys)
    assert code == 0, err
    written = str(tmp_path / output) if output.endswith(".mp4") else str(tmp_path / "out" / "clip_detections.mp4")
    assert _frames_and_fps(written) == (FRAMES, FPS)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [written.rsplit("/", 1)[1]]  # no partial file
    frame = cv2.VideoCapture(written).read()[1]
    assert frame.shape[1] == SIZE[0] * 24 and frame.shape[0] > SIZE[1] * 24  # scaled up to 720 px, legend under it
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"{video}: {FRAMES} frames at 7 fps -> {written}; ") and "frames per second" in line


def test_confidence_threshold_applies_to_video_frames(demo, toy_dataset, video, tmp_path, capsys):
    """The toy model's scores are low: at threshold 1 no box is drawn, at 0 every one; the frames differ."""
    frames = {}
    for threshold in ("0.0", "1.0"):
        output = str(tmp_path / f"t{threshold}.avi")  # MJPG: each frame coded alone
        assert _run(demo, ["--video-input", video, "--output", output, "--confidence-threshold", threshold],
                    capsys)[0] == 0
        frames[threshold] = cv2.VideoCapture(output).read()[1]
    legend = frames["0.0"].shape[0] - SIZE[1] * 24
    assert np.abs(frames["0.0"][:-legend].astype(int) - frames["1.0"][:-legend]).max() > 100  # boxes drawn at 0


@pytest.mark.parametrize("content, why", [
    (b"", "an empty file (0 bytes)"),
    (b"not a video at all" * 10, "OpenCV cannot decode it (not a video, or damaged)"),
])
def test_a_broken_video_is_one_line_and_exit_2(demo, toy_dataset, tmp_path, capsys, content, why):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(content)
    code, _, err = _run(demo, ["--video-input", str(broken), "--output", str(tmp_path / "out.mp4")], capsys)
    assert code == 2
    assert err == [f"error: cannot read video {broken}: {why}"]
    assert not (tmp_path / "out.mp4").exists()


def test_a_cut_avi_is_one_line_without_opencv_s_own_complaint(tmp_path, capfd):
    # OpenCV's AVI reader printed "Unexpected element. Expected: LIST. Got: ..." to the process's stderr first
    from focus_detr.data.video_io import open_video

    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    for index in range(FRAMES):
        writer.write(np.random.default_rng(index).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))
    writer.release()
    cut.write_bytes(whole.read_bytes()[:4000])
    capfd.readouterr()
    with pytest.raises(ValueError, match="OpenCV cannot decode it"):
        open_video(str(cut))
    assert capfd.readouterr().err == ""


def test_video_argument_errors_are_one_line(demo, toy_dataset, video, tmp_path, capsys):
    cases = [
        (["--video-input", str(tmp_path / "missing.mp4"), "--output", str(tmp_path / "o.mp4")],
         f"error: video file not found: {tmp_path / 'missing.mp4'}"),
        (["--video-input", video, "--output", str(tmp_path / "o.gif")],
         f"error: --output for a video must be a folder or end in .mp4 or .avi, got {tmp_path / 'o.gif'}"),
        (["--video-input", video, "--output", video], f"error: --output {video} is the input video; name another file"),
        # through a link to its folder: the input was replaced by the annotated video
        (["--video-input", video, "--output", str(tmp_path / "link" / "clip.mp4")],
         f"error: --output {tmp_path / 'link' / 'clip.mp4'} is the input video; name another file"),
        (["--video-input", video, "--output", str(tmp_path / "afile")],
         f"error: --output {tmp_path / 'afile'} is a file; for a video name a .mp4 or .avi file, or a folder"),
        (["--video-input", video, "--output", str(tmp_path / "afile" / "o.mp4")],
         f"error: --output {tmp_path / 'afile' / 'o.mp4'}: {tmp_path / 'afile'} is a file, not a folder"),
        (["--video-input", video, "--output", str(tmp_path / "o.mp4"), "--show-tokens"],
         "error: --show-tokens draws pictures of images; it cannot be used with --video-input"),
        (["--video-input", video, "--output", str(tmp_path / "o.mp4"), "--cuda-graphs", "--onnx", "m.onnx"],
         "error: --cuda-graphs replays the PyTorch model on a GPU; it cannot be used with --onnx"),
    ]
    (tmp_path / "link").symlink_to(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    before = open(video, "rb").read()
    for argv, expected in cases:
        code, _, err = _run(demo, argv, capsys)
        assert (code, err) == (2, [expected])
    assert open(video, "rb").read() == before


def test_a_frame_rate_the_output_cannot_keep_is_one_line_before_any_frame(demo, toy_dataset, tmp_path, capsys):
    # OpenCV's MJPG writer stores 2000 fps as 600: the .avi silently held another rate than announced
    fast = str(tmp_path / "fast.mp4")
    writer = cv2.VideoWriter(fast, cv2.VideoWriter_fourcc(*"mp4v"), 2000, SIZE)
    writer.write(np.zeros((SIZE[1], SIZE[0], 3), np.uint8))
    writer.release()
    code, out, err = _run(demo, ["--video-input", fast, "--output", str(tmp_path / "o.avi")], capsys)
    assert (code, err) == (2, [f"error: cannot write video {tmp_path / 'o.avi'} at the input's 2000 frames per second: "
                               "OpenCV's MJPG writer would store 600 fps instead; a .mp4 file keeps it"])
    assert not (tmp_path / "o.avi").exists() and out == ""
    code, _, err = _run(demo, ["--video-input", fast, "--output", str(tmp_path / "o.mp4")], capsys)
    assert (code, err) == (0, [])
    assert _frames_and_fps(str(tmp_path / "o.mp4")) == (1, 2000.0)


def test_a_folder_named_like_a_video_is_a_folder_and_a_folder_in_the_way_is_named_first(demo, toy_dataset, video,
                                                                                         tmp_path, capsys):
    # a folder "dir.mp4" was taken for the file name: every frame was processed, then "cannot access
    # .../.dir.partial.mp4: Is a directory", the partial file left behind
    folder = tmp_path / "dir.mp4"
    folder.mkdir()
    code, out, err = _run(demo, ["--video-input", video, "--output", str(folder)], capsys)
    assert (code, err) == (0, [])
    assert sorted(p.name for p in folder.iterdir()) == ["clip_detections.mp4"]
    # the file the folder stands for is itself a folder: one line before the model is built
    (folder / "clip_detections.mp4").unlink()
    (folder / "clip_detections.mp4").mkdir()
    code, out, err = _run(demo, ["--video-input", video, "--output", str(folder)], capsys)
    assert (code, err) == (2, [f"error: --output {folder / 'clip_detections.mp4'} is a folder: the video cannot be "
                               "written under that name"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_video_that_cannot_be_renamed_into_place_leaves_no_partial_file(tmp_path):
    from focus_detr.data.video_io import VideoWriter

    target = tmp_path / "out.mp4"
    writer = VideoWriter(str(target), FPS)
    writer.write(np.zeros((SIZE[1], SIZE[0], 3), dtype=np.uint8))
    target.mkdir()  # made after the checks: e.g. by another program while the frames were written
    with pytest.raises(OSError, match=rf"^cannot write video {target}: Is a directory$"):
        writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_two_writers_of_one_video_each_write_a_whole_file(tmp_path):
    # one shared temporary name: the second writer wrote into the file the first had renamed into place, leaving a
    # damaged video (23 of 36 frames decodable) reported as written
    from focus_detr.data.video_io import VideoWriter

    target = tmp_path / "out.mp4"
    first, second = VideoWriter(str(target), FPS), VideoWriter(str(target), FPS)
    for index in range(5):
        first.write(np.full((SIZE[1], SIZE[0], 3), 10 * index, dtype=np.uint8))
        if index < 3:
            second.write(np.full((SIZE[1], SIZE[0], 3), 200, dtype=np.uint8))
    second.close()
    assert _frames_and_fps(str(target))[0] == 3
    first.close()  # the last to finish wins, whole
    assert _frames_and_fps(str(target))[0] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not the temporary file's private mode


def test_a_writer_removes_the_partial_files_of_killed_runs_and_keeps_those_being_written(tmp_path):
    # a demo killed midway (kill -9) left its hidden .out.*.partial.mp4 for good
    from focus_detr.data.video_io import VideoWriter
    from focus_detr.partial_files import remove_abandoned

    frame = np.zeros((SIZE[1], SIZE[0], 3), dtype=np.uint8)
    (tmp_path / ".out.killed.partial.mp4").write_bytes(b"frames of a killed run")
    running = VideoWriter(str(tmp_path / "out.mp4"), FPS)
    running.write(frame)
    with VideoWriter(str(tmp_path / "out.mp4"), FPS) as writer:
        writer.write(frame)
        assert len([p for p in tmp_path.iterdir() if p.name.endswith(".partial.mp4")]) == 2
        # what OpenCV writes is the file locked as being written, not another file of the same name
        assert remove_abandoned(tmp_path, ".out.", ".partial.mp4") == []
    running.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
