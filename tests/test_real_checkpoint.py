"""A real pretrained BERT-architecture checkpoint against transformers (opt-in).

Set MINIBERT_REAL_CHECKPOINT to a Hugging Face BERT directory (config.json, vocab.txt and
model.safetensors or pytorch_model.bin) to run it; nothing is downloaded.
"""
import os

import numpy as np
import pytest

from minibert import BertModel

PATH = os.environ.get("MINIBERT_REAL_CHECKPOINT")
pytestmark = pytest.mark.skipif(not PATH, reason="set MINIBERT_REAL_CHECKPOINT to a BERT directory")


def test_real_checkpoint_matches_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = BertModel.from_pretrained(PATH, dtype=np.float32)
    hf = transformers.BertModel.from_pretrained(PATH, attn_implementation="eager").eval()
    tok = transformers.BertTokenizer.from_pretrained(PATH)
    enc = tok(["Hello world, this is minibert.", "A shorter one"], padding=True, return_tensors="np")
    out, _ = model.forward(enc["input_ids"], attention_mask=enc["attention_mask"],
                           token_type_ids=enc["token_type_ids"])
    with torch.no_grad():
        ref = hf(**{k: torch.tensor(v) for k, v in enc.items()})
    real = enc["attention_mask"][..., None].astype(bool)
    diff = np.abs(np.where(real, out.last_hidden_state - ref.last_hidden_state.numpy(), 0)).max()
    # float32 through a full-size model: activations O(1)-O(10), a few thousand roundings
    assert diff <= 1e-4, f"last_hidden_state differs by {diff:.3e}"
    if model.add_pooling_layer and ref.pooler_output is not None:
        assert np.abs(out.pooler_output - ref.pooler_output.numpy()).max() <= 1e-5
