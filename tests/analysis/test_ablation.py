import json
import math
import os

import pytest
import torch
from detectron2.structures import Boxes, Instances

from focus_detr.analysis.ablation import (
    VARIANTS,
    planned_runs,
    read_finished_run,
    run_pending,
    variant_overrides,
    write_finished_run,
)
from focus_detr.analysis.ablation_report import (
    selection_columns,
    summarize_variants,
    write_csv,
    write_markdown,
    write_plot,
)
from focus_detr.engine import build_model, load_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TREES_CONFIG = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")


def _variant_model(variant):
    base = load_config(TREES_CONFIG)
    torch.manual_seed(0)
    return build_model(load_config(TREES_CONFIG, variant_overrides(base, variant)), "cpu")


def _image(height=96, width=128):
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0]]))
    instances.gt_classes = torch.tensor([0, 0])
    return {"image": image, "height": height, "width": width, "instances": instances}


def _selection(model):
    model.eval()
    with torch.no_grad():
        return model.forward_inference([_image()], return_token_selection=True)[0]["token_selection"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_builds_and_trains(variant):
    model = _variant_model(variant)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for _ in range(2):
        losses = model([_image()])
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()


def test_overrides_do_what_their_names_say():
    full, full_selection = _variant_model("full"), None
    full_selection = _selection(full)
    num_tokens = len(full_selection["foreground_logits"])

    no_top_down = _variant_model("no_top_down")
    no_top_down.load_state_dict(full.state_dict())  # the same weights: only the modulation switch differs
    logits, full_logits = _selection(no_top_down)["foreground_logits"], full_selection["foreground_logits"]
    coarsest = int(full_selection["spatial_shapes"][-1].prod())  # scored first: nothing coarser modulates it
    assert torch.equal(logits[-coarsest:], full_logits[-coarsest:])
    assert not torch.equal(logits[:-coarsest], full_logits[:-coarsest])

    no_cascade = _selection(_variant_model("no_cascade"))["foreground_inds"]
    assert len({len(inds) for inds in no_cascade}) == 1  # every layer keeps the first layer's tokens
    assert len(no_cascade[0]) == len(full_selection["foreground_inds"][0]) < num_tokens

    assert [len(i) for i in _selection(_variant_model("dense"))["foreground_inds"]] == [num_tokens] * 3
    assert all(len(i) == 0 for i in _selection(_variant_model("no_fine_grained_attention"))["fine_grained_inds"])

    random_selection = _selection(_variant_model("random_selection"))
    assert [len(i) for i in random_selection["foreground_inds"]] == [len(i) for i in full_selection["foreground_inds"]]
    foreground_only = _variant_model("foreground_only_scoring")
    assert all(layer.fine_grained_scoring == "foreground" for layer in foreground_only.transformer.encoder.layers)


def test_unknown_variant_and_non_focus_detr_config_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown ablation variant.*no_encoder"):
        planned_runs("out", ["full", "no_encoder"], [1])
    with pytest.raises(ValueError, match="defines no 'model'"):
        load_config(os.path.join(REPO_ROOT, "configs", "common", "optim.py"))
    not_focus_detr = load_config(os.path.join(REPO_ROOT, "configs", "testing", "focus_detr_tiny_fixture.py"))
    not_focus_detr.model.transformer = None  # set in a config file: the command line refuses this null itself
    with pytest.raises(ValueError, match="not a Focus-DETR config"):
        variant_overrides(not_focus_detr, "full")


def test_runs_go_seed_by_seed_and_finished_runs_are_skipped(tmp_path):
    runs = planned_runs(str(tmp_path), ["full", "dense"], [1, 2])
    assert [(r.variant, r.seed) for r in runs] == [("full", 1), ("dense", 1), ("full", 2), ("dense", 2)]
    trained = []

    def fake_train(run):
        trained.append((run.variant, run.seed))
        if len(trained) == 3:
            raise KeyboardInterrupt  # the study is stopped during its third run
        return {"AP": float(len(trained))}

    with pytest.raises(KeyboardInterrupt):
        run_pending(runs, fake_train, log=lambda line: None)
    assert read_finished_run(runs[2]) is None
    with open(runs[1].record_path, "w") as f:
        f.write('{"variant": "dense", "se')  # a record cut short: the run counts as unfinished
    records = run_pending(runs, fake_train, log=lambda line: None)
    assert trained[3:] == [("dense", 1), ("full", 2), ("dense", 2)]
    assert [r["AP"] for r in records] == [1.0, 4.0, 5.0, 6.0]


@pytest.mark.parametrize("edit", [
    # each reached the report: a KeyError or TypeError traceback, a ValueError naming no file, or infinities summarised
    {"AP": None}, {"AP": "high"}, {"AP": float("inf")}, {"APs": True}, {"train_minutes": "ten"},
    {"eval_results": [1]}, {"AP": 1.0, "delete": "AP"},
])
def test_an_edited_record_is_evaluated_again_not_reported(tmp_path, edit):
    run = planned_runs(str(tmp_path), ["full"], [1])[0]
    write_finished_run(run, {"AP": 5.0, "AP50": 18.0, "train_minutes": 8.0, "eval_results": {}})
    assert read_finished_run(run)["AP"] == 5.0
    with open(run.record_path) as f:
        record = json.load(f)
    record.update({key: value for key, value in edit.items() if key != "delete"})
    record.pop(edit.get("delete"), None)
    with open(run.record_path, "w") as f:
        json.dump(record, f)
    assert read_finished_run(run) is None
    assert run_pending([run], lambda run: {"AP": 6.0}, log=lambda line: None)[0]["AP"] == 6.0


def test_selection_columns_of_an_edited_record_are_nan():
    columns = selection_columns({"selection_quality": {"object_recall/layerX": 90.0, "object_recall/layer2": "high",
                                                       "foreground_precision/layer2": 55.0}})
    assert math.isnan(columns["recall_last_layer"]) and columns["precision_last_layer"] == 55.0


def test_a_run_another_invocation_holds_is_left_to_it(tmp_path):
    import fcntl

    runs = planned_runs(str(tmp_path), ["full", "dense"], [1])
    os.makedirs(runs[0].folder)
    with open(os.path.join(runs[0].folder, ".ablation_run.lock"), "a") as held:  # as another invocation holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        records = run_pending(runs, lambda run: {"AP": 1.0}, log=lambda line: None)
        assert records[0] is None and records[1]["AP"] == 1.0

        def train_while_the_other_finishes(run):
            write_finished_run(runs[0], {"AP": 3.0})  # the other invocation finishes its run meanwhile
            return {"AP": 1.0}

        os.remove(runs[1].record_path)
        records = run_pending(runs, train_while_the_other_finishes, log=lambda line: None)
    assert [r["AP"] for r in records] == [3.0, 1.0]  # its record is picked up at the end
    os.remove(runs[0].record_path)
    assert run_pending(runs, lambda run: {"AP": 2.0}, log=lambda line: None)[0]["AP"] == 2.0  # released: it runs


def test_summary_compares_the_seed_ranges():
    rows = [
        {"variant": "full", "seed": 1, "AP": 5.0}, {"variant": "full", "seed": 2, "AP": 6.0},
        {"variant": "dense", "seed": 1, "AP": 5.5}, {"variant": "dense", "seed": 2, "AP": 7.0},
        {"variant": "random_selection", "seed": 1, "AP": 1.0}, {"variant": "random_selection", "seed": 2, "AP": 2.0},
        {"variant": "no_top_down", "seed": 1, "AP": 9.0},
    ]
    summary = {entry["variant"]: entry for entry in summarize_variants(rows)}
    assert summary["full"]["mean"] == 5.5 and summary["full"]["exceeds_seed_spread"] is None
    assert summary["dense"]["difference"] == pytest.approx(0.75)
    assert summary["dense"]["exceeds_seed_spread"] is False  # [5.5, 7] overlaps [5, 6]
    assert summary["random_selection"]["exceeds_seed_spread"] is True
    assert summary["no_top_down"]["exceeds_seed_spread"] is None  # one seed: no spread to compare


def test_a_seed_without_ap_is_not_counted_as_one():
    # a run that detects nothing scores AP NaN: it was counted as a seed, and one run's AP made the verdict "exceeds
    # the seed spread: yes" against full's two
    nan = float("nan")
    rows = [{"variant": "full", "seed": 1, "AP": 6.1}, {"variant": "full", "seed": 2, "AP": 3.3},
            {"variant": "random_selection", "seed": 1, "AP": nan},
            {"variant": "random_selection", "seed": 2, "AP": 9.0}]
    entry = {e["variant"]: e for e in summarize_variants(rows)}["random_selection"]
    assert (entry["seeds"], entry["runs"], entry["mean"]) == (1, 2, 9.0)
    assert entry["exceeds_seed_spread"] is None
    assert (entry["paired_seeds"], entry["difference"]) == (1, pytest.approx(9.0 - 3.3))  # seed 2 against seed 2


def test_differences_pair_the_seeds_both_variants_have(tmp_path):
    # a report written while another invocation still trained dense seed 2 (as the audit's runs were): dense seed 1
    # minus the mean of full's seeds 1 and 2 is -0.05, though against the same seed dense is +0.05
    rows = [{"variant": "dense", "seed": 1, "AP": 0.109, "AP50": 0.5},
            {"variant": "full", "seed": 1, "AP": 0.059, "AP50": 0.3},
            {"variant": "full", "seed": 2, "AP": 0.247, "AP50": 1.4},
            {"variant": "no_cascade", "seed": 3, "AP": 0.2, "AP50": 1.0}]
    summary = {entry["variant"]: entry for entry in summarize_variants(rows)}
    assert summary["dense"]["difference"] == pytest.approx(0.05)
    assert summary["dense"]["paired_seeds"] == 1 and summary["dense"]["exceeds_seed_spread"] is None
    assert summary["dense"]["mean"] == pytest.approx(0.109)  # the variant's own mean stays over all its seeds
    assert math.isnan(summary["no_cascade"]["difference"]) and summary["no_cascade"]["paired_seeds"] == 0
    write_markdown(rows, {"full": [], "dense": [], "no_cascade": []}, str(tmp_path / "a.md"), "test")
    markdown = (tmp_path / "a.md").read_text()
    assert "| 0.50 | +0.05 (1 seed) | n/a (needs 2 shared seeds) |" in markdown
    assert "| n/a (no seed in common) | n/a (needs 2 shared seeds) |" in markdown


def test_the_seed_spread_is_compared_over_the_shared_seeds():
    # full's seed 3 (AP 1.0) widened full's range to overlap dense's, though dense beat full on both seeds they share
    rows = [{"variant": "full", "seed": 1, "AP": 5.0}, {"variant": "full", "seed": 2, "AP": 5.2},
            {"variant": "full", "seed": 3, "AP": 1.0},
            {"variant": "dense", "seed": 1, "AP": 6.0}, {"variant": "dense", "seed": 2, "AP": 6.5}]
    entry = {e["variant"]: e for e in summarize_variants(rows)}["dense"]
    assert entry["paired_seeds"] == 2 and entry["exceeds_seed_spread"] is True
    assert entry["difference"] == pytest.approx(1.15)


def test_the_verdict_names_the_ranges_it_compared_and_a_study_without_full_says_so(tmp_path):
    # dense's row shows 9-13 over its three seeds, overlapping full's 10-11, beside a bare "yes" (over seeds 1-2);
    # without full, every row said "no seed in common" / "needs 2 shared seeds"
    rows = [{"variant": variant, "seed": seed, "AP": ap, "AP50": 1}
            for variant, seed, ap in (("full", 1, 10.0), ("full", 2, 11.0), ("dense", 1, 12.0), ("dense", 2, 13.0),
                                      ("dense", 3, 9.0))]
    write_markdown(rows, {"full": [], "dense": []}, str(tmp_path / "a.md"), "test")
    assert "| 9.00-13.00 | 1.00 | +2.00 (2 seeds) | yes (12.00-13.00 vs 10.00-11.00, seeds 1-2) |" in (
        tmp_path / "a.md").read_text()
    write_markdown(rows[2:], {"dense": []}, str(tmp_path / "b.md"), "test")
    assert "| n/a (no full in this study) | n/a (no full in this study) |" in (tmp_path / "b.md").read_text()


def test_selection_columns_read_the_last_encoder_layer():
    quality = {"object_recall/layer0": 99.0, "object_recall/layer0/small": 98.0, "foreground_precision/layer0": 40.0,
               "object_recall/layer2": 90.0, "object_recall/layer2/small": 80.0, "foreground_precision/layer2": 60.0,
               "object_recall/layer2/level0": 1.0}
    assert selection_columns({"selection_quality": quality}) == {
        "recall_last_layer": 90.0, "recall_small_last_layer": 80.0, "precision_last_layer": 60.0}
    assert all(math.isnan(v) for v in selection_columns({"bbox": {}}).values())


def test_reports_are_written(tmp_path):
    rows = [
        {"variant": v, "seed": s, "AP": ap, "AP50": 2 * ap, "AP75": 0.0, "APs": 0.0, "APm": ap, "APl": ap,
         "gflops": g, "latency_ms": 50.0 + g, "train_minutes": 9.0, "recall_last_layer": 90.0 + s * 10 / 3,
         "recall_small_last_layer": float("nan"), "precision_last_layer": 50.0}
        for v, g in (("full", 3.0), ("dense", 4.5)) for s, ap in ((1, 5.0), (2, 4.0))
    ]
    write_csv(rows, str(tmp_path / "a.csv"))
    write_markdown(rows, {"full": [], "dense": ["x=1"]}, str(tmp_path / "a.md"), "test",
                   shared_overrides=["y=2", "z=3"])
    write_plot(rows, str(tmp_path / "a.png"), "test")
    assert (tmp_path / "a.csv").read_text().splitlines()[1].startswith("full,1,5.0,10.0")
    markdown = (tmp_path / "a.md").read_text()
    assert ("| dense | 2 | 4.50 | 4.00-5.00 | 9.00 | +0.00 (2 seeds) | "
            "no, within seed spread (4.00-5.00 vs 4.00-5.00, seeds 1-2) | 4.500 |") in markdown
    rows[-1]["AP"] = float("nan")  # dense, seed 2: no detections
    write_markdown(rows, {"full": [], "dense": ["x=1"]}, str(tmp_path / "b.md"), "test")
    assert "| dense | 1 of 2 | 5.00 | 5.00-5.00 |" in (tmp_path / "b.md").read_text()
    assert markdown.splitlines()[4].endswith("| 95.0 / n/a / 50.0 |")  # full: no small objects measured
    assert "`dense` (" in markdown and "`x=1`" in markdown
    assert "- every variant (given after the variant's own): `y=2` `z=3`" in markdown  # the user's overrides
    assert (tmp_path / "a.png").stat().st_size > 10_000
