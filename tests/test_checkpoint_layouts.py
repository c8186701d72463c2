"""Every BERT checkpoint layout a user may bring, written by transformers, loaded by minibert
and compared tensor by tensor and logit by logit against transformers.

Layouts (each a directory with config.json, the weights and a vocab.txt):

    masked_lm           BertForMaskedLM: bert.* without a pooler, cls.predictions.*
    masked_lm_pooler    BertForMaskedLM whose file also holds bert.pooler.* (older exports)
    pretraining         BertForPreTraining: pooler, cls.predictions.*, cls.seq_relationship.*
    model               BertModel with its pooler (names without the bert. prefix)
    model_no_pooler     BertModel(config, add_pooling_layer=False)
    legacy_bin          a BertForMaskedLM state dict as old releases shipped it: a torch
                        pickle (pytorch_model.bin) with LayerNorm gamma/beta names, the
                        position_ids and token_type_ids buffers, and the tied decoder tensors

Tolerances. Parameters are copied, never computed: equal to the bit. float32 outputs: both
sides run the same float32 operations on the same weights, in a different summation order
(BLAS blocking, our fused kernels): each of the two layers' dot products (H = 16, I = 24
terms), softmaxes and LayerNorms adds a few float32 roundings (eps 6e-8) on O(1) values, a
few hundred in all, so 1e-5 absolute on logits of size O(1)-O(10) leaves a margin of about
ten over what is measured (at most 1.3e-6). float64 (transformers in float64 too): the
same count of roundings with eps 1.1e-16 gives ~2e-14, so 1e-13 (measured at most 2.1e-15).
"""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from minibert import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    from_pretrained,
)
from minibert.checkpoint import tensor_names  # noqa: E402
from minibert.cli import main  # noqa: E402
from tests.helpers import assert_close  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "of", "list", "file",
         "return", "open", "and", "read", "its", "contents", "value", "key", "first", "last",
         "element", "string", "number", "name", "path", "line", ".", ",", "is", "to", "in",
         "it", "for", "with", "new", "old", "sorted", "copy", "empty", "this"]
SMALL = dict(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=24, max_position_embeddings=20)
LAYOUTS = ("masked_lm", "masked_lm_pooler", "pretraining", "model", "model_no_pooler",
           "legacy_bin")
MLM_LAYOUTS = ("masked_lm", "masked_lm_pooler", "pretraining", "legacy_bin")
POOLER_LAYOUTS = ("masked_lm_pooler", "pretraining", "model")
ATOL32, ATOL64 = 1e-5, 1e-13


def _hf_config():
    return transformers.BertConfig(**SMALL, attn_implementation="eager")


