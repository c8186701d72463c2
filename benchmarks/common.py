"""What the benchmark scripts share: the interleaved timer, the BERT batches and steps, the
Hugging Face peers, the checks that both libraries compute the same function, and the JSON
writer.

Imported by the scripts next to it (run as ``python benchmarks/bench_x.py``, this folder is
on ``sys.path``). It imports only the standard library when it is imported: NumPy, torch and
minibert are imported by the functions that use them, so that a script can set its thread
environment (``machine.configure_environment``) after importing this module.

The timer. ``time_interleaved(fns, repeat)`` times every implementation once per round,
round after round, so that a noisy neighbour (a shared machine, a GPU's clocks) hurts them
all alike, and returns the median milliseconds; ``time_rounds`` returns every round. On the
host it reads ``time.perf_counter``; with CUDA (``cuda=True``, or CuPy arrays among
``args``) it records CUDA events around each call on the default stream, which CuPy, Numba
and torch all launch on by default, after a device synchronization.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

# the BERT problem of the model benchmarks: B sequences of S tokens, MASKED predicted
# positions per sequence; fine-tuning: FT_B sequences, FT_LABELS classes
B, S, MASKED = 8, 128, 20
FT_B, FT_LABELS = 16, 5
LR = 1e-4
CHECK_RTOL = 1e-3                  # float32 against float32, relative

# a CPU benchmark's turn (see time_rounds): a pause, in which the previous library's idle
# threads stop spinning (OpenBLAS spins ~0.1 s after a call), then untimed calls for WARM_S:
# after a pause one untimed call did not bring the cores back to their steady speed, and
# threads that sleep between calls (the Numba kernels') were hit hardest
SETTLE_S = 0.25
WARM_S = 0.1


# --------------------------------------------------------------------------- the timer


def _is_cupy(a) -> bool:
    return type(a).__module__.split(".", 1)[0] == "cupy"


def _cuda_timer():
    """``timed(call) -> ms``: CUDA events around ``call()`` on the default stream, with a
    device synchronization before (nothing earlier is counted) and after (the events have
    completed). CuPy's events, or torch's where CuPy is missing."""
    try:
        import cupy

        def timed(call):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            cupy.cuda.Device().synchronize()
            start.record()
            call()
            stop.record()
            cupy.cuda.Device().synchronize()
            return cupy.cuda.get_elapsed_time(start, stop)
    except ImportError:
        import torch

        def timed(call):
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            call()
            stop.record()
            torch.cuda.synchronize()
            return start.elapsed_time(stop)
    return timed


def _host_timed(call):
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1e3


def time_rounds(fns, repeat, args=(), warmup=3, *, cuda=None, settle_s=0.0, warm_s=0.0,
                before=None, collect=False):
    """Milliseconds of each call, per implementation: ``{name: [ms of round 1, ...]}``.

    ``fns``: name -> callable, each called as ``fn(*args)``. First ``warmup`` untimed calls
    of each (compilation, first allocations); then ``repeat`` rounds, each calling every
    implementation once, in order. Options of a turn (one implementation in one round):

    * ``before(name)``: called first (e.g. to set the implementation's thread count);
    * ``settle_s``: a pause, so that the previous library's idle threads stop spinning;
    * ``warm_s``: untimed calls for this long before the timed one, where the previous
      timed call was under ``10 * warm_s`` (after a pause the cores need a few calls to
      reach their steady speed; a long call warms them up by itself);
    * ``collect``: the garbage collector is off during the rounds and runs after each
      timed call, so that a collection never lands inside a timing.

    ``cuda``: CUDA events instead of the host clock; None (the default) means "if any of
    ``args`` is a CuPy array".
    """
    if repeat < 1:
        raise ValueError(f"repeat={repeat}: expected at least 1 round")
    if cuda is None:
        cuda = any(_is_cupy(a) for a in args)
    timed = _cuda_timer() if cuda else _host_timed
    for fn in fns.values():
        for _ in range(warmup):
            fn(*args)
    times = {name: [] for name in fns}
    last = dict.fromkeys(fns, 0.0)                       # previous timed call, seconds
    gc_was = gc.isenabled()
    if collect:
        gc.disable()
    try:
        for _ in range(repeat):
            for name, fn in fns.items():
                if before is not None:
                    before(name)
                if settle_s:
                    time.sleep(settle_s)
                if warm_s and last[name] < 10 * warm_s:
                    t_warm = time.perf_counter()
                    fn(*args)
                    while time.perf_counter() - t_warm < warm_s:
                        fn(*args)
                ms = timed(lambda fn=fn: fn(*args))
                last[name] = ms / 1e3
                times[name].append(ms)
                if collect:
                    gc.collect()
    finally:
        if collect and gc_was:
            gc.enable()
    return times


def time_interleaved(fns, repeat, args=(), warmup=3, **options):
    """Median milliseconds per implementation: ``time_rounds`` (the same arguments) reduced
    to ``{name: median ms}``."""
    rounds = time_rounds(fns, repeat, args, warmup, **options)
    return {name: statistics.median(t) for name, t in rounds.items()}


# --------------------------------------------------------------------------- the JSON writer


def command_line() -> str:
    """The command that ran the script, as it could be typed again from the current folder."""
    return "python " + " ".join([os.path.relpath(sys.argv[0], Path.cwd())] + sys.argv[1:])


def library_versions(*names) -> dict:
    """Python's and each named distribution's version (None where it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cpu_device() -> dict:
    """The CPU's model and core count and the load average now."""
    from machine import cpu_model
    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "load_average_start": list(os.getloadavg())}


def result_path(name) -> Path:
    """``benchmarks/results/<name>``: where a result goes unless ``--out`` says otherwise."""
    return RESULTS / name


def write_json(path, result, *, device=None, versions=None) -> Path:
    """Write ``result`` to ``path`` (a JSON object, 2-space indented), with ``command``,
    ``device`` and ``versions`` filled in where it lacks them (``command_line()``, the
    ``device``/``versions`` given, else ``cpu_device()`` / ``library_versions()``)."""
    path = Path(path)
    result = dict(result)
    result.setdefault("command", command_line())
    result.setdefault("device", device if device is not None else cpu_device())
    result.setdefault("versions", versions if versions is not None else library_versions())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {os.path.relpath(path, Path.cwd())}")
    return path


# --------------------------------------------------------------------------- batches


def make_batch(config, seed=0, batch=B, seq=S, masked=MASKED):
    """A pretraining batch of NumPy arrays: ``batch`` rows of ``seq`` token ids (all real,
    two segments), ``masked`` sorted predicted positions per row (never position 0) with
    their labels, and a next-sentence label per row."""
    import numpy as np
    r = np.random.default_rng(seed)
    ids = r.integers(0, config.vocab_size, (batch, seq))                     # (B, S)
    token_types = np.zeros((batch, seq), np.int64)
    token_types[:, seq // 2:] = 1
    positions = np.sort(np.stack([r.choice(np.arange(1, seq), masked, replace=False)
                                  for _ in range(batch)]), axis=1)           # (B, masked)
    labels = r.integers(0, config.vocab_size, (batch, masked))               # (B, masked)
    nsp = r.integers(0, 2, batch)                                            # (B,)
    return dict(ids=ids, token_types=token_types, mask=np.ones((batch, seq), np.int64),
                positions=positions, labels=labels, nsp=nsp)


def make_finetune_batch(config, seed=1, batch=FT_B, seq=S):
    """``batch`` single-segment rows of ``seq`` real tokens, one label in
    [0, config.num_labels) each."""
    import numpy as np
    r = np.random.default_rng(seed)
    return dict(ids=r.integers(0, config.vocab_size, (batch, seq)),
                token_types=np.zeros((batch, seq), np.int64),
                mask=np.ones((batch, seq), np.int64),
                labels=r.integers(0, config.num_labels, batch))


# --------------------------------------------------------------------------- minibert steps


def minibert_pretrain_step(model, opt, batch):
    """A ``BertForPreTraining`` training step on ``batch`` (dropout on): forward with both
    losses, backward, and ``opt.step()`` unless ``opt`` is None. Returns the loss."""
    def step():
        out, cache = model.forward(batch["ids"], attention_mask=batch["mask"],
                                   token_type_ids=batch["token_types"],
                                   masked_lm_positions=batch["positions"],
                                   masked_lm_ids=batch["labels"],
                                   next_sentence_labels=batch["nsp"], training=True)
        model.backward(cache)
        if opt is not None:
            opt.step()
        return out.loss
    return step


def minibert_inference(encoder, batch):
    """``encoder(...)``: inference as documented, the outputs only, no cache."""
    def infer():
        return encoder(batch["ids"], attention_mask=batch["mask"],
                       token_type_ids=batch["token_types"]).last_hidden_state
    return infer


def minibert_finetune_step(model, opt, batch):
    """A classifier's training step: forward with the loss, backward, ``opt.step()``."""
    def step():
        out, cache = model.forward(batch["ids"], attention_mask=batch["mask"],
                                   token_type_ids=batch["token_types"],
                                   labels=batch["labels"], training=True)
        model.backward(cache)
        opt.step()
        return out.loss
    return step


# --------------------------------------------------------------------------- Hugging Face peers


def hf_config(config):
    """The ``transformers.BertConfig`` of a minibert ``BertConfig``."""
    import transformers
    return transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size, hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        layer_norm_eps=config.layer_norm_eps, num_labels=config.num_labels)


def hf_pretrain(config, device="cpu"):
    """``transformers.BertForPreTraining`` of ``config``'s shape (seed 0), in train mode."""
    import torch
    import transformers
    torch.manual_seed(0)
    return transformers.BertForPreTraining(hf_config(config)).to(device).train()


def hf_encoder(config, device="cpu"):
    """``transformers.BertModel`` with its pooler (seed 0), in eval mode."""
    import torch
    import transformers
    torch.manual_seed(0)
    return transformers.BertModel(hf_config(config), add_pooling_layer=True).to(device).eval()


def to_torch(batch, device="cpu"):
    import torch
    return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}


