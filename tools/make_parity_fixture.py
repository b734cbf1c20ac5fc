#!/usr/bin/env python
"""Writes a parity fixture, in the official fixture's format, from one of our models, so that
``tools/check_parity.py`` can compare two runs of this code: another deformable-attention backend, device, thread
count or torch version, at any model size.

    FOCUS_DETR_MSDA_BACKEND=pytorch python tools/make_parity_fixture.py \
        --config-file configs/focus_detr_r50_4scale_12ep.py --sizes 800x800 800x1066 --output r50_pytorch.pt
    FOCUS_DETR_MSDA_BACKEND=cpu python tools/check_parity.py --fixture r50_pytorch.pt

Weights: ``--weights`` (ours or official), else the config's initialisation perturbed as the official fixture's
was (running statistics randomised, all-zero and constant tensors given noise), so that no bias or norm is trivial.
Inputs: synthetic images (noise, a gradient and coloured rectangles, which are also the ground-truth boxes) of the
given sizes; each is postprocessed to 1.5x its size. Recorded: single-image eval outputs with the ranking decisions
(foreground tokens, fine-grained tokens, query proposals), and training losses without and with (seeded) denoising.
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import functools
import os
import sys
from typing import Dict, List

import torch
from detectron2.config import instantiate

from focus_detr.analysis.parity import run_single, run_train_losses, to_batched_input
from focus_detr.engine.settings import check_output_file
from focus_detr.checkpoint import FocusDETRCheckpointer
from focus_detr.checkpoint.safe_load import missing_checkpoint_error
from focus_detr.engine import atomic_write, load_config
from focus_detr.engine.arguments import add_overrides_argument, image_size, parse_args_with_overrides
from focus_detr.engine.cli import run_reporting_errors


def perturb_weights(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Gives every trivially initialised tensor random values, as the official fixture's weights were made."""
    seen = set()
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.data_ptr() in seen or not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            seen.add(tensor.data_ptr())
            if key.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif key.endswith("running_mean"):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
            elif not tensor.any():
                tensor.copy_(0.02 * torch.randn(tensor.shape, generator=generator))
            elif tensor.numel() > 1 and (tensor == tensor.flatten()[0]).all():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))


def synthetic_input(height: int, width: int, num_classes: int, generator: torch.Generator) -> Dict:
    """A uint8 ``(3, H, W)`` image of noise, a gradient and 4 coloured rectangles, with the rectangles as targets."""
    image = torch.randint(0, 60, (3, height, width), generator=generator, dtype=torch.int32)
    image += (torch.arange(width) * 120 // max(width - 1, 1)).view(1, 1, -1)
    boxes = []
    for _ in range(4):
        w = int(torch.randint(width // 8, width // 2, (1,), generator=generator))
        h = int(torch.randint(height // 8, height // 2, (1,), generator=generator))
        x = int(torch.randint(0, width - w, (1,), generator=generator))
        y = int(torch.randint(0, height - h, (1,), generator=generator))
        image[:, y : y + h, x : x + w] = torch.randint(60, 256, (3, 1, 1), generator=generator, dtype=torch.int32)
        boxes.append([x, y, x + w, y + h])
    return {
        "image": image.clamp(0, 255).to(torch.uint8),
        "height": height * 3 // 2,
        "width": width * 3 // 2,
        "instances": {
            "image_size": (height, width),
            "gt_boxes": torch.tensor(boxes, dtype=torch.float32),
            "gt_classes": torch.randint(0, num_classes, (len(boxes),), generator=generator),
        },
    }


class DecisionRecorder:
    """While active, keeps the last transformer output and the fine-grained positions each encoder layer chose."""

    def __init__(self, model):
        self.model, self.output, self.fine_grained = model, None, []

    def __enter__(self):
        run_transformer = self.model.run_transformer

        def run_and_keep(*args, **kwargs):
            self.fine_grained = []
            self.output = run_transformer(*args, **kwargs)
            return self.output

        self.model.run_transformer = run_and_keep
        for layer in self.model.transformer.encoder.layers:
            layer.select_fine_grained = self._keeping(layer.select_fine_grained)
        return self

    def _keeping(self, choose):
        def choose_and_keep(scores):
            inds = choose(scores)
            self.fine_grained.append(inds)
            return inds

        return choose_and_keep

    def __exit__(self, *exc):
        del self.model.run_transformer
        for layer in self.model.transformer.encoder.layers:
            del layer.select_fine_grained


def record(model, inputs: List[Dict], seed: int) -> Dict:
    single = []
    with DecisionRecorder(model) as recorder:
        for item in inputs:
            ours = run_single(model, item)
            out = recorder.output
            layers = {j: {"oesm_select_idx": inds} for j, inds in enumerate(recorder.fine_grained)}
            single.append(
                {
                    **ours,
                    "enc_outputs": {"pred_logits": out.encoder_logits, "pred_boxes": out.encoder_boxes},
                    "debug": {
                        "encoder_in": {"foreground_inds": out.selection.foreground_inds},
                        "encoder_layers": layers,
                    },
                }
            )
        train_losses = {}
        targets = model.prepare_targets([to_batched_input(item, with_instances=True) for item in inputs])
        torch.manual_seed(seed)
        denoising = model.denoising(targets, model.label_enc, model.transformer.num_queries)
        dn_inputs = None
        if denoising is not None:
            dn_inputs = {
                "input_query_label": denoising.query_label,
                "input_query_bbox": denoising.query_bbox,
                "attn_mask": denoising.attn_mask,
                "dn_meta": {"single_padding": denoising.single_padding, "dn_num": denoising.dn_num},
            }
        for name, dn in (("no_dn", None), ("dn", dn_inputs)):
            losses = run_train_losses(model, inputs, dn, seed)  # the seed a model with stochastic depth draws from
            out = recorder.output
            debug = {"foreground_inds": out.selection.foreground_inds, "enc_reference": out.encoder_boxes}
            train_losses[name] = {"losses": losses, "dn_inputs": dn, "debug": debug, "seed": seed}
    return {"eval_outputs": {"single": single}, "train_losses": train_losses}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--weights", help="checkpoint to load (default: perturbed initialisation)")
    parser.add_argument("--sizes", nargs="+", type=functools.partial(image_size, minimum=32), metavar="HxW",
                        default=[(200, 276), (270, 196)], help="input image sizes, at least 32x32")
    parser.add_argument("--seed", type=int, default=0)
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    # Refusals first: building the model and recording take minutes at full size.
    if args.weights and "://" not in args.weights and not os.path.isfile(args.weights):
        raise missing_checkpoint_error(args.weights)
    check_output_file(args.output, "--output", "fixture.pt", inputs={"--weights": args.weights})
    cfg = load_config(args.config_file, args.opts)  # one line for a missing file or an unknown override key

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    model = instantiate(cfg.model).eval()
    generator = torch.Generator().manual_seed(args.seed + 1234)
    if args.weights:
        FocusDETRCheckpointer(model).load(args.weights)
    else:
        perturb_weights(model, generator)
    num_classes = model.class_embed[0].out_features
    inputs = [synthetic_input(h, w, num_classes, generator) for h, w in args.sizes]
    fixture = {"state_dict": model.state_dict(), "inputs": inputs, **record(model, inputs, args.seed)}
    atomic_write(args.output, lambda f: torch.save(fixture, f))
    print(f"wrote {args.output}: {len(inputs)} images, tokens per layer "
          f"{[s['num_selected_tokens_per_layer'] for s in fixture['eval_outputs']['single']]}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main))
