# The README's demo: the small Focus-DETR (half-width ResNet-18, 128-wide transformer) trained from scratch on the embedded
# tree-crown tiles, on a CPU in about 8-10 minutes (2 idle cores; longer on shared ones).
from .common.data.trees import dataloader
from .common.coco_schedule import default_multistep
from .common.optim import AdamW as optimizer
from .common.train import train
from .models.focus_detr_r18_small import model

model.num_classes = 1
# From scratch, a higher learning rate and no backbone discount learn faster in a short run (6e-4 diverged on one
# of two seeds; 4e-4 with 2 warm-up epochs trained on both).
optimizer.lr = 4e-4
optimizer.params.lr_factor_func.factor = 1.0
train.max_iter = 900
# 38 training tiles at 2 per iteration: 19 iterations per epoch; 2 epochs of warm-up, decay for the last ~10%.
lr_multiplier = default_multistep(epochs=900 / 19, decay_epochs=810 / 19, warmup_epochs=2, iters_per_epoch=19)
train.eval_period = 900
train.checkpointer.period = 200
train.log_period = 20
train.output_dir = "./output/focus_detr_r18_trees"
# Flat resident memory over long runs (tools/soak.py, 1000 iterations: +4.6% after warm-up with it, +6.8% without)
# for ~2% of a training step (interleaved, docs/reliability.md); unmeasured at R50 sizes, so off in common/train.py.
train.malloc_mmap_threshold_mib = 4
# A fixed seed makes the demo numbers of docs/demo.md reproducible (the seed alone moves AP by more than any
# component of the model does: docs/ablation.md).
train.seed = 1
