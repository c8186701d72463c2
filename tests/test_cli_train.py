"""The training commands end to end on a small corpus: pretrain, resume, fill-mask, encode,
finetune; and every kind of bad input as one line on stderr with a non-zero exit, leaving
what was saved untouched."""
import os
import subprocess
import sys

import numpy as np
import pytest

from minibert.cli import main
from minibert.corpora import stdlib_documents

SMALL = ["--preset", "tiny", "--vocab-size", "400", "--steps", "4", "--batch-size", "4",
         "--seq-len", "32", "--save-every", "2", "--eval-every", "2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A few dozen real documents (standard-library docstrings) as a corpus file."""
    docs = stdlib_documents(max_files=60)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "pretrain")
    assert main(["pretrain", "--corpus", corpus, "--out", out, *SMALL]) == 0
    return out


def tree_bytes(root):
    """Every file under root and its bytes: to prove a failed command touched nothing."""
    found = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                found[os.path.relpath(p, root)] = fh.read()
    return found


def one_line_error(capsys, argv, needle, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err


# ------------------------------------------------------------------------------ the main path
@pytest.mark.slow
def test_pretrain_writes_a_complete_run(run_dir):
    names = set(os.listdir(run_dir))
    assert {"vocab.txt", "latest", "loss_curve.png", "checkpoint-0000004"} <= names
    ck = os.path.join(run_dir, "checkpoint-0000004")
    assert {"config.json", "model.safetensors", "optimizer.npz", "trainer_state.json",
            "vocab.txt", "tokenizer_config.json"} <= set(os.listdir(ck))


def _assert_same_weights_and_optimizer(run_a, run_b, checkpoint):
    """The two runs' ``checkpoint`` holds the same model and optimizer bytes."""
    fa = tree_bytes(os.path.join(run_a, checkpoint))
    fb = tree_bytes(os.path.join(run_b, checkpoint))
    assert fa["model.safetensors"] == fb["model.safetensors"]
    assert fa["optimizer.npz"] == fb["optimizer.npz"]


@pytest.mark.slow
def test_pretrain_resume_matches_straight_run(corpus, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["pretrain", "--corpus", corpus, "--out", a, *SMALL]) == 0
    assert main(["pretrain", "--corpus", corpus, "--out", b, *SMALL, "--stop-at", "2"]) == 0
    assert main(["pretrain", "--corpus", corpus, "--out", b, *SMALL, "--resume"]) == 0
    _assert_same_weights_and_optimizer(a, b, "checkpoint-0000004")


@pytest.mark.slow
def test_fill_mask_and_encode(run_dir, capsys):
    assert main(["fill-mask", run_dir, "Return the [MASK] of the list.", "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[MASK] #1:") and len(out.strip().splitlines()) == 4
    probs = [float(line.split()[-1]) for line in out.strip().splitlines()[1:]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    assert main(["encode", run_dir, "Return the value."]) == 0
    out = capsys.readouterr().out
    assert "tokens" in out and "[CLS]" in out and "pooled output: dim 128" in out


@pytest.mark.slow
def test_finetune_from_the_run(run_dir, tmp_path, capsys):
    rows = ["text,label"]
    rng = np.random.default_rng(0)
    for i in range(40):
        label = i % 2
        word = "list" if label else "file"
        rows.append(f"\"return the {word} number {rng.integers(100)}\",{'yes' if label else 'no'}")
    data = tmp_path / "clf.csv"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = str(tmp_path / "ft")
    assert main(["finetune", "--checkpoint", run_dir, "--data", str(data), "--out", out,
                 "--steps", "4", "--batch-size", "4", "--seq-len", "16"]) == 0
    text = capsys.readouterr().out
    assert "held-out accuracy" in text and "(trivial baseline: accuracy 0.5000" in text
    assert {"checkpoint-0000004", "metrics.json", "predictions.tsv",
            "confusion_matrix.png"} <= set(os.listdir(out))


# ------------------------------------------------------------------------------ bad input
def test_bad_corpus(tmp_path, capsys):
    one_line_error(capsys, ["pretrain", "--corpus", str(tmp_path / "nope.txt"), "--out",
                            str(tmp_path / "o")], "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    one_line_error(capsys, ["pretrain", "--corpus", str(empty), "--out", str(tmp_path / "o")],
                   "empty.txt")
    assert not os.path.exists(tmp_path / "o") or not os.listdir(tmp_path / "o")


def test_bad_vocab(corpus, tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n", encoding="utf-8")
    one_line_error(capsys, ["pretrain", "--corpus", corpus, "--vocab", str(vocab), "--out",
                            str(tmp_path / "o"), *SMALL[:2]], "[MASK]")
    one_line_error(capsys, ["pretrain", "--corpus", corpus, "--vocab", str(tmp_path / "no.txt"),
                            "--out", str(tmp_path / "o")], "no.txt")


@pytest.mark.parametrize("args,needle", [
    (["--preset", "huge"], "preset='huge'"),
    (["--batch-size", "0"], "batch_size=0"),
    (["--seq-len", "100000"], "seq_len=100000"),
    (["--device", "tpu"], "device='tpu'"),
    (["--steps", "0"], "steps=0"),
])
def test_bad_pretrain_options(args, needle, tmp_path, capsys):
    one_line_error(capsys, ["pretrain", "--out", str(tmp_path / "o"), *args], needle)
    assert not os.path.exists(tmp_path / "o")          # rejected before anything was written


@pytest.mark.parametrize("args,needle", [
    (["--masking", "dynamic", "--dupe-factor", "3"], "dupe_factor=3 contradicts masking='dynamic'"),
    (["--recipe", "fast", "--dupe-factor", "2"], "dupe_factor=2 contradicts masking='dynamic'"),
    (["--steps", "10", "--warmup-steps", "20"], "warmup_steps=20 contradicts steps=10"),
    (["--vocab", "v.txt", "--vocab-size", "300"], "vocab_size=300 contradicts vocab='v.txt'"),
    (["--seq-len", "16", "--max-predictions-per-seq", "15"],
     "max_predictions_per_seq=15 contradicts seq_len=16"),
    (["--masked-lm-prob", "1.5"], "masked_lm_prob=1.5"),
    (["--dropout", "1"], "dropout=1.0"),
    (["--recipe", "nope"], "invalid choice"),
])
def test_contradicting_recipe_flags(args, needle, tmp_path, capsys):
    """Refused in one line with exit 2 before anything is read or written."""
    if needle == "invalid choice":                    # argparse's own message: usage + error
        with pytest.raises(SystemExit) as e:
            main(["pretrain", "--out", str(tmp_path / "o"), *args])
        assert e.value.code == 2
    else:
        one_line_error(capsys, ["pretrain", "--out", str(tmp_path / "o"), *args], needle)
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.slow
def test_bert_recipe_runs_and_resumes_exactly(corpus, tmp_path, capsys):
    """The original recipe (static masks, NSP, dropout) stays available and exact on resume;
    the summary prints the baseline beside the accuracy, and NSP accuracy."""
    args = ["pretrain", "--recipe", "bert", "--corpus", corpus, *SMALL]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main([*args, "--out", a]) == 0
    out = capsys.readouterr().out
    assert "recipe 'bert'" in out and "nsp True" in out and "static masks" in out
    assert "most-frequent-token baseline" in out and "NSP accuracy" in out and "tokens/s" in out
    assert main([*args, "--out", b, "--stop-at", "2"]) == 0
    assert main([*args, "--out", b, "--resume"]) == 0
    _assert_same_weights_and_optimizer(a, b, "checkpoint-0000004")


@pytest.mark.slow
def test_default_recipe_reports_the_baseline(run_dir, capsys):
    import json
    with open(os.path.join(run_dir, "checkpoint-0000004", "trainer_state.json")) as fh:
        state = json.load(fh)
    ev = state["evals"][-1]
    assert 0 < ev["mlm_baseline"] < 1 and "mlm_acc" in ev


@pytest.mark.slow
def test_existing_run_is_untouched(run_dir, corpus, capsys):
    before = tree_bytes(run_dir)
    one_line_error(capsys, ["pretrain", "--corpus", corpus, "--out", run_dir, *SMALL],
                   "already holds a training run")
    assert tree_bytes(run_dir) == before


@pytest.mark.slow
def test_bad_checkpoints(run_dir, tmp_path, capsys):
    one_line_error(capsys, ["fill-mask", str(tmp_path / "missing"), "a [MASK]"], "missing")
    one_line_error(capsys, ["encode", str(tmp_path / "missing"), "a b"], "missing")
    one_line_error(capsys, ["fill-mask", run_dir, "no mask here"], "has no [MASK]")
    # a corrupt copy of the checkpoint: truncated weights
    import shutil
    bad = tmp_path / "corrupt"
    shutil.copytree(os.path.join(run_dir, "checkpoint-0000004"), bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    one_line_error(capsys, ["fill-mask", str(bad), "a [MASK]"], "corrupt")
    one_line_error(capsys, ["finetune", "--checkpoint", str(tmp_path / "missing"), "--out",
                            str(tmp_path / "ft")], "missing")


def test_errors_from_a_real_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "minibert", "pretrain", "--corpus",
                        str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_help_for_every_training_subcommand():
    for sub in ("pretrain", "finetune", "fill-mask", "encode"):
        r = subprocess.run([sys.executable, "-m", "minibert", sub, "--help"], capture_output=True,
                           text=True)
        assert r.returncode == 0 and "usage: minibert" in r.stdout
