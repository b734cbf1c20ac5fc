"""The demo's detection pictures: small images scaled up by a whole factor, thin boxes coloured by score, nothing
below the threshold, a legend strip under the image, and the caller's image left as it was."""
import numpy as np

from focus_detr.analysis.detection_drawing import (
    SCORE_COLORS,
    draw_detections,
    draw_ground_truth,
    score_colors,
    upscale_factor,
)


def test_upscale_factor_reaches_the_short_edge_within_the_long_edge():
    assert upscale_factor(345, 416) == 3  # the tree tiles: 1035 x 1248
    assert upscale_factor(720, 1280) == 1 and upscale_factor(1080, 1920) == 1
    assert upscale_factor(30, 400) == 5  # 24 would reach 720 px, but the long edge stays within 2000


def test_score_colors_run_from_the_first_anchor_at_the_threshold_to_the_last_at_1():
    colors = score_colors(np.array([0.3, 1.0, 0.0, 2.0]), 0.3)
    assert (colors[0] == SCORE_COLORS[0]).all() and (colors[1] == SCORE_COLORS[-1]).all()
    assert (colors[2] == SCORE_COLORS[0]).all() and (colors[3] == SCORE_COLORS[-1]).all()  # clipped


def test_boxes_above_the_threshold_are_drawn_in_their_score_colour():
    image = np.full((40, 60, 3), 100, np.uint8)
    before = image.copy()
    boxes = np.array([[10, 10, 30, 30], [35, 5, 55, 35], [2, 2, 8, 8]], np.float32)
    picture, count = draw_detections(image, boxes, np.array([0.9, 0.5, 0.1]), np.zeros(3, int), ["tree"], 0.3)
    assert count == 2
    assert np.array_equal(image, before)
    factor = 18  # 40 px -> 720
    assert picture.shape[1] == 60 * factor and 40 * factor < picture.shape[0] < 40 * factor + 80
    for (x1, y1, x2, _), score in ((boxes[0], 0.9), (boxes[1], 0.5)):
        edge = picture[int(y1 * factor), int((x1 + x2) / 2 * factor)]  # the middle of the top edge
        assert np.abs(edge.astype(int) - score_colors(np.array([score]), 0.3)[0]).max() <= 2
    below = picture[int(5 * factor) - 10 : int(5 * factor) + 10, int(2 * factor) - 1 : int(2 * factor) + 2]
    assert (below == 100).all()  # the box under the threshold is not drawn


def test_ground_truth_is_red_crowd_grey_and_boxes_far_outside_are_drawn_at_the_edge():
    image = np.zeros((100, 120, 3), np.uint8)  # factor 8: 800 x 960
    boxes = np.array([[10, 10, 30, 40], [50, 50, 70, 90], [5, 5, 3e9, 20], [1, 1, np.nan, 4]], np.float64)
    picture = draw_ground_truth(image, boxes, np.array([0, 0, 0, 0]), ["tree"], np.array([0, 1, 0, 0], bool))
    factor = upscale_factor(100, 120)
    assert picture.shape[:2][1] == 120 * factor and picture.shape[0] > 100 * factor  # a legend strip under it
    assert tuple(picture[20 * factor, 10 * factor]) == (40, 40, 255)  # red
    assert tuple(picture[70 * factor, 50 * factor]) == (160, 160, 160)  # the crowd box, grey
    # 3e9 pixels wide (cv2 takes 32-bit coordinates: a traceback before): its top side runs to the right edge
    assert tuple(picture[5 * factor, 120 * factor - 1]) == (40, 40, 255)
