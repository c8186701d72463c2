"""The checks of ``BertModel``'s inputs, each naming the argument, the value and what was
expected: the ids and segments, the padding mask, ``inputs_embeds`` and ``head_mask``. A mixin
of ``BertModel`` (``minibert/model.py``), which reads them once per forward."""
from __future__ import annotations

import numpy as np

from .validation import check_attention_mask, require


def check_int_array(name, a, ndim=2):
    """``a`` as an array, after checking it holds integers in ``ndim`` dimensions."""
    if not hasattr(a, "dtype"):
        a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {a.dtype}, expected an integer array")
    if a.ndim != ndim:
        raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {ndim} dimensions")
    return a


def reject_positional(method: str, args: tuple):
    """Every argument after ``input_ids`` is keyword-only, in Hugging Face's names: two 0/1
    arrays of one shape passed in the wrong order would otherwise run and be silently wrong."""
    if args:
        raise TypeError(f"{method}() takes input_ids as its only positional argument, got "
                        f"{len(args)} more: pass attention_mask=..., token_type_ids=... and the "
                        "rest by keyword (Hugging Face's names)")



class InputChecks:
    """``BertModel``'s input checks (it has ``config``, ``dtype`` and ``xp``)."""

    def _validate_inputs(self, input_ids, attention_mask, token_type_ids, inputs_embeds=None):
        cfg, xp = self.config, self.xp
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("input_ids and inputs_embeds: "
                             + ("both were given" if input_ids is not None else "neither was given")
                             + ", expected exactly one of them")
        if input_ids is None:
            inputs_embeds = self._check_inputs_embeds(inputs_embeds)
            B, S = inputs_embeds.shape[:2]
            input_ids = xp.zeros((B, S), dtype=np.int64)        # stands in for the shape only
        input_ids = check_int_array("input_ids", input_ids)
        B, S = input_ids.shape
        if S > cfg.max_position_embeddings:
            raise ValueError(f"input_ids has sequence length {S}, longer than "
                             f"max_position_embeddings={cfg.max_position_embeddings}")
        if S == 0 or B == 0:
            raise ValueError(f"input_ids has shape {(B, S)}, expected at least one token per row")
        if token_type_ids is None:
            token_type_ids = xp.zeros((B, S), dtype=np.int64)
        token_type_ids = check_int_array("token_type_ids", token_type_ids)
        if tuple(token_type_ids.shape) != (B, S):
            raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)}, "
                             f"expected the shape of input_ids {(B, S)}")
        if attention_mask is None:
            attention_mask = xp.ones((B, S), dtype=self.dtype)
        # checked once per forward: every layer's attention, forward and backward, takes
        # this AttentionMask, which builds each of its forms (additive, kernel tables) once
        mask = check_attention_mask(attention_mask, B, S, xp=xp)
        return xp.asarray(input_ids), xp.asarray(token_type_ids), mask, inputs_embeds

    def _check_inputs_embeds(self, inputs_embeds):
        """``inputs_embeds`` as a (B, S, H) array of the model's dtype, on its device."""
        H = self.config.hidden_size
        shape = tuple(getattr(inputs_embeds, "shape", np.shape(inputs_embeds)))
        if len(shape) != 3 or shape[2] != H:
            raise ValueError(f"inputs_embeds has shape {shape}, expected (B, S, H) with "
                             f"H = hidden_size = {H}")
        e = self.xp.asarray(inputs_embeds)
        if e.dtype.kind != "f":
            raise TypeError(f"inputs_embeds has dtype {e.dtype}, expected a floating dtype")
        return e.astype(self.dtype, copy=False)

    def _check_head_mask(self, head_mask):
        """``head_mask`` (A,) or (L, A) as an (L, A) array of the model's dtype, or None."""
        if head_mask is None:
            return None
        L, A = self.config.num_hidden_layers, self.config.num_attention_heads
        shape = tuple(getattr(head_mask, "shape", np.shape(head_mask)))
        if shape not in ((A,), (L, A)):
            raise ValueError(f"head_mask has shape {shape}, expected (num_attention_heads,) = "
                             f"{(A,)} or (num_hidden_layers, num_attention_heads) = {(L, A)}")
        given = self.xp.asarray(head_mask)
        if given.dtype.kind not in "biuf":
            raise TypeError(f"head_mask has dtype {given.dtype}, expected real numbers")
        with np.errstate(over="ignore", invalid="ignore"):     # too large: inf, refused below
            m = given.astype(self.dtype)

        def error():
            value = given.ravel()[int(self.xp.argmin(self.xp.isfinite(m).ravel()))]
            return ValueError(f"head_mask has the value {float(value)!r}, expected finite "
                              f"numbers in {np.dtype(self.dtype).name} (each multiplies its "
                              "head's attention probabilities)")
        require(self.xp.isfinite(m), error)                    # NaN and infinities are refused
        return self.xp.array(self.xp.broadcast_to(m, (L, A)))                       # (L, A)

