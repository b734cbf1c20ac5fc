#!/usr/bin/env python
"""Export a Focus-DETR config's model to ONNX (named after detectron2's tools/deploy/export_model.py).

    python tools/export_model.py --config-file CFG --output DIR [--format onnx] [--export-method tracing]
        [--opset 17] [--msda-form grid_sample|gather] [--sample-size H W] [--batched] [--verify-sizes HxW ...]
        [--benchmark HxW ...] [--batch-size 4] [--compare-msda-forms] [--evaluate] [--threads 2] [--seed 0]
        [key=value ...]
    python tools/export_model.py --config-file CFG --output DIR --onnx DIR0/model.onnx --evaluate [key=value ...]

Builds the model, loads ``train.init_checkpoint`` (ours or an official detrex file; the EMA weights it carries when
the config evaluates with them; empty = random weights, with a warning), traces it on one CPU image of
``--sample-size`` (with ``--batched``, on a padded batch of it and a 3/4 crop of it) and writes ``DIR/model.onnx``
and ``DIR/model.json``
(input format, pixel mean/std, class names, keep ratios, opset, versions, export time, file size). The graph takes a
uint8 ``image`` ``(3, H, W)`` of any size (batch 1) and returns ``boxes`` ``(K, 4)`` xyxy input pixels (clipped to the
image, as the PyTorch model's are), ``scores``, ``labels`` and the token counts; run it with
``focus_detr.export.OnnxPredictor`` or ``demo/demo.py --onnx``. With ``--batched`` it takes a padded batch of any
size, ``images`` ``(B, 3, H, W)`` and ``image_sizes`` ``(B, 2)``, and returns ``(B, K, ...)`` detections with a
``nonempty`` mask (docs/export.md).

After writing, the graph is checked (``onnx.checker``, no custom-domain node) and compared with the PyTorch model
at the sample size and each ``--verify-sizes`` (top-100 detections matched by class, IoU >= 0.99, |d score| <= 1e-3;
same token counts), a batched graph also on a padded batch of three. Where detections differ, PyTorch is run again
with the graph's ranking decisions (foreground and fine-grained tokens of each encoder layer, query ranking), if each
is PyTorch's own up to near-tied scores (see ``focus_detr.export.ranking``: a swapped pair of near-equal scores
changes detections, common with random weights); a difference beyond that is reported, and the exit status is 1.
The graph is written and checked in a temporary folder inside DIR and moved into DIR only then: a failed or
differing export leaves an earlier one there as it was (``focus_detr.export.folder``). The tool holds DIR's lock
for its whole run, as ``train_net.py`` holds its output folder: a second export, a training or a sweep into DIR
meanwhile is refused in one line naming the holder's pid (a killed run's lock blocks nothing).
``--benchmark`` times onnxruntime against PyTorch at each size, interleaved in one run, with ``--threads`` threads
for both, and writes ``DIR/benchmark.json``; ``--compare-msda-forms`` also exports the graph in the other
deformable-attention form(s) (``DIR/model_<form>.onnx``, moved into DIR with model.onnx) and times them in the same
rounds; for a ``--batched`` graph it also times ``--batch-size`` images run one by one and as one batch,
by PyTorch and onnxruntime. Random weights (empty ``train.init_checkpoint``) are seeded by ``--seed``.

``--evaluate`` then scores the graph and the PyTorch model with COCO AP on the config's test set
(``dataloader.test`` + ``dataloader.evaluator``, as ``train_net.py --eval-only``), prints both and their difference
(AP, AP50, AP75, APs/m/l) and writes ``DIR/evaluation.json`` (the evaluators' files under ``DIR/evaluation/``).
``--onnx FILE --evaluate`` scores an existing graph instead of exporting one (PyTorch: the config's weights).

Examples:
    python tools/export_model.py --config-file configs/focus_detr_r50_4scale_12ep.py --output output/onnx_r50 \
        --benchmark 800x1333 480x640 train.init_checkpoint=""
    python tools/export_model.py --config-file configs/focus_detr_r18_trees.py --output output/onnx_trees \
        --sample-size 352 416 --evaluate train.init_checkpoint=output/main_job/model_final.pth
"""
import focus_detr.entry_point  # noqa: F401  (first: no import-time FutureWarnings; Ctrl-C is one line)
import argparse
import contextlib
import io
import math
import os
import sys

import torch