def hf_masked_only_loss(pretrain, t):
    """The Hugging Face modules with the prediction head on the masked positions only
    (``pretrain.bert`` -> gather -> ``pretrain.cls``): the work minibert does. ``t``: the
    batch as tensors."""
    import torch
    rows = torch.arange(t["ids"].shape[0], device=t["ids"].device)[:, None]
    seq, pooled = pretrain.bert(input_ids=t["ids"], attention_mask=t["mask"],
                                token_type_ids=t["token_types"], return_dict=False)[:2]
    mlm, nsp = pretrain.cls(seq[rows, t["positions"]], pooled)        # (B, masked, V), (B, 2)
    return (torch.nn.functional.cross_entropy(mlm.reshape(-1, mlm.shape[-1]),
                                              t["labels"].reshape(-1))
            + torch.nn.functional.cross_entropy(nsp, t["nsp"]))


def hf_train_fns(pretrain, batch, lr=LR):
    """The peers of a pretraining step, with ``torch.optim.AdamW``: ``"train"`` (the model
    as documented: all S positions predicted, the unmasked ones ignored by the loss) and
    ``"train masked-only"`` (``hf_masked_only_loss``)."""
    import torch
    device = next(pretrain.parameters()).device
    t = to_torch(batch, device)
    b, s = t["ids"].shape
    labels = torch.full((b, s), -100, dtype=torch.long, device=device)    # (B, S)
    labels[torch.arange(b, device=device)[:, None], t["positions"]] = t["labels"]
    opt = torch.optim.AdamW(pretrain.parameters(), lr=lr)

    def train():
        opt.zero_grad(set_to_none=True)
        out = pretrain(input_ids=t["ids"], attention_mask=t["mask"],
                       token_type_ids=t["token_types"], labels=labels,
                       next_sentence_label=t["nsp"])
        out.loss.backward()
        opt.step()
        return out.loss

    def train_masked_only():
        opt.zero_grad(set_to_none=True)
        loss = hf_masked_only_loss(pretrain, t)
        loss.backward()
        opt.step()
        return loss

    return {"train": train, "train masked-only": train_masked_only}


