"""Looking inside BERT: what the hand-written forward and backward already compute.

Every function here reads a model through its public interface (``forward``, ``backward``,
``head_mask``, ``inputs_embeds``, ``output_attentions``, ``output_hidden_states``); the
models know nothing of this package. Shapes: L layers, B batch, A heads, S tokens, H hidden,
V vocabulary, P predicted positions. One module a concern, to be read in this order:

    attention.py    ``attention_maps`` (L, B, A, S, S), ``head_stats`` (entropy, mass on
                    [CLS] / [SEP] / itself / neighbours, distance), ``attention_rollout``
    importance.py   ``head_importance`` (dLoss/d head_mask, Michel et al. 2019) and
                    ``prune_heads_curve``
    attribution.py  ``gradient_x_input`` and ``integrated_gradients`` through
                    ``inputs_embeds``, with their completeness error
    lens.py         ``logit_lens``: the masked-LM head read off every layer
    monitor.py      ``InternalsMonitor``: gradient flow during training (``--log-internals``)
    plots.py        every picture (matplotlib, imported on first use)
    inspect.py      ``inspect_checkpoint``: the ``minibert inspect`` pipeline

``from minibert.internals import X`` works for every public name of these modules.
"""
from .attention import HEAD_STATS, attention_maps, attention_rollout, head_stats
from .attribution import Attribution, gradient_x_input, integrated_gradients
from .importance import PruneCurve, head_importance, prune_heads_curve
from .inspect import inspect_checkpoint, load_for_inspection
from .lens import logit_lens
from .monitor import InternalsMonitor, param_group
from .plots import (
    plot_attention_grid,
    plot_attention_layer,
    plot_attributions,
    plot_head_heatmap,
    plot_history,
    plot_internals_log,
)

__all__ = [
    "HEAD_STATS", "attention_maps", "head_stats", "attention_rollout",
    "head_importance", "prune_heads_curve", "PruneCurve",
    "gradient_x_input", "integrated_gradients", "Attribution",
    "logit_lens",
    "InternalsMonitor", "param_group",
    "plot_attention_grid", "plot_attention_layer", "plot_head_heatmap", "plot_attributions",
    "plot_internals_log", "plot_history",
    "inspect_checkpoint", "load_for_inspection",
]