def _perturbed(model, seed):
    """Every parameter moved off its initialization (biases and LayerNorms included), so a
    tensor loaded into the wrong place cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _clone_state(module):
    """A state dict whose tensors share no memory (safetensors refuses tied tensors)."""
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


class Layout:
    """A checkpoint directory and the transformers modules that hold the same weights:
    ``encoder`` (a BertModel, with the pooler when the file has one) and ``mlm`` (a module
    whose output has the masked-LM logits at every position), or None."""

    def __init__(self, path, encoder, mlm, mlm_attr="logits"):
        self.path, self.encoder, self.mlm, self.mlm_attr = str(path), encoder, mlm, mlm_attr
        self.state = {}                 # encoder names (no prefix) and head names (bert.*)
        for module in (encoder, mlm):
            if module is not None:
                self.state.update({k: v.detach().numpy() for k, v in module.state_dict().items()})

    def reference(self, name):
        """The transformers tensor holding minibert parameter ``name``."""
        for cand in (name, "bert." + name, name[len("bert."):]):
            if cand in self.state:
                return self.state[cand]
        raise KeyError(name)

    def mlm_logits(self, ids, mask, tt, double=False):
        m = self.mlm.double() if double else self.mlm.float()
        with torch.no_grad():
            out = m(torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(tt))
        return getattr(out, self.mlm_attr).numpy()

    def encoder_outputs(self, ids, mask, tt, double=False):
        m = self.encoder.double() if double else self.encoder.float()
        with torch.no_grad():
            out = m(torch.tensor(ids), attention_mask=torch.tensor(mask),
                    token_type_ids=torch.tensor(tt))
        pooled = None if out.pooler_output is None else out.pooler_output.numpy()
        return out.last_hidden_state.numpy(), pooled


def _encoder_of(hf_head, with_pooler, seed):
    """A transformers BertModel with the encoder weights of ``hf_head`` (and a pooler of
    its own when ``with_pooler`` and the head has none)."""
    enc = transformers.BertModel(_hf_config(), add_pooling_layer=with_pooler)
    _perturbed(enc, seed)
    missing, unexpected = enc.load_state_dict(hf_head.bert.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("pooler.") for k in missing)
    return enc.eval()


def _make(kind, path):
    os.makedirs(path)
    cfg = _hf_config()
    if kind == "masked_lm":
        mlm = _perturbed(transformers.BertForMaskedLM(cfg), 1)
        mlm.save_pretrained(path)
        layout = Layout(path, _encoder_of(mlm, False, 0), mlm)
    elif kind == "masked_lm_pooler":
        from safetensors.torch import save_file
        mlm = _perturbed(transformers.BertForMaskedLM(cfg), 2)
        enc = _encoder_of(mlm, True, 3)                      # the pooler comes from here
        state = _clone_state(mlm)
        state.update({"bert." + k: v.detach().clone() for k, v in enc.state_dict().items()
                      if k.startswith("pooler.")})
        save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        mlm.config.save_pretrained(path)
        layout = Layout(path, enc, mlm)
    elif kind == "pretraining":
        pt = _perturbed(transformers.BertForPreTraining(cfg), 4)
        pt.save_pretrained(path)
        layout = Layout(path, pt.bert, pt, "prediction_logits")
    elif kind in ("model", "model_no_pooler"):
        enc = _perturbed(transformers.BertModel(cfg, add_pooling_layer=kind == "model"), 5)
        enc.save_pretrained(path)
        layout = Layout(path, enc, None)
    elif kind == "legacy_bin":
        mlm = _perturbed(transformers.BertForMaskedLM(cfg), 6)
        state = {}
        for k, v in _clone_state(mlm).items():
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                         "LayerNorm.beta")
            state[k] = v
        P = SMALL["max_position_embeddings"]
        state["bert.embeddings.position_ids"] = torch.arange(P)[None]
        state["bert.embeddings.token_type_ids"] = torch.zeros(1, P, dtype=torch.long)
        assert "cls.predictions.decoder.weight" in state and "cls.predictions.decoder.bias" in state
        torch.save(state, os.path.join(path, "pytorch_model.bin"))
        mlm.config.save_pretrained(path)
        layout = Layout(path, _encoder_of(mlm, False, 0), mlm)
    else:
        raise AssertionError(kind)
    with open(os.path.join(path, "vocab.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(WORDS) + "\n")
    return layout


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    torch.manual_seed(0)
    return {kind: _make(kind, root / kind) for kind in LAYOUTS}


def _inputs(B=3, S=9, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, len(WORDS), size=(B, S))
    ids[:, 0], ids[:, -1] = 2, 3
    mask = np.ones((B, S), dtype=np.int64)
    mask[1, 6:] = 0                                          # padding in one row
    tt = np.zeros((B, S), dtype=np.int64)
    tt[:, 5:] = 1
    return ids, mask, tt


def _masked(a, mask):
    """Padded positions differ freely (neither side defines them): compare real ones."""
    return np.where(mask[(...,) + (None,) * (a.ndim - 2)].astype(bool), a, 0)


# ------------------------------------------------------------------ the files themselves
def test_layouts_hold_what_they_claim(layouts):
    names = {k: tensor_names(v.path) for k, v in layouts.items()}
    assert not any("pooler" in n for n in names["masked_lm"])
    assert "bert.pooler.dense.weight" in names["masked_lm_pooler"]
    assert "cls.seq_relationship.weight" in names["pretraining"]
    assert "pooler.dense.weight" in names["model"]
    assert not any("pooler" in n for n in names["model_no_pooler"])
    legacy = names["legacy_bin"]
    assert "bert.embeddings.position_ids" in legacy and "bert.embeddings.LayerNorm.gamma" in legacy
    assert not any(n.endswith("LayerNorm.weight") for n in legacy)
    assert os.listdir(layouts["legacy_bin"].path).count("pytorch_model.bin") == 1


# ------------------------------------------------------------------ tensor by tensor
CASES = [(layout, cls) for layout in LAYOUTS for cls in (BertModel, BertForMaskedLM)
         if cls is BertModel or layout in MLM_LAYOUTS]


@pytest.mark.parametrize("layout,cls", CASES, ids=[f"{l}-{c.__name__}" for l, c in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tensors_match_transformers(layouts, layout, cls, dtype):
    lay = layouts[layout]
    model = cls.from_pretrained(lay.path, dtype=dtype)
    for name, value in model.params.items():
        assert np.array_equal(value, lay.reference(name).astype(dtype)), name
    if cls is BertModel:
        # the encoder keeps the checkpoint's pooler, and has none where the file has none
        assert model.add_pooling_layer == (layout in POOLER_LAYOUTS)
    else:
        assert not model.add_pooling_layer               # Hugging Face's BertForMaskedLM
        assert not any("pooler" in n for n in model.params)


# ------------------------------------------------------------------ logit by logit
def _load_and_run(lay, cls, dtype):
    """(layout, model, outputs, inputs): ``cls`` loaded from the layout's directory in
    ``dtype`` and run on the test batch."""
    ids, mask, tt = _inputs()
    model = cls.from_pretrained(lay.path, dtype=dtype)
    return lay, model, model(ids, attention_mask=mask, token_type_ids=tt), (ids, mask, tt)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype,atol", [(np.float32, ATOL32), (np.float64, ATOL64)],
                         ids=["float32", "float64"])
def test_encoder_outputs_match_transformers(layouts, layout, dtype, atol):
    lay, model, out, (ids, mask, tt) = _load_and_run(layouts[layout], BertModel, dtype)
    ref_h, ref_pooled = lay.encoder_outputs(ids, mask, tt, double=dtype == np.float64)
    assert_close("last_hidden_state", _masked(out.last_hidden_state, mask), _masked(ref_h, mask),
                 atol=atol)
    if layout in POOLER_LAYOUTS:
        assert_close("pooler_output", out.pooler_output, ref_pooled, atol=atol)
    else:
        assert out.pooler_output is None


@pytest.mark.parametrize("layout", MLM_LAYOUTS)
@pytest.mark.parametrize("dtype,atol", [(np.float32, ATOL32), (np.float64, ATOL64)],
                         ids=["float32", "float64"])
def test_masked_lm_logits_match_transformers(layouts, layout, dtype, atol):
    lay, model, out, (ids, mask, tt) = _load_and_run(layouts[layout], BertForMaskedLM, dtype)
    ref = lay.mlm_logits(ids, mask, tt, double=dtype == np.float64)
    assert out.logits.shape == ref.shape == (3, 9, len(WORDS))
    assert_close("logits", _masked(out.logits, mask), _masked(ref, mask), atol=atol)
    # BERT's gathered positions give the same numbers at those positions
    pos = np.array([[1, 4, 7], [2, 3, 5], [8, 1, 1]])
    g = model(ids, attention_mask=mask, token_type_ids=tt, masked_lm_positions=pos).logits
    assert_close("gathered logits", g, ref[np.arange(3)[:, None], pos], atol=atol)


@pytest.mark.parametrize("layout", ["pretraining", "legacy_bin"])
def test_pretraining_layouts_load_as_pretraining(layouts, layout):
    """A BertForPreTraining checkpoint loads as BertForPreTraining; a masked-LM one does not
    (its NSP head and pooler are missing, and the error names them)."""
    lay = layouts[layout]
    if layout == "pretraining":
        m = BertForPreTraining.from_pretrained(lay.path, dtype=np.float64)
        ids, mask, tt = _inputs()
        with torch.no_grad():
            ref = lay.mlm.double()(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                   token_type_ids=torch.tensor(tt))
        out = m(ids, attention_mask=mask, token_type_ids=tt)
        assert_close("nsp_logits", out.nsp_logits, ref.seq_relationship_logits.numpy(), atol=ATOL64)
    else:
        with pytest.raises(ValueError, match=r"missing keys \['bert.pooler.dense.bias', "
                                             r"'bert.pooler.dense.weight', 'cls.seq_relationship"):
            BertForPreTraining.from_pretrained(lay.path)


# ------------------------------------------------------------------ what loading reports
def test_pretraining_checkpoint_into_masked_lm_reports_unused(layouts):
    """As Hugging Face: the NSP head and the pooler are not used, and said so."""
    m, info = BertForMaskedLM.from_pretrained(layouts["pretraining"].path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["mismatched_keys"] == []
    assert info["unexpected_keys"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                       "cls.seq_relationship.bias", "cls.seq_relationship.weight"]
    hf, hf_info = transformers.BertForMaskedLM.from_pretrained(layouts["pretraining"].path,
                                                               output_loading_info=True)
    assert not hf_info["missing_keys"]
    assert m.num_parameters() == sum(p.numel() for p in hf.parameters())


def test_buffers_and_legacy_names_are_not_reported(layouts):
    _, info = BertForMaskedLM.from_pretrained(layouts["legacy_bin"].path, output_loading_info=True)
    assert info == dict(missing_keys=[], unexpected_keys=[], mismatched_keys=[], error_msgs=[])
    # the encoder alone reports the whole masked-LM head unused, tied decoder tensors included
    # (as Hugging Face's BertModel does), and the buffers not at all
    _, info = BertModel.from_pretrained(layouts["legacy_bin"].path, output_loading_info=True)
    assert info["unexpected_keys"] == sorted(
        n for n in tensor_names(layouts["legacy_bin"].path) if n.startswith("cls."))
    assert "cls.predictions.decoder.weight" in info["unexpected_keys"]


def test_add_pooling_layer_explicit(layouts):
    path = layouts["pretraining"].path
    enc, info = BertModel.from_pretrained(path, add_pooling_layer=False, output_loading_info=True)
    assert not enc.add_pooling_layer and "bert.pooler.dense.weight" in info["unexpected_keys"]
    same = from_pretrained(path, add_pooling_layer=False)
    assert np.array_equal(same.store.data, enc.store.data)
    mlm = BertForMaskedLM.from_pretrained(path, add_pooling_layer=True, dtype=np.float64)
    ids, mask, tt = _inputs()
    _, ref_pooled = layouts["pretraining"].encoder_outputs(ids, mask, tt, double=True)
    out = mlm(ids, attention_mask=mask, token_type_ids=tt)
    assert_close("pooler_output", out.pooler_output, ref_pooled, atol=ATOL64)
    # asking for a pooler the checkpoint lacks is an error that names it, unless new_head
    with pytest.raises(ValueError, match=r"missing keys \['pooler.dense.bias', 'pooler.dense.weight'\]"):
        BertModel.from_pretrained(layouts["model_no_pooler"].path, add_pooling_layer=True)
    m, info = BertModel.from_pretrained(layouts["model_no_pooler"].path, add_pooling_layer=True,
                                        new_head=True, output_loading_info=True)
    assert m.add_pooling_layer and info["missing_keys"] == ["pooler.dense.bias", "pooler.dense.weight"]
    with pytest.raises(TypeError, match="add_pooling_layer='no'"):
        BertModel.from_pretrained(path, add_pooling_layer="no")


def test_parameter_counts_match_transformers():
    cfg = BertConfig(**SMALL)
    hcfg = _hf_config()

    def count(m):
        return sum(p.numel() for p in m.parameters())      # tied tensors once
    assert BertModel(cfg, add_pooling_layer=False).num_parameters() == \
        count(transformers.BertModel(hcfg, add_pooling_layer=False))
    assert BertModel(cfg).num_parameters() == count(transformers.BertModel(hcfg))
    assert BertForMaskedLM(cfg).num_parameters() == count(transformers.BertForMaskedLM(hcfg))
    assert BertForPreTraining(cfg).num_parameters() == count(transformers.BertForPreTraining(hcfg))
    assert BertForTokenClassification(cfg).num_parameters() == \
        count(transformers.BertForTokenClassification(hcfg))
    H = SMALL["hidden_size"]
    assert BertForMaskedLM(cfg, add_pooling_layer=True).num_parameters() == \
        BertForMaskedLM(cfg).num_parameters() + H * H + H


@pytest.mark.parametrize("cls", [BertForSequenceClassification, BertForPreTraining])
def test_heads_that_read_the_pooler_refuse_to_go_without(cls):
    with pytest.raises(ValueError, match=f"add_pooling_layer=False: {cls.__name__} reads the pooled"):
        cls(BertConfig(**SMALL), add_pooling_layer=False)
    with pytest.raises(TypeError, match="add_pooling_layer=1 is invalid"):
        BertForMaskedLM(BertConfig(**SMALL), add_pooling_layer=1)
    with pytest.raises(TypeError, match="add_pooling_layer='yes' is invalid"):
        BertModel(BertConfig(**SMALL), add_pooling_layer="yes")


@pytest.mark.parametrize("cls", [BertForTokenClassification, BertForQuestionAnswering])
def test_token_level_heads_take_a_pooler_or_not(layouts, cls):
    for layout in ("masked_lm", "pretraining"):
        m = cls.from_pretrained(layouts[layout].path, new_head=True)
        assert not m.add_pooling_layer and not any("pooler" in n for n in m.params)
    m = cls.from_pretrained(layouts["pretraining"].path, new_head=True, add_pooling_layer=True)
    assert "bert.pooler.dense.weight" in m.params


@pytest.mark.parametrize("layout", ["masked_lm", "model_no_pooler", "legacy_bin"])
def test_classifier_on_a_checkpoint_without_pooler(layouts, layout):
    """The pooler is part of what a classifier reads: without new_head its absence is an error
    that lists it; with new_head it is initialized, and said so."""
    path = layouts[layout].path
    with pytest.raises(ValueError, match=r"missing keys \['bert.pooler.dense.bias', "
                                         r"'bert.pooler.dense.weight', 'classifier.bias'"):
        BertForSequenceClassification.from_pretrained(path)
    m, info = BertForSequenceClassification.from_pretrained(path, new_head=True, num_labels=3,
                                                            output_loading_info=True)
    assert info["missing_keys"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                    "classifier.bias", "classifier.weight"]
    enc = BertModel.from_pretrained(path)
    for name, value in enc.params.items():
        assert np.array_equal(m.params["bert." + name], value), name


# ------------------------------------------------------------------ what still stops loading
def _copy(layouts, layout, tmp_path):
    dst = tmp_path / layout
    shutil.copytree(layouts[layout].path, dst)
    return dst


def _rewrite(path, edit):
    from safetensors.numpy import load_file, save_file
    state = load_file(str(path / "model.safetensors"))
    edit(state)
    save_file(state, str(path / "model.safetensors"))


@pytest.mark.parametrize("layout", ["model", "model_no_pooler"])
def test_masked_lm_needs_its_head(layouts, layout):
    with pytest.raises(ValueError, match=r"missing keys \['cls.predictions.bias', "
                                         r"'cls.predictions.transform"):
        BertForMaskedLM.from_pretrained(layouts[layout].path)


def test_every_other_mismatch_is_listed(layouts, tmp_path):
    path = _copy(layouts, "masked_lm", tmp_path)

    def edit(state):
        del state["bert.encoder.layer.1.output.dense.bias"]
        state["bert.encoder.layer.0.extra.weight"] = np.zeros(3, np.float32)
        state["cls.predictions.transform.dense.bias"] = np.zeros(7, np.float32)
    _rewrite(path, edit)
    with pytest.raises(ValueError) as e:
        BertForMaskedLM.from_pretrained(path)
    msg = str(e.value)
    assert "missing keys ['bert.encoder.layer.1.output.dense.bias']" in msg
    assert "unexpected keys ['bert.encoder.layer.0.extra.weight']" in msg
    assert "cls.predictions.transform.dense.bias: (7,) (expected (16,))" in msg


def test_untied_decoder_is_refused(layouts, tmp_path):
    path = _copy(layouts, "masked_lm_pooler", tmp_path)

    def edit(state):
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"] + 1
    _rewrite(path, edit)
    with pytest.raises(ValueError, match="decoder is not tied"):
        BertForMaskedLM.from_pretrained(path)
    BertModel.from_pretrained(path)             # the encoder alone does not read the decoder


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("layout", ["masked_lm", "legacy_bin", "pretraining"])
def test_export_loads_in_transformers_as_masked_lm(layouts, layout, tmp_path):
    ours = BertForMaskedLM.from_pretrained(layouts[layout].path)
    ours.save_pretrained(tmp_path)
    hf, info = transformers.BertForMaskedLM.from_pretrained(tmp_path, output_loading_info=True,
                                                            attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    ids, mask, tt = _inputs()
    with torch.no_grad():
        ref = hf.eval()(torch.tensor(ids), attention_mask=torch.tensor(mask),
                        token_type_ids=torch.tensor(tt)).logits.numpy()
    out = ours(ids, attention_mask=mask, token_type_ids=tt)
    assert_close("logits", _masked(out.logits, mask), _masked(ref, mask), atol=ATOL32)
    again = BertForMaskedLM.from_pretrained(tmp_path)
    assert np.array_equal(again.store.data, ours.store.data)


# ------------------------------------------------------------------ the commands
def _hf_fill_mask(lay, text, k):
    """Top-k (token, probability) per [MASK] from the transformers model, on minibert's
    tokenization (the tokenizer is not what is compared here)."""
    from minibert import BertTokenizer
    tok = BertTokenizer.from_pretrained(lay.path)
    enc = tok(text)
    logits = lay.mlm_logits(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"],
                            double=True)[0]
    out = []
    for p in np.nonzero(enc["input_ids"][0] == tok.mask_token_id)[0]:
        z = logits[p] - logits[p].max()
        prob = np.exp(z) / np.exp(z).sum()
        best = np.argsort(-prob, kind="stable")[:k]
        out.append([(tok.convert_ids_to_tokens(int(i)), float(prob[i])) for i in best])
    return out


@pytest.mark.parametrize("layout", MLM_LAYOUTS)
def test_fill_mask_on_every_masked_lm_layout(layouts, layout, capsys):
    from minibert.recipes import fill_mask
    text = "return the [MASK] of the list and read its [MASK] ."
    got = fill_mask(layouts[layout].path, text, top_k=4)
    want = _hf_fill_mask(layouts[layout], text, 4)
    assert len(got) == 2
    for g, w in zip(got, want):
        assert [t for t, _ in g] == [t for t, _ in w]
        # probabilities through the float32 model against transformers in float64
        assert max(abs(a - b) for (_, a), (_, b) in zip(g, w)) <= 1e-5
    assert main(["fill-mask", layouts[layout].path, text, "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "[MASK] #1:" in out and "[MASK] #2:" in out and want[0][0][0] in out


def test_encode_without_pooler(layouts, capsys):
    assert main(["encode", layouts["masked_lm"].path, "the first element"]) == 0
    out = capsys.readouterr().out
    assert "[CLS] hidden state: dim 16" in out and "pooled output: none" in out
    assert main(["encode", layouts["pretraining"].path, "the first element"]) == 0
    assert "pooled output: dim 16" in capsys.readouterr().out


def _listing(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


@pytest.mark.parametrize("command", ["fill-mask", "encode"])
def test_no_vocab_is_one_line_exit_2(layouts, tmp_path, capsys, command):
    path = _copy(layouts, "masked_lm", tmp_path)
    os.remove(path / "vocab.txt")
    before = _listing(tmp_path)
    assert main([command, str(path), "the [MASK] of the list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no vocab.txt" in err
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("layout", ["model", "model_no_pooler"])
def test_fill_mask_without_masked_lm_head_is_one_line_exit_2(layouts, layout, tmp_path, capsys):
    path = _copy(layouts, layout, tmp_path)
    before = _listing(tmp_path)
    assert main(["fill-mask", str(path), "the [MASK] of the list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no masked-LM head" in err
    assert _listing(tmp_path) == before


@pytest.mark.slow
def test_finetune_from_a_checkpoint_without_pooler(layouts, tmp_path, capsys):
    data = tmp_path / "data.csv"
    rows = ["text,label"] + [f"{'the first element' if i % 2 else 'open the file'} {i},{i % 2}"
                             for i in range(20)]
    data.write_text("\n".join(rows) + "\n")
    argv = ["finetune", "--checkpoint", layouts["masked_lm"].path, "--data", str(data),
            "--out", str(tmp_path / "ft"), "--steps", "2", "--batch-size", "4", "--seq-len", "12"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "the checkpoint has no pooler: a new one (bert.pooler.dense.*) is initialized" in out
    assert "not used from the checkpoint: cls.predictions.*" in out
    assert "held-out accuracy" in out
