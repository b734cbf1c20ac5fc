"""Token-selection pictures stay a viewable size whatever the image's shape."""
import numpy as np
import torch
from PIL import Image

from focus_detr.analysis.token_maps import MAX_PANEL_ASPECT, save_foreground_figure, save_token_figure


def _selection(shapes):
    tokens = sum(h * w for h, w in shapes)
    return {
        "spatial_shapes": torch.tensor(shapes),
        "foreground_logits": torch.zeros(tokens),
        "foreground_inds": [torch.arange(tokens // 2), torch.arange(tokens // 4)],
        "fine_grained_inds": [torch.arange(3), torch.arange(2)],
    }


def test_a_very_elongated_image_gives_a_bounded_figure(tmp_path):
    # a 2 x 2000 pixel image made a 585,772 pixel wide figure (80 s, 5 GB) that image viewers refuse
    image = np.full((2, 2000, 3), 128, np.uint8)
    selection = _selection([(1, 250), (1, 125), (1, 63), (1, 32)])
    for save, name in ((save_token_figure, "tokens.png"), (save_foreground_figure, "foreground.png")):
        save(image, selection, str(tmp_path / name))
        width, height = Image.open(tmp_path / name).size
        assert width <= 4 * (2.6 * MAX_PANEL_ASPECT + 1) * 110 and height < 1000, (name, width, height)


def test_tokens_are_drawn_where_the_model_places_them():
    # a 352-pixel side has 6 tokens at level 3: the model's cells are 352 / 6 = 58.7 pixels (last row centred at
    # 322.7), where the picture drew 64-pixel strides (last row from 320 on: pixel 300 showed the row above)
    from focus_detr.analysis.selection_quality import token_grid
    from focus_detr.analysis.token_maps import grid_to_image

    rows = np.arange(6)[:, None].repeat(5, axis=1)
    for image_size, padded_size in (((352, 300), None), ((300, 260), (352, 300))):
        drawn = grid_to_image(rows, image_size, padded_size)
        assert drawn.shape == image_size
        grid = token_grid([(6, 5)], image_size, padded_size or image_size, image_size)
        for row, centre in enumerate(grid.centres_y[0]):  # selection_quality's centres: the same token there
            if centre < image_size[0]:
                assert drawn[int(centre), 0] == row
    assert grid_to_image(rows, (352, 300))[300, 0] == 5