def hf_inference_fn(encoder, batch):
    """``encoder(...)`` under ``torch.no_grad()``: the last hidden state."""
    import torch
    t = to_torch(batch, next(encoder.parameters()).device)

    def infer():
        with torch.no_grad():
            return encoder(input_ids=t["ids"], attention_mask=t["mask"],
                           token_type_ids=t["token_types"]).last_hidden_state
    return infer


def hf_finetune_step(model, batch, lr=LR):
    """A ``BertForSequenceClassification`` training step with ``torch.optim.AdamW``."""
    import torch
    t = to_torch(batch, next(model.parameters()).device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=t["ids"], attention_mask=t["mask"],
                    token_type_ids=t["token_types"], labels=t["labels"])
        out.loss.backward()
        opt.step()
        return out.loss
    return step


def save_hf_checkpoint(config, path):
    """A randomly initialized (seed 0) Hugging Face BertModel of ``config``'s shape, as a
    pretrained checkpoint directory (config.json + model.safetensors)."""
    import torch
    import transformers
    torch.manual_seed(0)
    transformers.BertModel(hf_config(config)).save_pretrained(path)


# --------------------------------------------------------------------------- checks


def relative_error(a, b) -> float:
    """``|a - b| / |b|`` (Frobenius norms)."""
    import numpy as np
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def verdict(errors, rtol=CHECK_RTOL):
    """``errors`` if every one is at most ``rtol``; otherwise stop the benchmark: a wrong
    result is not timed."""
    bad = {k: v for k, v in errors.items() if not v <= rtol}
    if bad:
        raise SystemExit(f"minibert and Hugging Face disagree beyond {rtol}: {bad}")
    return errors