from focus_detr.analysis.inputs import synthetic_inputs
from focus_detr.engine import build_model, check_datasets_registered, claim_output_dir, load_config
from focus_detr.engine.arguments import add_overrides_argument, image_size, parse_args_with_overrides, positive_int
from focus_detr.engine.checkpoint import write_json
from focus_detr.engine.cli import run_reporting_errors
from focus_detr.engine.predictor import inference_resize, input_format
from focus_detr.engine.checkpoint_classes import model_classes
from focus_detr.engine.inference_weights import InferenceWeights, check_finite_weights, read_inference_weights
from focus_detr.export import (
    DEFAULT_OPSET,
    MIN_OPSET,
    OnnxPredictor,
    ap_table,
    check_graph_fits_config,
    check_onnx_file,
    compare_ap,
    evaluate_onnx_and_pytorch,
    check_graph,
    export_metadata,
    export_onnx,
    graph_weights,
    max_export_opset,
    model_json_classes,
    require_packages,
)
from focus_detr.export.benchmark import time_batches, time_graphs
from focus_detr.export.evaluation import check_comparable_precision
from focus_detr.export.folder import (GRAPH_FILES, STAGE_PREFIX, STAGE_SUFFIX, check_graph_targets, earlier_export,
                                      install_evaluation, install_export, naming_final_file, remove_abandoned_exports)
from focus_detr.export.verification import check_batch_sizes, compare_with_pytorch, inputs_label
from focus_detr.layers.ms_deform_attn_onnx import MSDA_ONNX_FORMS
from focus_detr.partial_files import PartialPath


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR", help="writes DIR/model.onnx and DIR/model.json")
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--export-method", choices=["tracing"], default="tracing",
                        help="TorchScript tracing (the dynamo exporter cannot express the data-dependent token counts)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, {MIN_OPSET} (GridSample) to the highest the installed torch exports")
    parser.add_argument("--msda-form", choices=MSDA_ONNX_FORMS, default="grid_sample",
                        help="ONNX form of the deformable attention (grid_sample: faster on onnxruntime CPU)")
    parser.add_argument("--sample-size", type=positive_int, nargs=2, metavar=("H", "W"), default=[800, 1333],
                        help="size of the random image the graph is traced on (the graph accepts any size; "
                             "--batched traces a batch of it and a 3/4 crop of it)")
    parser.add_argument("--batched", action="store_true",
                        help="a graph that takes a padded batch of any size: images (B, 3, H, W) and image_sizes "
                             "(B, 2) (default: one image (3, H, W) at a time)")
    parser.add_argument("--verify-sizes", type=image_size, nargs="*", default=[], metavar="HxW",
                        help="also compare onnxruntime with PyTorch at these sizes")
    parser.add_argument("--benchmark", type=image_size, nargs="*", default=[], metavar="HxW",
                        help="time onnxruntime against PyTorch at these sizes (interleaved)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="with --batched, --benchmark also times this many images (default 4) run one by one and "
                             "as a batch")
    parser.add_argument("--compare-msda-forms", action="store_true",
                        help="also export the other MSDA form(s) (DIR/model_<form>.onnx) and time them in --benchmark")
    parser.add_argument("--evaluate", action="store_true",
                        help="COCO AP of the graph and of PyTorch on the config's test set (DIR/evaluation.json)")
    parser.add_argument("--onnx", metavar="FILE", default=None,
                        help="with --evaluate: score this existing graph instead of exporting one")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch and onnxruntime")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights when train.init_checkpoint is empty")
    add_overrides_argument(parser)
    return parse_args_with_overrides(parser, argv)


def _check_opset(opset):
    """Before the model is built: torch fails on an opset above its exporter's deep in the export, with a traceback."""
    highest = max_export_opset()
    if not MIN_OPSET <= opset <= highest:
        raise ValueError(f"--opset must be between {MIN_OPSET} and {highest}, got {opset} ({MIN_OPSET}: GridSample; "
                         f"{highest}: the highest torch {torch.__version__} exports)")


def _check_arguments(args):
    _check_opset(args.opset)
    if args.batch_size is not None and not (args.batched and args.benchmark):
        raise ValueError("--batch-size sets how many images --benchmark times as a batch: it needs --batched and "
                         "--benchmark")
    if args.warmup < 0 or args.repeats < 1 or args.threads < 1:
        raise ValueError("--warmup must be >= 0, --repeats and --threads >= 1")
    if args.onnx is not None:
        if not args.evaluate:
            raise ValueError("--onnx FILE scores an existing graph: add --evaluate (without --onnx the tool exports one)")
        export_only = [flag for flag, given in (("--verify-sizes", args.verify_sizes), ("--benchmark", args.benchmark),
                                                ("--compare-msda-forms", args.compare_msda_forms)) if given]
        if export_only:
            raise ValueError(f"{', '.join(export_only)} check a graph as it is exported: drop --onnx to export one")
        if args.batched:
            raise ValueError("--batched is how a graph is exported: drop --onnx to export one (--onnx scores a graph "
                             "as it is, batched or not)")
        check_onnx_file(args.onnx)


