"""Bad input gets one clear line naming the thing, from the command line."""
import os
import subprocess
import sys

import pytest

from engine_test_utils import REPO_ROOT, TOY_CONFIG, toy_dataset, train_net  # noqa: F401 (fixtures)


def _cli_error(train_net, capsys, *argv):
    code = train_net.cli(["--config-file", TOY_CONFIG, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    return err[-1]


def test_unknown_config_key_is_named_with_suggestion(train_net, toy_dataset, capsys):
    line = _cli_error(train_net, capsys, "train.max_iters=5")
    assert line.startswith("error: unknown config key 'train.max_iters'")
    assert "train.max_iter" in line.split("did you mean")[1]


def test_unknown_nested_key_under_lazy_call_is_rejected(train_net, toy_dataset, capsys):
    line = _cli_error(train_net, capsys, "model.num_querys=3")
    assert "unknown config key 'model.num_querys'" in line


def test_a_new_entry_of_a_plain_dict_is_shown_the_plus_form():
    from focus_detr.engine import load_config
    from focus_detr.engine.config import ConfigError

    config = os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py")
    with pytest.raises(ConfigError) as info:
        load_config(config, ["model.criterion.weight_dict.loss_bbox_dn=2.0"])
    assert str(info.value).endswith("(a new entry of a plain dict is added with "
                                    "+model.criterion.weight_dict.loss_bbox_dn=2.0)")
    cfg = load_config(config, ["+model.criterion.weight_dict.loss_bbox_dn=2.0"])
    assert dict(cfg.model.criterion.weight_dict) == {"loss_bbox_dn": 2.0}


@pytest.mark.parametrize("override, message", [
    # hydra's message quoted every override given and pointed at a column on a second line
    ("train.max_iter = 3", "cannot read config override 'train.max_iter = 3': LexerNoViableAltException: "
                           "train.max_iter = 3; write key=value without spaces around it"),
    ("train.max_iter=[1,", "cannot read config override 'train.max_iter=[1,': no viable alternative at input '[1,'"),
    # detectron2's own way to load a backbone without the model's prefix, refused without saying how to write it
    ("train.init_checkpoint=R-50.pkl?matching_heuristics=True", "cannot read config override "
     "'train.init_checkpoint=R-50.pkl?matching_heuristics=True': mismatched input '=' expecting <EOF>; a value "
     "holding '=' goes in quotes, inside the shell's: 'train.init_checkpoint=\"R-50.pkl?matching_heuristics=True\"'"),
    # the grammar takes ASCII only outside quotes: a path with an accented letter, without a word on quoting it
    ("train.output_dir=/data/ünï", "cannot read config override 'train.output_dir=/data/ünï': "
     "LexerNoViableAltException: train.output_dir=/data/ünï; a value with characters beyond ASCII goes in quotes, "
     "inside the shell's: 'train.output_dir=\"/data/ünï\"'"),
])
def test_an_override_that_cannot_be_read_is_named_alone(override, message):
    from focus_detr.engine import load_config
    from focus_detr.engine.config import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(os.path.join(REPO_ROOT, "configs", "focus_detr_r18_trees.py"), ["train.seed=1", override])
    assert str(info.value) == message


def test_constructor_argument_left_at_its_default_is_accepted(toy_dataset, tmp_path):
    from focus_detr.engine import load_config

    cfg = load_config(TOY_CONFIG, ["model.input_size=16", "dataloader.train.shuffle=False"])  # not set in the file
    assert cfg.model.input_size == 16 and cfg.dataloader.train.shuffle is False


def test_missing_checkpoint_is_named(train_net, toy_dataset, capsys, tmp_path):
    missing = tmp_path / "nope.pth"
    line = _cli_error(train_net, capsys, "--eval-only", f"train.init_checkpoint={missing}", f"train.output_dir={tmp_path}")
    assert line == f"error: checkpoint not found: {missing}"


def test_unregistered_dataset_is_named(train_net, toy_dataset, capsys):
    line = _cli_error(train_net, capsys, "dataloader.test.dataset.names=focus_detr_toyy")
    assert line.startswith("error: dataset 'focus_detr_toyy' is not registered (did you mean: focus_detr_toy")


def test_unreadable_image_is_named(train_net, capsys, tmp_path):
    from toy_detector import register_toy_dataset

    register_toy_dataset("focus_detr_toy_bad", str(tmp_path / "bad"), num_images=2, bad_image=True)
    line = _cli_error(
        train_net, capsys, "dataloader.train.dataset.names=focus_detr_toy_bad", "dataloader.train.shuffle=False",
        "dataloader.train.aspect_ratio_grouping=False", "train.max_iter=2", f"train.output_dir={tmp_path / 'out'}",
    )
    assert line.startswith("ValueError: cannot read image ") or line.startswith("error: cannot read image ")
    assert os.path.join("bad", "images", "toy_001.png") in line


def test_missing_config_file_from_the_shell(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), "--config-file", str(tmp_path / "none.py")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: config file not found: {tmp_path / 'none.py'}"


@pytest.mark.parametrize("override, message", [("train.device=cuda:0", "no CUDA GPU"), ("train.amp.precision=fp8", "train.amp.precision")])
def test_bad_device_or_precision(train_net, toy_dataset, capsys, tmp_path, override, message):
    import torch

    if override.startswith("train.device") and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    line = _cli_error(train_net, capsys, override, "train.amp.enabled=True", "train.max_iter=1", f"train.output_dir={tmp_path}")
    assert message in line


def test_unreachable_checkpoint_url_is_named(train_net, toy_dataset, capsys, tmp_path):
    # Port 9 (discard) on the loopback interface: nothing listens, the connection is refused at once.
    url = "http://127.0.0.1:9/model_final.pth"
    line = _cli_error(train_net, capsys, "--eval-only", f"train.init_checkpoint={url}", f"train.output_dir={tmp_path}")
    assert line.startswith(f"error: cannot fetch checkpoint {url}")


@pytest.mark.parametrize("override, message", [
    # a negative max_iter trained nothing and reported the AP of random weights with exit status 0
    ("train.max_iter=-5", "train.max_iter must be a positive integer, got -5"),
    ("train.max_iter=0", "train.max_iter must be a positive integer, got 0"),  # a traceback: division by zero
    ("train.log_period=0", "train.log_period must be a positive integer, got 0"),  # a traceback: modulo by zero
    ("train.eval_period=-1", "train.eval_period must be an integer >= 0 (0: evaluate at the end only), got -1"),
    # an IndexError at the first checkpoint, after the training before it
    ("train.checkpointer.max_to_keep=-1", "train.checkpointer.max_to_keep must be a whole number >= 1, or 0 / None "
                                          "to keep every checkpoint, got -1"),
    # a section replaced by a number: an AttributeError or TypeError once it was used
    ("optimizer=3", "wrong value for config key 'optimizer': '3' is not a section (set its entries, KEY.name=value, "
                    "or drop it: KEY=null) (it is a section now)"),
])
def test_a_schedule_that_cannot_run_is_one_line(train_net, toy_dataset, capsys, tmp_path, override, message):
    assert _cli_error(train_net, capsys, override, f"train.output_dir={tmp_path}") == f"error: {message}"
    assert not list(tmp_path.glob("model_*.pth"))


@pytest.mark.parametrize("flag", ["--num-gpus", "--num-machines"])
def test_no_process_at_all_is_one_line(train_net, toy_dataset, capsys, tmp_path, flag):
    # detectron2's launch quietly ran one process for --num-gpus 0 or -1
    line = _cli_error(train_net, capsys, flag, "0", f"train.output_dir={tmp_path}")
    assert line == f"error: {flag} must be at least 1, got 0"


@pytest.mark.parametrize("arguments, message", [
    # the other machines would wait for a rank that never comes
    (["--num-machines", "2", "--machine-rank", "5"], "--machine-rank must be between 0 and --num-machines - 1 = 1, "
                                                    "got 5"),
    # tracebacks inside torch's rendezvous
    (["--num-gpus", "2", "--dist-url", "foo"], "--dist-url must be tcp://HOST:PORT of the first machine (or auto on one "
                                               "machine), got 'foo'"),
    (["--num-machines", "2", "--dist-url", "auto"], "--dist-url must be tcp://HOST:PORT of the first machine (or auto "
                                                    "on one machine), got 'auto'"),
    (["--num-gpus", "2", "--dist-url", "tcp://127.0.0.1:abc"], "--dist-url must be tcp://HOST:PORT of the first "
                                                               "machine (or auto on one machine), got "
                                                               "'tcp://127.0.0.1:abc'"),
    # found by each process after the launch, among its warnings
    (["--num-gpus", "3", "dataloader.train.total_batch_size=2"], "dataloader.train.total_batch_size 2 cannot be split "
                                                                 "among 3 processes (--num-gpus x --num-machines): "
                                                                 "make it a multiple of the number of processes"),
])
def test_process_arguments_that_would_hang_or_fail_in_launch_are_one_line(train_net, toy_dataset, capsys, tmp_path,
                                                                         arguments, message):
    assert _cli_error(train_net, capsys, *arguments, f"train.output_dir={tmp_path}") == f"error: {message}"


@pytest.mark.parametrize("family, address", [("AF_INET", "127.0.0.1"), ("AF_INET6", "::1")])
def test_a_port_in_use_for_the_rendezvous_is_one_line(train_net, toy_dataset, capsys, tmp_path, family, address):
    # two tracebacks ending in EADDRINUSE
    import socket

    try:
        busy = socket.socket(getattr(socket, family), socket.SOCK_STREAM)
        busy.bind((address, 0))
    except OSError:
        pytest.skip(f"no {family} on this machine")
    with busy:
        busy.listen()
        port = busy.getsockname()[1]
        line = _cli_error(train_net, capsys, "--num-gpus", "2", "--dist-url", f"tcp://localhost:{port}",
                          f"train.output_dir={tmp_path}")
    assert line == (f"error: --dist-url port {port} cannot be listened on here: already in use; choose another port "
                    "(or --dist-url auto on one machine)")


def test_a_rendezvous_host_that_does_not_resolve_is_one_line(train_net, toy_dataset, capsys, tmp_path, monkeypatch):
    # torch's rendezvous retried it without a word until killed
    import socket

    def no_such_host(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)  # as a resolver answers, without asking one
    line = _cli_error(train_net, capsys, "--num-gpus", "2", "--dist-url", "tcp://nosuchhost:1234",
                      f"train.output_dir={tmp_path}")
    assert line == ("error: --dist-url host 'nosuchhost' cannot be resolved (Name or service not known): give the "
                    "first machine's address")


def test_one_machine_takes_a_free_port_not_the_fixed_default(train_net):
    # the default --dist-url is the same for every run of a user: a second multi-process run found it in use
    args = train_net.parse_args(["--config-file", "cfg.py", "--num-gpus", "2"])
    train_net._check_process_arguments(args)
    assert args.dist_url == "auto"
    args = train_net.parse_args(["--config-file", "cfg.py", "--num-gpus", "2", "--dist-url", "tcp://127.0.0.1:4000"])
    train_net._check_process_arguments(args)
    assert args.dist_url == "tcp://127.0.0.1:4000"


def test_a_key_given_twice_is_checked_with_its_last_value(train_net, toy_dataset, capsys, tmp_path):
    line = _cli_error(train_net, capsys, "train.max_iter=2", "train.max_iter=abc", f"train.output_dir={tmp_path}")
    assert line.startswith("error: wrong value for config key 'train.max_iter': 'abc' is not an integer")


def test_a_folder_given_as_the_checkpoint_is_said_to_be_one(train_net, toy_dataset, capsys, tmp_path):
    line = _cli_error(train_net, capsys, "--eval-only", f"train.init_checkpoint={tmp_path}",
                      f"train.output_dir={tmp_path / 'out'}")
    assert line == (f"error: checkpoint {tmp_path} is a folder, not a weights file: give a file in it, e.g. "
                    f"{tmp_path / 'model_final.pth'}")