WORD_EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


def check_pretraining(config, batch, attn="fused", device="cpu", rtol=CHECK_RTOL):
    """Hugging Face's weights in minibert's ``BertForPreTraining`` (attention
    ``attn``, None: the config's), dropout off: the loss with the masked-only head and the
    word embeddings' gradient agree to ``rtol``. ``device``: minibert's ("cpu" or "gpu"),
    Hugging Face's on the matching torch device; ``batch``: NumPy arrays."""
    from minibert.backend import to_device, to_numpy
    from minibert.config import BertConfig
    from minibert.heads import BertForPreTraining
    pretrain = hf_pretrain(config, "cuda" if device == "gpu" else "cpu").eval()
    if attn is not None:
        config = BertConfig.from_dict(dict(config.to_dict(), attn_implementation=attn))
    model = BertForPreTraining(config, device=device)
    state = {k: v.detach().cpu().numpy() for k, v in pretrain.state_dict().items()}
    model.load_state_dict({k: state[k] for k in model.params}, strict=True)
    loss = hf_masked_only_loss(pretrain, to_torch(batch, next(pretrain.parameters()).device))
    loss.backward()
    x = {k: to_device(v, device) for k, v in batch.items()}
    out, cache = model.forward(x["ids"], attention_mask=x["mask"],
                               token_type_ids=x["token_types"],
                               masked_lm_positions=x["positions"],
                               masked_lm_ids=x["labels"], next_sentence_labels=x["nsp"])
    grads = model.backward(cache)
    g_hf = pretrain.bert.embeddings.word_embeddings.weight.grad.cpu().numpy()
    return verdict({"loss": abs(float(out.loss) - loss.item()) / abs(loss.item()),
                    "grad " + WORD_EMBEDDINGS: relative_error(to_numpy(grads[WORD_EMBEDDINGS]),
                                                              g_hf)}, rtol)


def check_inference(config, batch):
    """Hugging Face's encoder weights in minibert's ``BertModel``: ``model(...)`` agrees."""
    from minibert.model import BertModel
    encoder = hf_encoder(config)
    model = BertModel(config)
    state = {k: v.detach().numpy() for k, v in encoder.state_dict().items()}
    model.load_state_dict({k: state[k] for k in model.params}, strict=True)
    ours = minibert_inference(model, batch)()
    theirs = hf_inference_fn(encoder, batch)().numpy()
    return verdict({"last_hidden_state": relative_error(ours, theirs)})


def print_check(check):
    print("  check: minibert and Hugging Face agree (dropout off): "
          + ", ".join(f"{k} rel. error {v:.1e}" for k, v in check.items()))


# --------------------------------------------------------------------------- tables


def speedups(times_ms, mine):
    """Peer time / minibert time for each peer (a name starting with "hf"); ``mine(name)``
    names minibert's entry to compare with."""
    return {k: times_ms[k] / times_ms[mine(k)] for k in times_ms if k.startswith("hf")}


def print_header(command, versions, device, notes, what):
    print(f"command: {command}")
    print(f"cpu: {device['cpu']}, {device['cores']} cores, threads {device['threads']}; numpy "
          f"{versions.get('numpy')}, numba {versions.get('numba')}, torch "
          f"{versions.get('torch')}, transformers {versions.get('transformers')}; {what}")
    for note in notes:
        print(f"note: {note}")


def _mib(v):
    return "n/a" if v is None else round(v)


def print_rows(times_ms, mine, flops, memory_mib, sgemm):
    """One line per implementation: ms, GFLOP/s, %SGEMM, speedup of minibert, peak MiB."""
    print(f"  {'implementation':<28}{'ms':>10}{'GFLOP/s':>9}{'%SGEMM':>8}"
          f"{'minibert x':>12}{'peak MiB':>10}")
    for name, t in times_ms.items():
        g = flops(name) / t / 1e6
        print(f"  {name:<28}{t:>10.1f}{g:>9.1f}{100 * g / sgemm:>8.1f}"
              f"{t / times_ms[mine(name)]:>12.2f}{_mib(memory_mib[name]):>10}")
