"""Padding-free execution: the encoder on the real tokens of a right-padded batch only.

A batch of B sequences padded to S tokens holds, in row b, n_b real tokens followed by
S - n_b [PAD] tokens (the attention mask is n_b ones, then zeros: "right padding", what
tokenizers produce). Linear layers, LayerNorm, GELU, dropout and the residual additions act
on each token alone, and attention never lets a real token see a padded one, so the padded
positions change no real token's output. Packing the T = n_0 + ... + n_{B-1} real tokens
into one (T, H) matrix, in row-major order, removes their cost everywhere:

    padded (B, S, H)  --unpad-->  packed (T, H)  --the encoder-->  (T, H)  --pad-->  (B, S, H)

Token t of the packed batch sits at the padded position ``rows[t] = b S + i`` (sequence b,
position i < n_b), and ``cu_seqlens`` (B + 1,) marks where each sequence begins:
cu_seqlens[0] = 0, cu_seqlens[b + 1] = cu_seqlens[b] + n_b, so sequence b is the packed
tokens cu_seqlens[b] .. cu_seqlens[b + 1] - 1 (FlashAttention's "varlen" form). Attention
runs on each such span alone (``minibert.ops.attention`` with a ``Packing`` in place of the
mask). Every token keeps what it had in the padded batch: its position id i, its segment,
and its dropout bits, drawn at the element index it has in the padded (B, S, H) layout
(``rows``); so the packed model computes the padded model's numbers.

``pad`` puts zeros at the padded positions. Hugging Face computes hidden states there too
(from the [PAD] embeddings); no real token reads them, and a head whose loss reads them
(question answering's softmax over all S positions) runs the padded model instead.

When the model packs (``BertModel.may_pack`` and ``_plan_packing``): the batch is right
padded, every row has a real token, and the share of padding is above
``UNPAD_THRESHOLD``, the share above which the packed model was measured faster
(``benchmarks/bench_padding_free.py``); the fused kernels run (not the readable ops, not
``attn_implementation="eager"``); and nobody asks for the (B, A, S, S) attention
probabilities. A model's ``unpad`` attribute (or ``forward(..., unpad=)``) overrides this:
True packs every right-padded batch (on the readable ops too), False never packs, and
``with padded(model):`` runs a block padded. Op hooks see what runs: (T, H) arrays.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from .backend import get_array_module, is_gpu_array

#: The share of padding tokens (1 - T / (B S)) above which the model runs padding-free by
#: default. Measured (``benchmarks/bench_padding_free.py``'s sweep, MiniLM's shape, batch 32,
#: S = 128): the packed model was faster from 2% of padding on, training and inference, and
#: level with none; so any padding at all.
UNPAD_THRESHOLD = 0.0


class Packing(NamedTuple):
    """Where the packed tokens of a right-padded (B, S) batch come from."""
    rows: object            # (T,) int64 on the device: padded position b S + i of token t
    cu_seqlens: np.ndarray  # (B + 1,) int64 on the host: sequence b is tokens
    #                         cu_seqlens[b] .. cu_seqlens[b+1]-1 (the kernels size their work
    #                         from it without reading the device)
    lengths: np.ndarray     # (B,) int64 on the host: n_b
    shape: tuple            # (B, S), the padded batch

    @property
    def num_tokens(self) -> int:
        """T, the real tokens."""
        return int(self.lengths.sum())

    def positions(self):
        """(T,) each token's position inside its own sequence: its position id."""
        return self.rows % self.shape[1]


def unpad(x, packing: Packing):
    """(B, S, ...) -> (T, ...): the real tokens of a padded array, in row-major order."""
    B, S = packing.shape
    return x.reshape(B * S, *x.shape[2:])[packing.rows]


def pad(x, packing: Packing):
    """(T, ...) -> (B, S, ...): the inverse of ``unpad``, zeros at the padded positions."""
    B, S = packing.shape
    xp = get_array_module(x)
    out = xp.zeros((B * S, *x.shape[1:]), dtype=x.dtype)
    out[packing.rows] = x
    return out.reshape(B, S, *x.shape[1:])


def pack(attention_mask, name: str = "attention_mask") -> Packing | None:
    """The ``Packing`` of a right-padded (B, S) 0/1 mask (an array or an ``AttentionMask``),
    or None when it is not right padded or a row has no real token."""
    values = getattr(attention_mask, "values", attention_mask)
    xp = get_array_module(values)
    real = np.asarray(values.get() if is_gpu_array(values) else values) != 0    # (B, S) host
    B, S = real.shape
    lengths = real.sum(axis=1).astype(np.int64)                                 # (B,)
    if lengths.min() < 1 or not np.array_equal(real, np.arange(S) < lengths[:, None]):
        return None
    rows = np.flatnonzero(real)                                                 # (T,)
    cu_seqlens = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)     # (B + 1,)
    return Packing(xp.asarray(rows), cu_seqlens, lengths, (B, S))


def padding_share(packing: Packing) -> float:
    """The share of the padded batch's tokens that are padding, 1 - T / (B S)."""
    B, S = packing.shape
    return 1.0 - packing.num_tokens / (B * S)


def check_unpad(unpad, name: str = "unpad"):
    """``unpad`` as None, True or False; raises TypeError otherwise."""
    if unpad is not None and not isinstance(unpad, (bool, np.bool_)):
        raise TypeError(f"{name}={unpad!r} is invalid, expected None (padding-free when the "
                        "batch has enough padding), True or False")
    return None if unpad is None else bool(unpad)


@contextmanager
def padded(model):
    """``with padded(model):`` runs ``model`` (a BertModel or a model with a head) on the
    padded batch inside the block: for code that reads outputs at padded positions."""
    old = model.unpad
    model.unpad = False
    try:
        yield model
    finally:
        model.unpad = old
