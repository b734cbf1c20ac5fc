"""Every PIL image mode is read with its content (16-bit and float scaled to the 8-bit range) or refused with one
line naming the file and the mode; the dataset mapper reads images this way. ``image_files`` sorts inputs (files,
folders) into images and the rest, each named with why."""
import os

import numpy as np
import pytest
from PIL import Image

from focus_detr.data import expand_globs, image_files, open_image, read_image

# a horizontal ramp 0..255 (8 bit) the other modes are made from
RAMP = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))


def _save(tmp_path, name, image):
    path = tmp_path / name
    image.save(path)
    return str(path)


def test_16_bit_grayscale_png_is_scaled_not_clipped_to_white(tmp_path):
    path = _save(tmp_path, "gray16.png", Image.fromarray(RAMP.astype(np.uint16) * 257))
    assert Image.open(path).mode == "I;16"
    image = read_image(path, "RGB")
    assert image.dtype == np.uint8 and image.shape == RAMP.shape + (3,)
    np.testing.assert_array_equal(image[..., 0], RAMP)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_32_bit_integer_and_float_images_are_scaled(tmp_path):
    as_int = _save(tmp_path, "int32.tif", Image.fromarray(RAMP.astype(np.int32) * 257))
    as_float = _save(tmp_path, "float.tif", Image.fromarray(RAMP.astype(np.float32) / 255.0))
    assert Image.open(as_int).mode == "I" and Image.open(as_float).mode == "F"
    np.testing.assert_array_equal(read_image(as_int, "RGB")[..., 1], RAMP)
    np.testing.assert_array_equal(read_image(as_float, "RGB")[..., 1], RAMP)


@pytest.mark.parametrize("mode, suffix", [("P", "png"), ("LA", "png"), ("RGBA", "png"), ("CMYK", "tif"), ("CMYK", "jpg"),
                                          ("L", "png"), ("1", "png")])
def test_palette_alpha_and_other_colour_modes_keep_their_colours(tmp_path, mode, suffix):
    rgb = np.stack([RAMP, 255 - RAMP, np.full_like(RAMP, 128)], -1)
    if mode in ("L", "LA", "1"):
        rgb = np.repeat((RAMP >= 128).astype(np.uint8)[..., None] * 255 if mode == "1" else RAMP[..., None], 3, -1)
    source = Image.fromarray(rgb)
    image = source.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else source.convert(mode)
    path = _save(tmp_path, f"image.{suffix}", image)
    assert Image.open(path).mode == mode
    read = read_image(path, "RGB").astype(int)
    tolerance = {"jpg": 12, "png": 0, "tif": 0}[suffix]  # JPEG is lossy
    assert np.abs(read - rgb).max() <= tolerance
    np.testing.assert_array_equal(read_image(path, "BGR"), read[..., ::-1])


@pytest.mark.parametrize(
    "name, image, problem",
    [
        ("float_range.tif", Image.fromarray(np.full((4, 4), 3.5, np.float32)), "pixel values span 3.5..3.5; float images must lie in 0..1"),
        ("float_nan.tif", Image.fromarray(np.full((4, 4), np.nan, np.float32)), "has NaN or infinite pixel values"),
        ("int_range.tif", Image.fromarray(np.full((4, 4), 70000, np.int32)), "outside the 16-bit range 0..65535"),
        ("lab.tif", Image.fromarray(np.zeros((4, 4, 3), np.uint8)).convert("LAB"), "PIL mode 'LAB' is not supported"),
    ],
)
def test_unusable_modes_are_refused_with_one_line(tmp_path, name, image, problem):
    path = _save(tmp_path, name, image)
    with pytest.raises(ValueError) as error:
        read_image(path, "RGB")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot read image {path}: ") and problem in message


