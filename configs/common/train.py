"""Training-loop defaults shared by every config (read by ``train_net.py`` and the tools)."""

train = dict(
    output_dir="./output",
    # a detectron2/torchvision backbone .pkl/.pth, one of our checkpoints, or an official detrex Focus-DETR .pth
    init_checkpoint="",
    max_iter=90000,
    # "auto": "cuda" when a GPU is visible where the run starts, else "cpu" (decided then, so a config.yaml written on a
    # GPU machine evaluates on a CPU one); or "cpu", "cuda", "cuda:1", ...
    device="auto",
    # precision: "auto" = bfloat16 where the device supports it (CPU, Ampere+ GPUs), else float16 with a grad scaler
    amp=dict(enabled=False, precision="auto"),
    # the same for inference (--eval-only, evaluation during training, demo/demo.py, tools/benchmark.py); off: float32.
    # bfloat16 on CPUs with AVX512-BF16/AMX: R50 inference ~2x faster (docs/benchmarks.md, with its accuracy change)
    inference_amp=dict(enabled=False, precision="auto"),
    # on a GPU, inference (evaluation, demo/demo.py, FocusDETRPredictor) replays the network from a CUDA graph per
    # input size once that size repeats: same detections, one launch instead of >1,000 (docs/gpu.md). max_graphs:
    # sizes kept captured, each holding about one inference's peak memory. Ignored on a CPU.
    inference_cuda_graphs=dict(enabled=False, max_graphs=4),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    clip_grad=dict(enabled=True, params=dict(max_norm=0.1, norm_type=2.0)),
    # exponential moving average of the weights; when enabled, evaluation during training uses the EMA weights and
    # checkpoints carry them (``--eval-only`` loads them when ``use_for_eval`` is True).
    model_ema=dict(enabled=False, decay=0.999, use_for_eval=True),
    # save_safetensors: at the end also write <output_dir>/model_final.safetensors, the final weights alone (the EMA
    # weights when model_ema.use_for_eval), for publishing; --resume needs the .pth checkpoints (optimizer, RNG, ...)
    checkpointer=dict(period=5000, max_to_keep=100, save_safetensors=False),
    eval_period=5000,
    # score the model's token selection against the ground truth in every evaluation (--eval-only and during
    # training): object recall, foreground precision, fine-grained hit rate per encoder layer, level and object size
    # (docs/training.md); about 1% of the evaluation time on the tree data. False: COCO AP alone.
    selection_quality=True,
    # Long CPU runs and glibc's heap (docs/reliability.md, "Memory over a long run"); results do not change.
    # release_freed_memory_period: every N iterations hand the heap's free pages back to the OS (malloc_trim; 0:
    # never; costs ~0.5% of a tree training step at 10). malloc_mmap_threshold_mib: fix glibc's mmap threshold
    # (0: glibc's own, which rises after large frees); the tree config sets 4 (measured there).
    release_freed_memory_period=10,
    malloc_mmap_threshold_mib=0,
    log_period=20,
    # -1: draw a random seed (written into the run's config.yaml and log; checkpoints keep the generators' states)
    seed=-1,
)
