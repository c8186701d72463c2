"""The minibert command: each subcommand runs, bad input is one line and a non-zero exit."""
import subprocess
import sys

import pytest

from minibert.cli import build_parser, main


def test_params_base(capsys):
    assert main(["params", "--preset", "base"]) == 0
    out = capsys.readouterr().out
    assert "109,482,240" in out and "(V + P + T) H + 2H" in out


def test_params_pretraining_large(capsys):
    assert main(["params", "--preset", "base", "--head", "pretraining"]) == 0
    assert "110,106,428" in capsys.readouterr().out


@pytest.mark.slow
def test_gradcheck_table(capsys):
    assert main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    assert "attention (mask, dropout)" in out and "BertForPreTraining" in out and "0 failed" in out


@pytest.mark.slow
def test_demo_small(capsys):
    assert main(["demo", "--preset", "tiny", "--batch-size", "2", "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "loss" in out and "12 passed, 0 failed" in out


@pytest.mark.parametrize("argv,needle", [
    (["params", "--preset", "huge"], "preset='huge' is not known"),
    (["demo", "--seq-len", "100000"], "--seq-len=100000"),
    (["demo", "--batch-size", "0"], "--batch-size=0"),
    (["demo", "--device", "tpu"], "device='tpu'"),
    (["params", "--head", "nope"], "head='nope'"),
])
def test_bad_input_is_one_line(argv, needle):
    r = subprocess.run([sys.executable, "-m", "minibert", *argv], capture_output=True, text=True)
    assert r.returncode == 2
    assert needle in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_help_for_every_subcommand():
    for sub in ("demo", "gradcheck", "params", "info"):
        r = subprocess.run([sys.executable, "-m", "minibert", sub, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: minibert" in r.stdout


def _subparsers():
    import argparse
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_command_and_option_has_help_with_its_default():
    """Each command's help prints; every option has a help line that states its default,
    every positional argument a help line."""
    missing = []
    commands = _subparsers()
    assert set(commands) == {"demo", "gradcheck", "params", "pretrain", "finetune", "fill-mask",
                             "encode", "inspect", "trace", "info"}
    for name, p in commands.items():
        text = p.format_help()                       # raises on a stray % in a help line
        assert f"usage: minibert {name}" in text
        for action in p._actions:
            if action.dest == "help":
                continue
            if not action.help:
                missing.append(f"{name} {action.dest}: no help")
            elif action.option_strings and "(default: " not in action.help:
                missing.append(f"{name} {action.option_strings[0]}: no default in {action.help!r}")
    assert not missing, missing


def test_finetune_help_prints_percent_once():
    text = " ".join(_subparsers()["finetune"].format_help().split())
    assert "20% is held out" in text and "%%" not in text
    assert "(default: runs/pretrain)" in text and "(default: 2e-4; 1e-3 with --feature-based)" in text


def test_pretrain_help_names_each_recipes_value():
    text = " ".join(_subparsers()["pretrain"].format_help().split())
    assert "(default: the recipe's: fast: 2500, bert: 300)" in text
    assert "fast: off, bert: on" in text                # --nsp