def _load_model(cfg, args, init_checkpoint):
    """The model in eval mode, which weights it has ("ema", "trained" or "random") and the class names its
    checkpoint records (None: none)."""
    torch.manual_seed(args.seed)
    model = build_model(cfg, "cpu")
    # the EMA weights where evaluation uses them
    loaded = InferenceWeights("random", None)
    if init_checkpoint:
        loaded = read_inference_weights(model, cfg, init_checkpoint)
        # a diverged run's: its graph would find nothing, and PyTorch fail in the verification
        check_finite_weights(model, f"the {'EMA ' if loaded.kind == 'ema' else ''}weights of {init_checkpoint}")
    else:
        doing = "evaluating PyTorch with" if args.onnx else "exporting"
        print(f"warning: train.init_checkpoint is empty: {doing} a randomly initialised model", file=sys.stderr)
    return model.eval(), loaded.kind, loaded.thing_classes


def _print_removed_abandoned(folder):
    abandoned = remove_abandoned_exports(folder)
    if abandoned:
        print(f"removed {len(abandoned)} temporary file(s) or folder(s) left by an interrupted export or "
              f"evaluation: {', '.join(os.path.basename(path) for path in abandoned)}", file=sys.stderr)


def export(model, cfg, args, init_checkpoint, weights, stage, classes):
    """Writes model.onnx and model.json into the folder ``stage`` (an export's temporary folder, see
    :mod:`focus_detr.export.folder`); returns the graph's path there, its metadata and the traced sample.
    ``classes``: the model's class names (:func:`~focus_detr.engine.checkpoint_classes.model_classes`)."""
    path = os.path.join(stage, "model.onnx")
    sample = synthetic_inputs(*args.sample_size)[0]
    with naming_final_file(stage, "model.onnx", args.output):
        seconds = export_onnx(model, path, sample["image"], args.opset, args.msda_form, args.batched)
    check_graph(path)
    class_names, category_ids, unnamed = model_json_classes(cfg, classes, model.num_classes)
    if unnamed:
        print(f"warning: model.json gets no class names: {unnamed}", file=sys.stderr)
    metadata = export_metadata(
        model, args.opset, args.msda_form, input_format(cfg), class_names, batched=args.batched,
        resize=inference_resize(cfg), category_ids=category_ids,
    )
    metadata.update(
        config_file=args.config_file,
        overrides=list(args.opts),
        init_checkpoint=init_checkpoint,
        weights=weights,  # "ema": the checkpoint's average (train.model_ema), "trained" or "random"
        sample_size=list(args.sample_size),
        export_seconds=round(seconds, 1),
        file_size_mib=round(os.path.getsize(path) / 2**20, 1),
    )
    with naming_final_file(stage, "model.json", args.output):
        write_json(os.path.join(stage, "model.json"), metadata)
    return path, metadata, sample


def export_and_verify(model, cfg, args, init_checkpoint, weights, classes):
    """Exports the graph and verifies it in a temporary folder inside DIR, then moves it into DIR, replacing an
    earlier export and what was written about it, unless the new graph differs from PyTorch while DIR holds an
    earlier export (kept as it was). With --compare-msda-forms the graphs in the other forms go along. An export that
    fails or is interrupted leaves DIR as it was. Returns the graph's path in DIR (None when it was not moved there)
    and the sizes where it differs."""
    with PartialPath(args.output, prefix=STAGE_PREFIX, suffix=STAGE_SUFFIX, folder=True) as stage:
        staged, metadata, sample = export(model, cfg, args, init_checkpoint, weights, stage.path, classes)
        failures = verify(model, staged, args)
        earlier = earlier_export(args.output)
        if failures and any(name in GRAPH_FILES for name in earlier):
            print(f"the new graph differs from PyTorch: it is not written, and the earlier export in {args.output} "
                  "is kept as it was (export into another --output to keep the new one)", file=sys.stderr)
            return None, failures
        forms = _export_other_forms(model, sample, args, stage.path)
        removed = install_export(stage.path, args.output)
    if earlier:
        removed = f"; removed its {', '.join(removed)}" if removed else ""
        print(f"replaced the earlier export in {args.output}{removed}", file=sys.stderr)
    path = os.path.join(args.output, "model.onnx")
    batch = "any batch size" if args.batched else "one image at a time"
    print(f"wrote {path} ({metadata['file_size_mib']} MiB, exported in {metadata['export_seconds']:.1f} s, opset "
          f"{args.opset}, MSDA as {args.msda_form}, {batch}) and {' and '.join(['model.json', *forms.values()])}")
    return path, failures


