"""Hugging Face checkpoints: loading theirs, saving ours, and refusing bad ones."""
import json
import os

import numpy as np
import pytest

from minibert import (
    BertConfig,
    BertForPreTraining,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    from_pretrained,
)
from minibert.checkpoint import read_state_dict
from tests.helpers import assert_close, import_graph

SMALL = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=24, max_position_embeddings=20)


def _inputs(rng, B=2, S=6):
    ids = rng.integers(1, 50, size=(B, S))
    mask = np.ones((B, S), dtype=np.int64)
    mask[1, 4:] = 0
    return ids, mask


def test_roundtrip_minibert(tmp_path, rng):
    m = BertForPreTraining(BertConfig(**SMALL), dtype=np.float32, seed=3)
    m.store.data[...] += rng.standard_normal(m.store.size).astype(np.float32) * 0.1
    m.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    m2 = BertForPreTraining.from_pretrained(tmp_path)
    assert np.array_equal(m.store.data, m2.store.data)
    # the encoder alone loads from the same checkpoint (the cls.* head is skipped)
    enc = BertModel.from_pretrained(tmp_path)
    ids, mask = _inputs(rng)
    a, _ = enc.forward(ids, attention_mask=mask)
    b, _ = m2.bert.forward(ids, attention_mask=mask)
    assert np.array_equal(a.last_hidden_state, b.last_hidden_state)


def test_free_from_pretrained_defaults_to_bert_model(tmp_path):
    m = BertForPreTraining(BertConfig(**SMALL), seed=2)
    m.save_pretrained(tmp_path)
    enc = from_pretrained(tmp_path)
    assert type(enc) is BertModel
    for name, value in enc.params.items():
        assert np.array_equal(value, m.params["bert." + name]), name
    again = from_pretrained(tmp_path, BertForPreTraining, dtype=np.float64)
    assert type(again) is BertForPreTraining and again.store.data.dtype == np.float64


def test_checkpoint_imports_no_model_class():
    """checkpoint.py sits below the models (they inherit its mixin): it must not import
    model.py or heads/, not even inside a function."""
    imported = {target for target, _, _ in import_graph()["minibert.checkpoint"]}
    assert not {t for t in imported if t == "minibert.model" or t.startswith("minibert.heads")}, \
        imported


def test_new_head_only_when_asked(tmp_path):
    BertModel(BertConfig(**SMALL)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="missing keys.*classifier.weight"):
        BertForSequenceClassification.from_pretrained(tmp_path)
    m = BertForSequenceClassification.from_pretrained(tmp_path, new_head=True, num_labels=5)
    assert m.params["classifier.weight"].shape == (5, 16)
    with pytest.raises(ValueError, match="num_lables"):
        BertForSequenceClassification.from_pretrained(tmp_path, new_head=True, num_lables=5)


def test_legacy_gamma_beta_and_prefixes(tmp_path):
    from safetensors.numpy import save_file
    m = BertModel(BertConfig(**SMALL), seed=1)
    state = {}
    for k, v in m.state_dict().items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state["bert." + k] = v
    state["bert.embeddings.position_ids"] = np.arange(20)[None]
    save_file(state, str(tmp_path / "model.safetensors"))
    BertConfig(**SMALL).save(tmp_path / "config.json")
    m2 = BertModel.from_pretrained(tmp_path)
    assert np.array_equal(m.store.data, m2.store.data)


def _write(tmp_path, state):
    from safetensors.numpy import save_file
    save_file(state, str(tmp_path / "model.safetensors"))
    BertConfig(**SMALL).save(tmp_path / "config.json")


def test_missing_unexpected_and_wrong_shape(tmp_path):
    state = BertModel(BertConfig(**SMALL)).state_dict()
    del state["encoder.layer.1.output.dense.bias"]
    state["encoder.layer.9.foo"] = np.zeros(3, np.float32)
    _write(tmp_path, state)
    with pytest.raises(ValueError, match=r"missing keys \['encoder.layer.1.output.dense.bias'\].*"
                                         r"unexpected keys \['encoder.layer.9.foo'\]"):
        BertModel.from_pretrained(tmp_path)
    state = BertModel(BertConfig(**SMALL)).state_dict()
    state["pooler.dense.bias"] = np.zeros(7, np.float32)
    _write(tmp_path, state)
    with pytest.raises(ValueError, match=r"wrong shape.*pooler.dense.bias: \(7,\) \(expected \(16,\)\)"):
        BertModel.from_pretrained(tmp_path)


def test_missing_or_corrupt_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        from_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="no config.json"):
        from_pretrained(tmp_path)
    BertConfig(**SMALL).save(tmp_path / "config.json")
    with pytest.raises(ValueError, match="neither model.safetensors"):
        from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        from_pretrained(tmp_path)


