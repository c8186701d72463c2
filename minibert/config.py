"""BertConfig: the architecture in Hugging Face's field names, its presets, and the exact
parameter count.

Field names and defaults are Hugging Face's ``BertConfig`` (which are BERT-Base's), so a
``config.json`` from any BERT checkpoint loads as is and ours loads in ``transformers``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from .io import atomic_write_text

HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh")
ATTN_IMPLEMENTATIONS = ("auto", "eager", "fused")


@dataclass
class BertConfig:
    vocab_size: int = 30522                # uncased English WordPiece vocabulary of the paper
    hidden_size: int = 768                 # H
    num_hidden_layers: int = 12            # L
    num_attention_heads: int = 12          # A; head size D = H / A = 64
    intermediate_size: int = 3072          # I = 4H, the feed-forward width used by the paper
    hidden_act: str = "gelu"               # exact erf GELU, as the original BERT
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512     # learned absolute positions: the longest sequence
    type_vocab_size: int = 2               # segments A and B
    initializer_range: float = 0.02        # std of the truncated-normal-like init of BERT
    layer_norm_eps: float = 1e-12          # BERT's TF code used 1e-12, kept by Hugging Face
    pad_token_id: int = 0
    attn_implementation: str = "auto"      # "auto": the fused kernel wherever one exists, the
    #                                        textbook op for output_attentions=True or under
    #                                        readable_ops(); "eager" / "fused" force one
    #                                        (minibert/ops/attention.py explains each)
    num_labels: int = 2                    # fine-tuning heads (sequence/token classification)
    classifier_dropout: float | None = None  # None: use hidden_dropout_prob, as Hugging Face

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"BertConfig.{name}={v!r} is invalid, expected a positive integer")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(f"BertConfig.hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}, expected a multiple "
                             "(each head gets hidden_size / num_attention_heads dimensions)")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"BertConfig.hidden_act={self.hidden_act!r} is not supported, "
                             f"expected one of {HIDDEN_ACTS}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"BertConfig.attn_implementation={self.attn_implementation!r} is not "
                             f"known, expected one of {ATTN_IMPLEMENTATIONS}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ValueError(f"BertConfig.{name}={v!r} is invalid, expected 0 <= p < 1")
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"BertConfig.classifier_dropout={self.classifier_dropout!r} is invalid, "
                             "expected None or 0 <= p < 1")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"BertConfig.layer_norm_eps={self.layer_norm_eps!r} is invalid, expected > 0")
        if not self.initializer_range > 0:
            raise ValueError(f"BertConfig.initializer_range={self.initializer_range!r} is invalid, "
                             "expected > 0")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides) -> BertConfig:
        """A named size: the miniature BERTs of Turc et al. (2019), BERT-Base and BERT-Large."""
        if name not in PRESETS:
            raise ValueError(f"preset={name!r} is not known, expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_type"] = "bert"
        return d

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> BertConfig:
        """Build from a dict such as a Hugging Face config.json; unknown keys are ignored
        (Hugging Face stores many that do not change the architecture), except that a
        model_type other than "bert" is rejected."""
        if not isinstance(d, dict):
            raise TypeError(f"config must be a dict, got {type(d).__name__}")
        mt = d.get("model_type", "bert")
        if mt != "bert":
            raise ValueError(f"config model_type={mt!r} is not supported, expected 'bert'")
        pet = d.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ValueError(f"config position_embedding_type={pet!r} is not supported, "
                             "expected 'absolute' (BERT's learned positions)")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in fields}
        if "id2label" in d and "num_labels" not in d:
            kwargs["num_labels"] = len(d["id2label"])
        if kwargs.get("attn_implementation") not in (None, *ATTN_IMPLEMENTATIONS):
            kwargs.pop("attn_implementation")    # e.g. "sdpa" written by transformers
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path) -> BertConfig:
        if not os.path.isfile(path):
            raise ValueError(f"config file {str(path)!r} does not exist")
        with open(path, encoding="utf-8") as fh:
            try:
                d = json.load(fh)
            except json.JSONDecodeError as e:
                raise ValueError(f"config file {str(path)!r} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def save(self, path):
        """Write the JSON atomically: a crash mid-write leaves the previous file."""
        atomic_write_text(path, self.to_json_string())


PRESETS = {
    # name: L, H, A, I (I = 4H throughout); vocab and positions as BERT
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "medium": dict(num_hidden_layers=8, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096),
}

HEADS = (None, "pretraining", "masked_lm", "sequence_classification", "token_classification",
         "question_answering", "multiple_choice")
# the heads built without a pooler by default, as in Hugging Face
_NO_POOLER = ("masked_lm", "token_classification", "question_answering")


def parameter_breakdown(config: BertConfig, head: str | None = None) -> list[tuple[str, int, str]]:
    """(part, count, formula) rows from the formulas, in the order of the model.

    With V vocab, P positions, T segment types, H hidden, I intermediate, L layers:
      embeddings   (V + P + T) H + 2H                   (three tables + LayerNorm)
      one layer    4 (H^2 + H) + 2 (H I) + I + H + 4H   (Q, K, V, O; FFN in and out; 2 LayerNorms)
      pooler       H^2 + H
    """
    V, P, T = config.vocab_size, config.max_position_embeddings, config.type_vocab_size
    H, I, L, C = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_labels
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not known, expected one of {HEADS}")
    rows = [("embeddings", (V + P + T) * H + 2 * H, "(V + P + T) H + 2H")]
    per_layer = 4 * (H * H + H) + 2 * H * I + I + H + 4 * H
    rows.append((f"encoder ({L} layers)", L * per_layer, "L [4 (H^2 + H) + 2 H I + I + 5H]"))
    if head not in _NO_POOLER:
        rows.append(("pooler", H * H + H, "H^2 + H"))
    if head in ("pretraining", "masked_lm"):
        rows.append(("mlm head", H * H + H + 2 * H + V, "H^2 + H + 2H + V (decoder tied to embeddings)"))
    if head == "pretraining":
        rows.append(("nsp head", 2 * H + 2, "2H + 2"))
    elif head in ("sequence_classification", "token_classification"):
        rows.append(("classifier", C * H + C, "C H + C"))
    elif head == "question_answering":
        rows.append(("qa_outputs", 2 * H + 2, "2H + 2"))
    elif head == "multiple_choice":
        rows.append(("classifier", H + 1, "H + 1"))
    return rows


def count_parameters(config: BertConfig, head: str | None = None) -> int:
    """Number of parameters from the formula (see ``parameter_breakdown``).

    ``head=None`` counts BertModel with its pooler; "pretraining" counts BertForPreTraining
    with the MLM decoder tied to the word embeddings (only its bias is new); "masked_lm"
    counts BertForMaskedLM, which has no pooler by default. Equals the number
    of elements the corresponding model allocates.
    """
    return sum(n for _, n, _ in parameter_breakdown(config, head))
