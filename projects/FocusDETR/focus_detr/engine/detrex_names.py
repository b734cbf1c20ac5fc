"""Where the config keys of detrex's Focus-DETR configs live here, for the line that refuses one: a detrex user's
``model.num_queries=300`` is ``model.transformer.num_queries`` in these configs (spec §10)."""

__all__ = ["detrex_hint"]

# detrex key -> this project's key
_RENAMED = {
    "model.num_queries": "model.transformer.num_queries",
    "model.dn_number": "model.denoising.dn_number",
    "model.label_noise_ratio": "model.denoising.label_noise_ratio",
    "model.box_noise_scale": "model.denoising.box_noise_scale",
    "model.select_box_nums_for_evaluation": "model.num_detections",
    "model.device": "train.device",
    "model.transformer.num_feature_levels": "model.transformer.num_levels",
    "model.transformer.two_stage_num_proposals": "model.transformer.num_queries",
    "model.transformer.encoder.num_feature_levels": "model.transformer.encoder.num_levels",
    "model.transformer.decoder.num_feature_levels": "model.transformer.decoder.num_levels",
    "model.criterion.alpha": "model.criterion.focal_alpha",
    "model.criterion.gamma": "model.criterion.focal_gamma",
    "train.model_ema.use_ema_weights_for_eval_only": "train.model_ema.use_for_eval",
}

# renamed keys whose meaning differs too -> how
_RENAMED_NOTES = {
    # detrex: --eval-only alone, default False; evaluation during training always used the average
    "train.model_ema.use_ema_weights_for_eval_only": ", which defaults to True and applies to the evaluations during "
                                                     "training too",
}

# detrex key -> why it has no counterpart
_FIXED = {
    "model.criterion.loss_class_type": "the class loss is the official sigmoid focal loss",
    "model.criterion.matcher.cost_class_type": "the class cost is the official focal cost",
    "model.criterion.two_stage_binary_cls": "the proposals learn the real classes, as in the official configs",
    "model.transformer.learnt_init_query": "the queries' content is learnt, as in the official configs",
    "model.transformer.encoder.post_norm": "the layers normalise after each block, as in the official model",
    "model.transformer.decoder.return_intermediate": "every layer's output is used in training, as in detrex",
    "train.fast_dev_run": "a quick trial run is train.max_iter=20 train.eval_period=10 train.log_period=1",
    "train.wandb": "metrics go to metrics.json and TensorBoard events in train.output_dir (tools/plot_metrics.py "
                   "draws them)",
    "train.model_ema.device": "the average is kept on the model's device",
}


def detrex_hint(key: str) -> str:
    """`` (detrex's KEY is OURS here)`` when ``key`` is a detrex config key with another name or no counterpart
    here; else ''. An entry inside such a key (``train.fast_dev_run.enabled``) gets that key's hint."""
    if key in _RENAMED:
        return f" (detrex's {key} is {_RENAMED[key]} here{_RENAMED_NOTES.get(key, '')})"
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in _FIXED:
            return f" (detrex's {prefix} has no setting here: {_FIXED[prefix]})"
    return ""