def _other_forms(args):
    """The MSDA forms --compare-msda-forms exports beside ``--msda-form``'s (none without it)."""
    return [form for form in MSDA_ONNX_FORMS if args.compare_msda_forms and form != args.msda_form]


def _export_other_forms(model, sample, args, stage):
    """Writes the graph in each of :func:`_other_forms` into the export's temporary folder ``stage``, to be moved into
    DIR with the main graph (an interrupted export leaves none of them there); returns form -> file name."""
    forms = {form: f"model_{form}.onnx" for form in _other_forms(args)}
    for form, name in forms.items():
        with naming_final_file(stage, name, args.output):
            export_onnx(model, os.path.join(stage, name), sample["image"], args.opset, form, args.batched)
    return forms


def verify(model, path, args):
    """Compares the graph with PyTorch at the sample size and each --verify-sizes, and a batched graph also on a
    padded batch (``check_batch_sizes``); returns the checks that differ (one PyTorch refuses is named, not counted)."""
    predictor = OnnxPredictor(path, num_threads=args.threads, spin_wait=False, decisions=True)
    sizes = [tuple(args.sample_size)] + list(args.verify_sizes)
    checks = [[synthetic_inputs(height, width, seed=1)[0]] for height, width in sizes]
    if predictor.batched:
        checks.append([synthetic_inputs(height, width, seed=2 + i)[0]
                       for i, (height, width) in enumerate(check_batch_sizes(args.sample_size))])
    failures, not_compared = [], []
    for items in checks:
        line, ok = compare_with_pytorch(model, predictor, items)
        print(line)
        if ok is None:
            not_compared.append(inputs_label(items))
        elif not ok:
            failures.append(inputs_label(items))
    if not_compared:
        print(f"warning: the graph was not compared with PyTorch at {', '.join(not_compared)}: PyTorch refuses those "
              "inputs (see above)", file=sys.stderr)
    return failures


def report_benchmark(model, path, args):
    # onnxruntime's waiting threads would slow down the PyTorch runs in between (tiny config: 2x and more)
    predictors = {"onnxruntime": OnnxPredictor(path, num_threads=args.threads, spin_wait=False)}
    for form in _other_forms(args):  # exported with the main graph (export_and_verify)
        predictors[f"onnxruntime_{form}"] = OnnxPredictor(os.path.join(args.output, f"model_{form}.onnx"),
                                                          num_threads=args.threads, spin_wait=False)
    rows = time_graphs(model, predictors, args.benchmark, args.warmup, args.repeats)
    names = list(predictors)
    header = "".join(f"{n + ' ms':>{len(n) + 5}}" for n in names)
    print(f"{'size':<12}{'pytorch ms':>12}{header}{'speed-up':>10}   ({args.threads} threads, median of "
          f"{args.repeats}, interleaved; onnxruntime: MSDA as {args.msda_form})")
    for row in rows:
        cells = "".join(f"{row[n + '_ms']:>{len(n) + 5}.0f}" for n in names)
        print(f"{row['size']:<12}{row['pytorch_ms']:>12.0f}{cells}{row['speedup']:>9.2f}x")
    report = {"threads": args.threads, "msda_form": args.msda_form, "rows": rows}
    if predictors["onnxruntime"].batched:
        report["batches"] = time_batches(model, predictors["onnxruntime"], args.benchmark, args.batch_size or 4,
                                         args.warmup, args.repeats)
        for row in report["batches"]:
            print(f"{row['size']}, {row['batch_size']} images one by one and as a batch, ms per image (median of "
                  f"{args.repeats}, interleaved): " + "; ".join(
                      f"{runtime} {row[runtime + '_one_by_one_ms_per_image']:.0f} and "
                      f"{row[runtime + '_batched_ms_per_image']:.0f} ({row[runtime + '_batched_over_one_by_one']:.2f}x)"
                      for runtime in ("pytorch", "onnxruntime")))
    write_json(os.path.join(args.output, "benchmark.json"), report)


def _json_number(value):
    return None if math.isnan(value) else value


