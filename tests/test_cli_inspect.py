"""``minibert inspect`` on a minibert run directory and on Hugging Face directories it has
never seen (BertForPreTraining as pytorch_model.bin, BertForMaskedLM without a pooler as
model.safetensors, a sequence classifier); bad input is one line, exit 2, nothing written."""
import json
import os
import shutil

import numpy as np
import pytest

from minibert import BertConfig, BertForPreTraining
from minibert.cli import main
from minibert.internals import InternalsMonitor, load_for_inspection, param_group

HERE = os.path.dirname(__file__)
VOCAB = os.path.join(HERE, "data", "bert-base-uncased-vocab.txt")
TEXT = "the capital of france is [MASK] ."


def tiny():
    return BertConfig.preset("tiny", vocab_size=30522, max_position_embeddings=32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A minibert run directory: checkpoint-0000001 with the tokenizer, and ``latest``."""
    root = tmp_path_factory.mktemp("run")
    ckpt = root / "checkpoint-0000001"
    model = BertForPreTraining(tiny(), seed=3)
    model.save_pretrained(str(ckpt))
    shutil.copy(VOCAB, ckpt / "vocab.txt")
    (root / "latest").write_text("checkpoint-0000001\n")
    return str(root)


def _hf_dir(tmp_path, cls_name, safe, **extra):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    d = {k: v for k, v in tiny().to_dict().items()
         if k not in ("model_type", "attn_implementation", "classifier_dropout")}
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(transformers.BertConfig(**{**d, **extra}))
    path = tmp_path / cls_name
    model.save_pretrained(str(path), safe_serialization=safe)
    shutil.copy(VOCAB, path / "vocab.txt")
    return str(path)


def _inspect(capsys, checkpoint, out, *more):
    rc = main(["inspect", checkpoint, TEXT, "--out", str(out), "--steps", "8", *more])
    return rc, capsys.readouterr()


@pytest.mark.slow
def test_inspect_a_minibert_run(run_dir, tmp_path, capsys):
    out = tmp_path / "insp"
    rc, cap = _inspect(capsys, run_dir, out, "--pair", "paris is a city .")
    assert rc == 0, cap.err
    files = set(os.listdir(out))
    assert {"attention_grid.png", "attention_layer_0.png", "attention_layer_1.png",
            "head_stats.json", "head_importance.png", "head_importance.json",
            "attributions.png", "attributions.json", "logit_lens.json", "attention.json",
            "report.json"} <= files
    for f in files:
        if f.endswith(".png"):
            assert os.path.getsize(out / f) < 300_000
    viz = json.loads((out / "attention.json").read_text())
    S = len(viz["tokens"])
    assert viz["tokens"][0] == "[CLS]" and "[MASK]" in viz["tokens"]
    assert np.array(viz["attention"]).shape == (2, 1, 2, S, S)          # (L, batch, A, S, S)
    # each entry rounded to 4 decimals (error <= 5e-5): a row of S sums to 1 within S * 5e-5
    assert np.allclose(np.array(viz["attention"]).sum(-1), 1, rtol=0, atol=S * 5e-5 + 1e-7)
    report = json.loads((out / "report.json").read_text())
    (t,) = report["targets"]
    assert t["position"] == viz["tokens"].index("[MASK]") and len(t["logit_lens"]) == 3
    assert abs(t["delta"]) <= 1e-2 * abs(t["f_input"] - t["f_baseline"]) + 1e-5
    assert "head statistics" in cap.out and "logit lens" in cap.out and "[MASK] at" in cap.out
    # a second run replaces the first one's directory
    rc, cap = _inspect(capsys, run_dir, out)
    assert rc == 0, cap.err


@pytest.mark.slow
@pytest.mark.parametrize("cls_name, safe", [("BertForPreTraining", False),
                                            ("BertForMaskedLM", True)])
def test_inspect_a_hugging_face_directory(tmp_path, capsys, cls_name, safe):
    path = _hf_dir(tmp_path, cls_name, safe)
    model, tok, kind = load_for_inspection(path)
    assert kind == "mlm"
    out = tmp_path / "insp"
    rc, cap = _inspect(capsys, path, out)
    assert rc == 0, cap.err
    assert "logit lens" in cap.out and (out / "attention_grid.png").is_file()


@pytest.mark.slow
def test_inspect_a_classifier_and_data(tmp_path, capsys):
    path = _hf_dir(tmp_path, "BertForSequenceClassification", True, num_labels=3)
    data = tmp_path / "held_out.txt"
    data.write_text("a first sentence .\nanother one here .\n\nand a third .\n")
    out = tmp_path / "insp"
    rc, cap = _inspect(capsys, path, out, "--data", str(data))
    assert rc == 0, cap.err
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "classification" and report["targets"][0]["label"].startswith("class")
    assert np.array(report["head_importance"]).shape == (2, 2)


@pytest.mark.parametrize("args, needle", [
    (["word " * 40], "longer than the model's max_position_embeddings=32"),
    ([""], "is empty"),
    ([TEXT, "--pair", " "], "--pair ' ' is empty"),
    ([TEXT, "--steps", "0"], "steps=0 is invalid"),
    ([TEXT, "--data", "/nonexistent/file.txt"], "does not exist"),
])
def test_bad_input_writes_nothing(run_dir, tmp_path, capsys, args, needle):
    out = tmp_path / "insp"
    rc = main(["inspect", run_dir, *args, "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 2
    assert needle in cap.err and len(cap.err.strip().splitlines()) == 1, cap.err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_bad_checkpoint_and_foreign_out_dir(run_dir, tmp_path, capsys):
    rc = main(["inspect", str(tmp_path / "nope"), TEXT, "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    rc = main(["inspect", run_dir, TEXT, "--out", str(foreign)])
    assert rc == 2 and "holds other files" in capsys.readouterr().err
    assert os.listdir(foreign) == ["notes.txt"]


def test_param_groups():
    assert param_group("bert.embeddings.word_embeddings.weight") == "embeddings"
    assert param_group("bert.encoder.layer.3.attention.self.query.weight") == "layer.3.attention"
    assert param_group("bert.encoder.layer.3.attention.output.LayerNorm.bias") == "layer.3.layernorm"
    assert param_group("encoder.layer.0.intermediate.dense.weight") == "layer.0.ffn"
    assert param_group("bert.pooler.dense.bias") == "pooler"
    assert param_group("cls.predictions.bias") == "head"
    with pytest.raises(ValueError, match="log_internals=0 is invalid"):
        InternalsMonitor(0, "x")


@pytest.mark.slow
def test_pretrain_log_internals_then_inspect_the_run(tmp_path, capsys):
    """The real command end to end: a tiny pretraining run logging its internals, then
    ``inspect`` on the run directory it wrote."""
    corpus = os.path.join(HERE, "data", "tiny_corpus.txt")
    out = str(tmp_path / "run")
    assert main(["pretrain", "--corpus", corpus, "--out", out, "--preset", "tiny",
                 "--vocab-size", "300", "--steps", "4", "--batch-size", "4", "--seq-len", "32",
                 "--save-every", "4", "--eval-every", "4", "--log-internals", "2"]) == 0
    lines = (tmp_path / "run" / "internals.jsonl").read_text().splitlines()
    assert [json.loads(l)["step"] for l in lines] == [2, 4]
    assert os.path.getsize(tmp_path / "run" / "internals.png") < 300_000
    capsys.readouterr()
    rc = main(["inspect", out, "the [MASK] of a list .", "--out", str(tmp_path / "i"), "--steps", "4"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "logit lens" in cap.out