@pytest.mark.parametrize("image_format", ["RGB", "BGR", "L"])
def test_images_are_read_writable(tmp_path, image_format):
    # PIL's buffer is read-only: the training flips' torch.from_numpy warned "The given NumPy array is not writable
    # ... undefined behavior" in every training run (the main job printed it once per data worker)
    path = str(tmp_path / "im.png")
    Image.fromarray(np.arange(60, dtype=np.uint8).reshape(5, 4, 3)).save(path)
    image = read_image(path, image_format)
    assert image.flags.writeable
    image[0, 0, 0] = 7  # the caller's own copy


def test_unreadable_and_missing_files_are_named(tmp_path):
    (tmp_path / "not_an_image.png").write_bytes(b"hello")
    with pytest.raises(ValueError, match=r"cannot read image .*not_an_image\.png: UnidentifiedImageError"):
        read_image(str(tmp_path / "not_an_image.png"))
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*missing\.png"):
        read_image(str(tmp_path / "missing.png"))
    # a named pipe in place of an image blocked the data loader for good
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ValueError, match=r"^cannot read image .*pipe\.png: a named pipe \(FIFO\), not an image file$"):
        read_image(str(tmp_path / "pipe.png"))


def test_the_dataset_mapper_reads_16_bit_images_with_their_content(tmp_path):
    from detectron2.data import transforms as T

    from focus_detr.data import DetrDatasetMapper

    path = _save(tmp_path, "gray16.png", Image.fromarray(RAMP.astype(np.uint16) * 257))
    mapper = DetrDatasetMapper([T.ResizeShortestEdge(16, 64)], is_train=False)
    sample = mapper({"file_name": path, "height": 16, "width": 64, "image_id": 0})
    np.testing.assert_array_equal(sample["image"][0].numpy(), RAMP)


