"""``key=value`` config overrides are accepted anywhere on a command line, with detectron2's parser and ours."""
import argparse
import functools

from detectron2.engine import default_argument_parser
import pytest

from focus_detr.engine.arguments import add_overrides_argument, image_size, parse_args_with_overrides


def test_detectron2_parser_takes_overrides_before_its_flags():
    args = parse_args_with_overrides(
        default_argument_parser(), ["--config-file", "c.py", "train.max_iter=5", "--eval-only", "a.b=1", "--resume"]
    )
    assert args.eval_only and args.resume
    assert args.opts == ["train.max_iter=5", "a.b=1"]


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ratios", type=float, nargs="+")
    parser.add_argument("--size", type=int, nargs=2)
    parser.add_argument("--output")
    parser.add_argument("--flag", action="store_true")
    add_overrides_argument(parser)
    return parser


def test_multi_value_option_stops_at_an_override():
    args = parse_args_with_overrides(_parser(), ["--ratios", "0.1", "0.2", "m.k=1", "--size", "3", "4", "+new=2", "~old"])
    assert args.ratios == [0.1, 0.2] and args.size == [3, 4]
    assert args.opts == ["m.k=1", "+new=2", "~old"]  # "~old" is not an override: it is left as a (bad) one


def test_values_that_contain_equals_signs_stay_with_their_option():
    args = parse_args_with_overrides(_parser(), ["--output", "run=3", "a.b=1", "--flag", "s3://bucket/x=1"])
    assert args.output == "run=3" and args.flag
    assert args.opts == ["a.b=1", "s3://bucket/x=1"]  # not an override: left for load_config to refuse
    assert parse_args_with_overrides(_parser(), ["--output=run=3"]).output == "run=3"


def test_image_sizes_are_height_by_width_and_bad_ones_are_one_line():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", type=image_size)
    assert parser.parse_args(["--sizes", "480x640", "1X2"]).sizes == [(480, 640), (1, 2)]
    fixture_size = functools.partial(image_size, minimum=32)
    for parse, text, message in ((image_size, "480,640", "image size must be HxW"), (image_size, "0x640", "positive"),
                                 (fixture_size, "16x64", "at least 32x32, got '16x64'")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)
