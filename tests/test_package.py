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