def test_image_files_expands_folders_sorted_and_names_what_is_not_an_image(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("b.png", "a.png", "locked.png"):
        _save(folder, name, Image.fromarray(RAMP))
    (folder / "notes.txt").write_text("text")
    os.mkfifo(folder / "pipe")  # opening it to read would wait for a writer forever
    (tmp_path / "empty_dir").mkdir()
    real_open = Image.open

    def open_refusing_locked(path, *args, **kwargs):  # as a file without read permission (tests may run as root)
        if str(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_refusing_locked)
    single = _save(tmp_path, "z.png", Image.fromarray(RAMP))
    images, skipped = image_files([single, str(folder), str(tmp_path / "empty_dir")])
    assert images == [single, str(folder / "a.png"), str(folder / "b.png")]
    assert skipped == [
        (str(folder / "locked.png"), "cannot open it: Permission denied"),
        (str(folder / "notes.txt"), "not an image (Pillow does not recognise its format)"),
        (str(folder / "pipe"), "a named pipe (FIFO), not an image file"),
        (str(tmp_path / "empty_dir"), "an empty folder"),
    ]


def test_image_files_names_links_to_nothing_and_link_loops_as_what_they_are(tmp_path):
    # both were "not found", as the test set's check (which said what they are) was not
    os.symlink("gone.png", tmp_path / "dangling.png")
    os.symlink("loop.png", tmp_path / "loop.png")
    images, skipped = image_files([str(tmp_path / "dangling.png"), str(tmp_path / "loop.png")])
    assert images == [] and skipped == [
        (str(tmp_path / "dangling.png"), "not found (a symbolic link to gone.png, which is not there)"),
        (str(tmp_path / "loop.png"), "a symbolic link loop, not an image file"),
    ]

def test_reading_a_link_to_nothing_names_its_target(tmp_path):
    # training's reader said "image file not found" alone, where the demo and the test-set check name the target
    os.symlink("gone.png", tmp_path / "dangling.png")
    with pytest.raises(FileNotFoundError, match=r"^image file not found: \S*dangling.png \(a symbolic link to "
                                                r"gone.png, which is not there\)$"):
        open_image(str(tmp_path / "dangling.png"))
    with pytest.raises(FileNotFoundError, match=r"^image file not found: \S*absent.png$"):
        open_image(str(tmp_path / "absent.png"))


def test_a_glob_through_a_link_to_a_folder_above_gives_each_file_once(tmp_path):
    # "in/loop/**/*.png" with in/loop/up -> .. drew every image about 25 times, under ever longer paths
    folder = tmp_path / "in"
    (folder / "loop").mkdir(parents=True)
    (folder / "loop" / "up").symlink_to("..")
    for name in ("a.png", "loop/b.png"):
        (folder / name).write_bytes(b"x")
    assert expand_globs([str(folder / "**" / "*.png")]) == [str(folder / "a.png"), str(folder / "loop" / "b.png")]


def test_expand_globs_sorts_matches_keeps_existing_names_and_refuses_a_pattern_matching_nothing(tmp_path):
    for name in ("b.png", "a.png", "[x].png", "sub/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert expand_globs([str(tmp_path / "*.png"), str(tmp_path / "**" / "c.png")]) == [
        str(tmp_path / "[x].png"), str(tmp_path / "a.png"), str(tmp_path / "b.png"), str(tmp_path / "sub" / "c.png")
    ]
    assert expand_globs([str(tmp_path / "[x].png")]) == [str(tmp_path / "[x].png")]  # an existing name, as written
    with pytest.raises(ValueError, match=r"^no file matches '.*\*\.gif'$"):
        expand_globs([str(tmp_path / "a.png"), str(tmp_path / "*.gif")])


def test_open_image_reports_the_orientation_tag_and_the_frame_count(tmp_path):
    stored = np.zeros((10, 30, 3), dtype=np.uint8)
    stored[0, 0] = 255  # a white top-left pixel, to see where the turn puts it
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned: read rotated 90 degrees counter-clockwise
    path = tmp_path / "turned.png"
    Image.fromarray(stored).save(path, exif=exif)
    image = open_image(str(path), "RGB")
    assert (image.orientation, image.frames) == (8, 1)
    np.testing.assert_array_equal(image.pixels, np.rot90(stored))  # upright, as detectron2 reads it
    frames = [Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)) for value in (0, 200)]
    frames[0].save(tmp_path / "two.gif", save_all=True, append_images=frames[1:])
    image = open_image(str(tmp_path / "two.gif"), "RGB")
    assert (image.orientation, image.frames, int(image.pixels.max())) == (1, 2, 0)  # the first frame


def test_a_16_bit_image_using_12_bits_is_named_as_read_nearly_black(tmp_path, caplog):
    from detectron2.data import transforms as T

    from focus_detr.data import DetrDatasetMapper
    from focus_detr.data.image_io import dark_image_warning

    twelve_bit = RAMP.astype(np.uint16) * 16  # a 12-bit sensor's 0..4080 in a 16-bit PNG
    paths = [_save(tmp_path, f"raw{i}.png", Image.fromarray(twelve_bit)) for i in range(2)]
    full = _save(tmp_path, "full.png", Image.fromarray(RAMP.astype(np.uint16) * 257))
    assert open_image(paths[0]).bits_used == 12 and open_image(full).bits_used == 16
    assert open_image(_save(tmp_path, "eight.png", Image.fromarray(RAMP))).bits_used is None
    assert dark_image_warning(paths[0], 12) == (
        f"image {paths[0]} is a 16-bit image whose brightest pixel is below 4096 (12 bits used): read as 16-bit it "
        "becomes 0..16 of 255, nearly black; scale its pixels to 16 bits (or save it as 8-bit) first")
    assert dark_image_warning(full, 16) is None
    mapper = DetrDatasetMapper([T.ResizeShortestEdge(16, 64)], is_train=False)
    for path in [full, *paths]:
        mapper({"file_name": path, "height": 16, "width": 64, "image_id": 0})
    named = [record.getMessage() for record in caplog.records if "16-bit image whose" in record.getMessage()]
    assert named == [dark_image_warning(paths[0], 12) + "; other such images are not named"]  # once per mapper
