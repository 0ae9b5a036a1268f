"""The package's documented surface: every exported name resolves, and the cheap front end
stays free of torch (a user who only writes trials as text never pays for it)."""

import subprocess
import sys

import pytest

import vizier_omnipred


def test_every_exported_name_resolves_and_is_listed():
    for name in vizier_omnipred.__all__:
        assert getattr(vizier_omnipred, name) is not None, name
        assert name in dir(vizier_omnipred)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="NoSuchThing"):
        vizier_omnipred.NoSuchThing  # noqa: B018


def test_package_and_text_codec_import_without_torch():
    code = ("import sys, vizier_omnipred, vizier_omnipred.text, vizier_omnipred.numbers; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_command_line_builds_without_the_vizier_service():
    """`pretrain` and the benchmarks run where only pyvizier and torch are installed (a GPU box with
    a minimal environment): building the parser must not import the server, its gRPC servicers or
    its datastore (sqlalchemy, portpicker), nor Vizier's benchmarks and through them JAX (the
    HPOBench dataset names come from `corpus.hpobench_datasets`)."""
    code = ("import sys; from vizier_omnipred.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('vizier_omnipred.service', 'vizier._src.service.vizier_server', 'sqlalchemy', "
            "'portpicker', 'vizier.benchmarks', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("argv, option", [
    (["bench", "regression", "--threads", "-1"], "--threads"),
    (["bench", "ab", "--threads", "-2"], "--threads"),
    (["bench", "service-load", "--threads", "-1"], "--threads"),
    (["bench", "scratch-fit", "--threads", "-1"], "--threads"),
    (["bench", "token-loss", "--checkpoint", "x", "--num-scored", "0"], "--num-scored"),
    (["bench", "token-loss", "--checkpoint", "x", "--device", "banana"], "--device"),
    (["bench", "fold-pretrain", "--device", "banana"], "--device"),
    (["pretrain", "--device", "banana"], "--device"),
    (["pretrain", "--num-threads", "-1"], "--num-threads"),
    (["pretrain", "--precision", "float16"], "--precision"),
    (["bench", "fold-pretrain", "--precision", "half"], "--precision"),
    (["warm-start", "--history", "x", "--metric", "y:min", "--device", "banana"], "--device"),
    (["demo", "--device", "banana"], "--device"),
    (["demo", "--threads", "-1"], "--threads"),
])
def test_bad_threads_devices_and_counts_are_refused_before_any_work(argv, option, capsys):
    """One line from argparse naming the option (exit status 2), not a traceback from
    `torch.set_num_threads` or from the first tensor sent to the device."""
    from vizier_omnipred.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "Traceback" not in err


def test_a_gpu_this_machine_lacks_is_refused_by_name():
    import torch

    from vizier_omnipred.model import resolve_device
    from vizier_omnipred.regressor import OmniPredRegressor

    with pytest.raises(ValueError, match="unknown torch device 'banana'"):
        OmniPredRegressor.from_scratch("tiny", device="banana")
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 on a CPU machine)
    with pytest.raises(ValueError, match=f"device '{missing}' requested but torch sees"):
        resolve_device(missing)
    assert resolve_device(None).type == "cpu"
