"""BertConfig: defaults, validation, presets, JSON, and the parameter counts of the paper."""
import json

import pytest

from minibert import BertConfig, count_parameters, parameter_breakdown


def test_defaults_are_bert_base():
    c = BertConfig()
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
            c.intermediate_size, c.max_position_embeddings, c.type_vocab_size) == (
        30522, 768, 12, 12, 3072, 512, 2)
    assert c.hidden_act == "gelu" and c.layer_norm_eps == 1e-12 and c.initializer_range == 0.02


def test_published_parameter_counts():
    # BertModel with pooler (Hugging Face's num_parameters()) and BertForPreTraining, decoder tied
    assert count_parameters(BertConfig.preset("base")) == 109_482_240
    assert count_parameters(BertConfig.preset("large")) == 335_141_888
    assert count_parameters(BertConfig.preset("base"), "pretraining") == 110_106_428
    # BertForMaskedLM: no pooler, the MLM head with its decoder tied
    assert count_parameters(BertConfig.preset("base"), "masked_lm") == 109_514_298


def test_breakdown_sums_to_count():
    c = BertConfig.preset("mini")
    for head in (None, "pretraining", "masked_lm", "sequence_classification", "token_classification",
                 "question_answering", "multiple_choice"):
        assert sum(n for _, n, _ in parameter_breakdown(c, head)) == count_parameters(c, head)


@pytest.mark.parametrize("name", ["tiny", "mini", "small", "medium", "base", "large"])
def test_presets(name):
    c = BertConfig.preset(name)
    assert c.intermediate_size == 4 * c.hidden_size
    assert BertConfig.from_dict(json.loads(c.to_json_string())) == c


def test_preset_overrides():
    assert BertConfig.preset("tiny", vocab_size=100).vocab_size == 100


def test_json_roundtrip(tmp_path):
    c = BertConfig(hidden_size=64, num_attention_heads=4, hidden_act="gelu_new")
    c.save(tmp_path / "config.json")
    assert BertConfig.from_json_file(tmp_path / "config.json") == c


def test_hf_config_keys_are_ignored():
    d = {"model_type": "bert", "hidden_size": 64, "num_attention_heads": 4, "gradient_checkpointing": False,
         "transformers_version": "4.0", "id2label": {"0": "a", "1": "b", "2": "c"},
         "attn_implementation": "sdpa"}
    c = BertConfig.from_dict(d)
    assert c.hidden_size == 64 and c.num_labels == 3 and c.attn_implementation == "auto"


@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden_size=100, num_attention_heads=12), "not divisible"),
    (dict(hidden_act="swish"), "hidden_act"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(num_hidden_layers=-1), "num_hidden_layers"),
    (dict(hidden_size=7.5), "hidden_size"),
    (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob"),
    (dict(layer_norm_eps=0), "layer_norm_eps"),
    (dict(attn_implementation="magic"), "attn_implementation"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BertConfig(**kwargs)


def test_unknown_preset_and_model_type():
    with pytest.raises(ValueError, match="preset='huge'"):
        BertConfig.preset("huge")
    with pytest.raises(ValueError, match="model_type"):
        BertConfig.from_dict({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})


def test_masked_lm_count_is_what_the_model_allocates():
    from minibert import BertForMaskedLM
    c = BertConfig.preset("tiny")
    assert BertForMaskedLM(c).num_parameters() == count_parameters(c, "masked_lm")