def test_save_is_atomic(tmp_path, monkeypatch):
    """A failing save leaves the previous checkpoint untouched and no temporary files."""
    m = BertModel(BertConfig(**SMALL), seed=0)
    m.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    import safetensors.numpy

    def boom(state, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        BertModel(BertConfig(**SMALL), seed=1).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


# ---------------------------------------------------------------- live, against transformers
def _hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


def _hf_config(transformers, **kw):
    return transformers.BertConfig(**{**SMALL, **kw}, attn_implementation="eager")


@pytest.mark.slow
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_bin"])
def test_load_transformers_checkpoint(tmp_path, rng, safe):
    torch, transformers = _hf()
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(_hf_config(transformers)).eval()
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    m = BertForPreTraining.from_pretrained(tmp_path, dtype=np.float64)
    ids, mask = _inputs(rng)
    with torch.no_grad():
        ref = hf.bert(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.double().numpy()
    out, _ = m.forward(ids, attention_mask=mask, masked_lm_positions=np.array([[1], [2]]))
    real = np.asarray(mask).astype(bool)          # padded positions: zeros (padding-free)
    assert_close("last_hidden_state", out.last_hidden_state[real], ref[real], atol=1e-5)
    enc = BertModel.from_pretrained(tmp_path, dtype=np.float64)
    assert np.array_equal(enc.store.data, m.bert.store.data[:enc.store.size])


@pytest.mark.slow
def test_transformers_loads_ours_without_warnings(tmp_path, rng):
    torch, transformers = _hf()
    m = BertForPreTraining(BertConfig(**SMALL), seed=4)
    m.store.data[...] += rng.standard_normal(m.store.size).astype(np.float32) * 0.1
    m.save_pretrained(tmp_path)
    hf, info = transformers.BertForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    sd = hf.state_dict()
    for name, value in m.state_dict().items():
        assert np.array_equal(sd[name].numpy(), value), name
    ids, mask = _inputs(rng)
    out, _ = m.forward(ids, attention_mask=mask, masked_lm_positions=np.array([[0, 3], [1, 2]]))
    with torch.no_grad():
        ref = hf.eval()(torch.tensor(ids), attention_mask=torch.tensor(mask))
    want = ref.prediction_logits.numpy()[np.arange(2)[:, None], np.array([[0, 3], [1, 2]])]
    assert_close("mlm_logits", out.mlm_logits, want, atol=1e-5)
    assert_close("nsp_logits", out.nsp_logits, ref.seq_relationship_logits.numpy(), atol=1e-5)


def test_token_classification_from_pretraining_checkpoint(tmp_path):
    """A fine-tuning start: the encoder comes from the checkpoint, its pooler and cls head
    are skipped, the new classifier is initialized."""
    BertForPreTraining(BertConfig(**SMALL), seed=2).save_pretrained(tmp_path)
    m = BertForTokenClassification.from_pretrained(tmp_path, new_head=True)
    saved = read_state_dict(str(tmp_path))
    assert np.array_equal(m.params["bert.encoder.layer.0.output.dense.weight"],
                          saved["bert.encoder.layer.0.output.dense.weight"])
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["BertForPreTraining"] and cfg["model_type"] == "bert"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints(tmp_path, rng, dtype):
    """Real checkpoints are often stored in half precision; bfloat16 has no NumPy dtype."""
    torch, transformers = _hf()
    hf = transformers.BertModel(_hf_config(transformers)).to(getattr(torch, dtype))
    hf.save_pretrained(tmp_path)
    m = BertModel.from_pretrained(tmp_path)
    for name, t in hf.state_dict().items():
        if name in m.params:
            assert np.array_equal(m.params[name], t.float().numpy()), name


def test_sharded_safetensors(tmp_path):
    from safetensors.numpy import save_file
    m = BertModel(BertConfig(**SMALL), seed=5)
    state = m.state_dict()
    names = sorted(state)
    half = len(names) // 2
    save_file({k: state[k] for k in names[:half]}, str(tmp_path / "a.safetensors"))
    save_file({k: state[k] for k in names[half:]}, str(tmp_path / "b.safetensors"))
    weight_map = {k: ("a.safetensors" if i < half else "b.safetensors") for i, k in enumerate(names)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    BertConfig(**SMALL).save(tmp_path / "config.json")
    assert np.array_equal(BertModel.from_pretrained(tmp_path).store.data, m.store.data)


def test_fused_model_exports_a_config_transformers_reads(tmp_path):
    import json

    from minibert import BertConfig, BertModel
    model = BertModel(BertConfig.preset("tiny", attn_implementation="fused"), seed=0)
    model.save_pretrained(tmp_path)
    cfg = json.load(open(tmp_path / "config.json"))
    assert "attn_implementation" not in cfg
    back = BertModel.from_pretrained(tmp_path)
    assert back.config.attn_implementation == "auto"
    assert np.array_equal(back.store.data, model.store.data)