def report_evaluation(cfg, model, path, args, init_checkpoint, weights):
    """COCO AP of the graph and of PyTorch on the config's test set: printed, and written to DIR/evaluation.json
    (the evaluators' files to DIR/evaluation/), both moved in once complete: an evaluation that fails or is
    interrupted leaves an earlier one as it was."""
    predictor = OnnxPredictor(path, num_threads=args.threads, spin_wait=False)
    unchecked = check_graph_fits_config(cfg, predictor)  # before the evaluations: they take minutes
    if unchecked:
        print(f"warning: {unchecked}; it is scored as the config says", file=sys.stderr)
    exported_from = graph_weights(predictor, init_checkpoint, weights)
    if exported_from:
        runs = {"ema": f"the EMA weights of {init_checkpoint!r}", "trained": f"the trained weights of "
                f"{init_checkpoint!r}"}.get(weights, "random weights")
        print(f"warning: {path} was exported from {exported_from} (its model.json), PyTorch runs {runs}: their AP "
              "differ for that reason too (train.model_ema.enabled picks the EMA weights)", file=sys.stderr)
    print("evaluating PyTorch, then the graph, on the config's test set ...", flush=True)
    # written into a temporary folder, then moved into DIR with evaluation.json: an interrupted evaluation left its
    # files cut short or beside an earlier evaluation.json
    with PartialPath(args.output, prefix=STAGE_PREFIX, suffix=STAGE_SUFFIX, folder=True) as stage:
        folders = {runtime: os.path.join(stage.path, "evaluation", runtime) for runtime in ("pytorch", "onnx")}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its own tables of each run; ours follows
            results = evaluate_onnx_and_pytorch(cfg, model, predictor, folders)
        dataset = cfg.dataloader.test.dataset.names
        dataset = dataset if isinstance(dataset, str) else ",".join(dataset)
        threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
        print(ap_table(results, f"COCO box AP on {dataset} ({results['num_images']} images, CPU, {threads}):"))
        report = {
            "config_file": args.config_file,
            "init_checkpoint": init_checkpoint,
            "graph": path,
            "dataset": dataset,
            "num_images": results["num_images"],
            **{runtime: {k: _json_number(v) for k, v in results[runtime].items()} for runtime in ("pytorch", "onnx")},
            "onnx_minus_pytorch": {k: _json_number(v) for k, v in compare_ap(results).items()},
        }
        with naming_final_file(stage.path, "evaluation.json", args.output):
            write_json(os.path.join(stage.path, "evaluation.json"), report)
        install_evaluation(stage.path, args.output)
    print(f"wrote {os.path.join(args.output, 'evaluation.json')}")
    return report


def main(args):
    """Returns the sizes where the exported graph and PyTorch differ (empty with --onnx: nothing is exported)."""
    require_packages("onnx", "onnxruntime")
    _check_arguments(args)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, args.opts)
    # train_net.py's lock on its output folder, held to the end: a second export (or a training, or a sweep) into
    # DIR is refused before the model loads, instead of moving its files in between ours
    with claim_output_dir(args.output, key="--output"):
        return _run(cfg, args)


def _run(cfg, args):
    """:func:`main`'s work, in its output folder ``args.output``, which it holds."""
    _print_removed_abandoned(args.output)  # no other export is running there: it would hold the folder
    if args.onnx is None:
        check_graph_targets(args.output)  # a folder in the way is found now, not after the tracing
    if args.evaluate:  # before the export: a config that cannot be evaluated fails in seconds
        if cfg.get("dataloader", None) is None or cfg.dataloader.get("test", None) is None:
            raise ValueError(f"{args.config_file} has no dataloader.test: --evaluate needs a test set")
        check_datasets_registered(cfg.dataloader.test)
        check_comparable_precision(cfg, "cpu")  # the tool runs PyTorch on the CPU
    init_checkpoint = (cfg.get("train", None) or {}).get("init_checkpoint", "")
    model, weights, trained_classes = _load_model(cfg, args, init_checkpoint)
    # before the export and the evaluations, which take minutes
    use = "the evaluation would score" if args.evaluate else "model.json would name"
    classes = model_classes(cfg, trained_classes, init_checkpoint, f"{use} the model's classes")
    if args.evaluate and classes.error is not None:  # what the evaluation reads
        raise classes.error

    failures, path = [], args.onnx
    if args.onnx is None:
        path, failures = export_and_verify(model, cfg, args, init_checkpoint, weights, classes)
        if args.benchmark and path:
            report_benchmark(model, path, args)
    if args.evaluate and path:
        report_evaluation(cfg, model, path, args, init_checkpoint, weights)
    if failures:
        # Query-ranking ties are taken into account above; a near-tie at the edge of a foreground or fine-grained
        # token set (rarer: one edge per set) could still change a few detections. Anything more is a problem.
        print(f"onnxruntime and PyTorch differ at {', '.join(failures)} (see above)", file=sys.stderr)
    return failures


def cli(args):
    """Exit status 1 when the graph and PyTorch differ at a checked size."""
    return 1 if main(args) else 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(cli, parse_args()))
