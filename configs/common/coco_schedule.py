"""Multi-step learning-rate schedules, written in iterations of the run they were made for.

detectron2 reads a schedule at ``iteration / train.max_iter``, so the milestones and the warm-up are shares of the
run: the 12 ep schedule with ``train.max_iter=180000`` decays at 165000, not at the 24 ep schedule's 150000. For
another length, build the schedule for it (``default_multistep`` below).

The official COCO recipes use 16 images per iteration, so one COCO epoch (~118k images) is taken as 7500 iterations:
12 ep = 90000 iters with the decay after epoch 11 (iter 82500); 24 ep = 180000 with the decay after epoch 20 (150000);
36 ep = 270000 with the decay after epoch 30 (225000), as the official Swin 36 ep configs train. (The official R50
36 ep config imported a schedule that does not exist; configs/focus_detr_r50_4scale_36ep.py trains as the released
R50 36 ep weights were trained, see there.)
For another dataset, call ``default_multistep(epochs, decay_epochs, iters_per_epoch=ceil(num_images / batch))``.
"""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

COCO_ITERS_PER_EPOCH_16_IMAGES = 7500


def default_multistep(epochs, decay_epochs, warmup_epochs=0, iters_per_epoch=COCO_ITERS_PER_EPOCH_16_IMAGES):
    """lr x1 until ``decay_epochs``, then x0.1 until ``epochs``; optional linear warm-up from x0.001.

    Returns a LazyCall of ``WarmupParamScheduler``; its milestones are in iterations of a run of ``epochs`` epochs
    (``train.max_iter = epochs * iters_per_epoch``; another ``train.max_iter`` stretches them in proportion).
    """
    if not 0 < decay_epochs <= epochs:
        raise ValueError(f"decay_epochs must be in (0, epochs={epochs}], got {decay_epochs}")
    if warmup_epochs < 0 or warmup_epochs >= epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}), got {warmup_epochs}")
    if iters_per_epoch <= 0:
        raise ValueError(f"iters_per_epoch must be positive, got {iters_per_epoch}")
    total_iters = int(round(epochs * iters_per_epoch))
    decay_iters = int(round(decay_epochs * iters_per_epoch))
    warmup_iters = int(round(warmup_epochs * iters_per_epoch))
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[decay_iters, total_iters]),
        warmup_length=warmup_iters / total_iters,
        warmup_method="linear",
        warmup_factor=0.001,
    )


lr_multiplier_12ep = default_multistep(12, 11)
lr_multiplier_24ep = default_multistep(24, 20)
lr_multiplier_36ep = default_multistep(36, 30)
