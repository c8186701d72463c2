"""The ``minibert`` command. The only module that prints.

    minibert pretrain    WordPiece vocab + MLM/NSP data + BERT pretraining (the main job)
    minibert finetune    classification, regression, ner, qa or multiple-choice from a
                         checkpoint; held-out metrics and predictions (cli_finetune.py)
    minibert fill-mask   top-k predictions for each [MASK] of a text
    minibert encode      tokens, ids and the [CLS] / pooled vectors of a text, or
                         hidden-state features as .npz (cli_finetune.py)
    minibert demo        forward + backward of a small BERT, then the gradient-check table
    minibert gradcheck   the gradient-check table of every op and a tiny model
    minibert params      the parameter breakdown of a preset, formula next to each count
    minibert inspect     attention, head statistics and importance, attributions, logit lens
    minibert trace       every op call of a tiny model's forward, then its backward
    minibert info        versions and backends

Bad input is one line on stderr and exit status 2; a failed gradient check or a training run
that diverges exits 1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from .cli_finetune import add_encode, add_finetune, cmd_encode, cmd_finetune  # noqa: F401
from .cli_progress import _run_training, _stage


def _print_gradcheck_table(rows) -> bool:
    print(f"{'check':<40} {'max rel err':>12} {'tolerance':>10}  result")
    for name, err, tol, ok in rows:
        print(f"{name:<40} {err:12.2e} {tol:10.0e}  {'pass' if ok else 'FAIL'}")
    ok = all(r[3] for r in rows)
    print(f"{sum(r[3] for r in rows)} passed, {sum(not r[3] for r in rows)} failed")
    return ok


def cmd_gradcheck(args) -> int:
    from .selfcheck import run_all
    return 0 if _print_gradcheck_table(run_all(args.seed)) else 1


def cmd_demo(args) -> int:
    from .backend import to_numpy
    from .config import BertConfig, count_parameters
    from .heads import BertForPreTraining
    config = BertConfig.preset(args.preset)
    B, S = args.batch_size, args.seq_len
    if B <= 0:
        raise ValueError(f"--batch-size={B} is invalid, expected a positive integer")
    if not 1 <= S <= config.max_position_embeddings:
        raise ValueError(f"--seq-len={S} is invalid, expected 1..{config.max_position_embeddings} "
                         f"(max_position_embeddings of preset {args.preset!r})")
    model = BertForPreTraining(config, dtype=np.float32, seed=args.seed, device=args.device)
    rng = np.random.default_rng(args.seed)
    P = max(1, round(0.15 * S))
    ids = rng.integers(5, config.vocab_size, size=(B, S))
    mask = np.ones((B, S), dtype=np.int64)
    mask[B // 2:, S - S // 4:] = 0          # pad the second half of the batch
    tt = (np.arange(S) >= S // 2).astype(np.int64)[None].repeat(B, 0)
    pos = np.sort(rng.permuted(np.tile(np.arange(1, S - S // 4), (B, 1)), axis=1)[:, :P], axis=1)
    batch = dict(input_ids=ids, token_type_ids=tt, attention_mask=mask, masked_lm_positions=pos,
                 masked_lm_ids=rng.integers(5, config.vocab_size, size=(B, P)),
                 next_sentence_labels=rng.integers(0, 2, size=B))
    print(f"minibert demo: BertForPreTraining, preset {args.preset!r} "
          f"(L={config.num_hidden_layers} H={config.hidden_size} A={config.num_attention_heads}), "
          f"{count_parameters(config, 'pretraining'):,} parameters, batch {B} x {S}, {P} masked/seq")
    t0 = time.perf_counter()
    out, cache = model.forward(**batch, training=True)
    t1 = time.perf_counter()
    grads = model.backward(cache)
    t2 = time.perf_counter()
    gnorm = float(np.sqrt(float((model.store.grad.astype(np.float64) ** 2).sum())))
    print(f"  loss {float(out.loss):.4f} (mlm {float(out.mlm_loss):.4f} + nsp {float(out.nsp_loss):.4f}; "
          f"ln(V) = {np.log(config.vocab_size):.4f} at initialization)")
    print(f"  forward {1e3 * (t1 - t0):.1f} ms, backward {1e3 * (t2 - t1):.1f} ms, "
          f"gradient norm {gnorm:.4f} over {len(grads)} tensors")
    print(f"  pooler_output[0, :4] = {np.array2string(to_numpy(out.pooler_output[0, :4]), precision=4)}")
    print()
    print("gradient checks (float64, central differences, random upstream gradients):")
    from .selfcheck import run_all
    return 0 if _print_gradcheck_table(run_all(args.seed)) else 1


PRETRAIN_SETTINGS = ("preset", "vocab_size", "steps", "batch_size", "seq_len", "lr",
                     "warmup_steps", "masked_lm_prob", "max_predictions_per_seq", "dropout",
                     "nsp", "masking", "dupe_factor", "optimizer")


def cmd_pretrain(args) -> int:
    from functools import partial

    from .recipes import pretrain, resolve_pretrain_recipe
    given = {k: getattr(args, k) for k in PRETRAIN_SETTINGS}
    settings = resolve_pretrain_recipe(args.recipe, **given)     # bad flags fail here, early
    t0 = time.perf_counter()
    run = partial(pretrain, out_dir=args.out, recipe=args.recipe, corpus=args.corpus,
                  vocab=args.vocab, seed=args.seed, device=args.device, resume=args.resume,
                  stop_at=args.stop_at, save_every=args.save_every, eval_every=args.eval_every,
                  on_stage=_stage, log_internals=args.log_internals, **given)
    result, settings = _run_training(run, settings["steps"], "pretrain",
                                     ("loss", "mlm_acc", "nsp_acc"))
    wall = time.perf_counter() - t0
    if result.history:
        first, last = result.history[0], result.history[-1]
        print(f"step {last['step']}: loss {last['loss']:.3f} (step {first['step']}: "
              f"{first['loss']:.3f})")
    for ev in result.evals[:1] + result.evals[-1:] if len(result.evals) > 1 else result.evals:
        line = f"held-out at step {ev['step']}: loss {ev['loss']:.3f}, MLM accuracy {ev['mlm_acc']:.3f}"
        if "mlm_baseline" in ev:
            ratio = ev["mlm_acc"] / ev["mlm_baseline"] if ev["mlm_baseline"] else float("nan")
            line += f" (most-frequent-token baseline {ev['mlm_baseline']:.3f}: {ratio:.2f}x)"
        if "nsp_acc" in ev:
            line += f", NSP accuracy {ev['nsp_acc']:.3f}"
        print(line)
    seconds = sum(h["seconds"] for h in result.history)
    tokens = sum(h["tokens_per_s"] * h["seconds"] for h in result.history)
    print(f"wall time {wall:.0f} s ({seconds:.0f} s in training steps, "
          f"{tokens / max(seconds, 1e-9):,.0f} tokens/s)")
    print(f"checkpoint: {result.checkpoint}")
    print(f"loss curve: {os.path.join(args.out, 'loss_curve.png')}")
    if args.log_internals:
        print(f"internals: {os.path.join(args.out, 'internals.jsonl')} and internals.png")
    print(f"try: minibert fill-mask {args.out} \"Return the [MASK] of the list.\"")
    return 0


def cmd_fill_mask(args) -> int:
    from .recipes import fill_mask
    for i, preds in enumerate(fill_mask(args.checkpoint, args.text, args.top_k)):
        print(f"[MASK] #{i + 1}:")
        for token, prob in preds:
            print(f"  {token:<20} {prob:.4f}")
    return 0


def cmd_trace(args) -> int:
    from .config import BertConfig
    from .heads import BertForSequenceClassification
    from .ops import readable_ops, trace
    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=args.layers,
                        num_attention_heads=2, intermediate_size=16, max_position_embeddings=8,
                        num_labels=2)
    model = BertForSequenceClassification(config, dtype=np.float64, seed=args.seed)
    ids = np.array([[2, 5, 6, 7, 3], [2, 8, 9, 3, 0]])
    mask = (ids > 0).astype(np.int64)
    with readable_ops(args.readable), trace(params=model.params) as t:
        out, cache = model.forward(ids, attention_mask=mask, labels=np.array([0, 1]), training=True)
        model.backward(cache)
    print(f"minibert trace: BertForSequenceClassification (L={config.num_hidden_layers} "
          f"H={config.hidden_size} A={config.num_attention_heads} I={config.intermediate_size}), "
          f"batch 2 x 5 (one padded token), dropout on, loss {float(out.loss):.4f}")
    print(f"{len(t.forward)} forward op calls, then {len(t.backward)} backward calls, each "
          "undoing one forward call, last to first\n")
    print(t.format())
    return 0


def cmd_inspect(args) -> int:
    from .internals import HEAD_STATS, inspect_checkpoint
    r = inspect_checkpoint(args.checkpoint, args.text, pair=args.pair, out_dir=args.out,
                           data=args.data, steps=args.steps)
    tokens = r["tokens"]
    print(f"{r['model']} ({r['kind']}) from {r['checkpoint']}: {r['layers']} layers x "
          f"{r['heads']} heads, {len(tokens)} tokens")
    print(" ".join(tokens))
    print("\nhead statistics (mean over query tokens): entropy in nats; attention mass on "
          "[CLS], [SEP], itself, the previous and next token; mean distance in tokens")
    imp = r.get("head_importance")
    print(f"{'layer':>5} {'head':>4} " + " ".join(f"{k:>8}" for k in HEAD_STATS)
          + (f" {'|import.|':>9}" if imp else ""))
    for l in range(r["layers"]):
        for a in range(r["heads"]):
            row = " ".join(f"{r['head_stats'][k][l][a]:8.3f}" for k in HEAD_STATS)
            print(f"{l:>5} {a:>4} {row}" + (f" {abs(imp[l][a]):9.2e}" if imp else ""))
    for t in r["targets"]:
        ig = np.array(t["integrated_gradients"])
        top = np.argsort(-np.abs(ig), kind="stable")[:6]
        rel = "" if t["relative_delta"] is None else f" ({t['relative_delta']:.1e} of the difference)"
        print(f"\n{t['label']}: logit {t['f_input']:.3f} (baseline {t['f_baseline']:.3f}); "
              f"integrated gradients sum - difference = {t['delta']:.2e}{rel}")
        print("  most attributed tokens: " + ", ".join(
            f"{tokens[i]} ({ig[i]:+.3f})" for i in top))
        if t.get("logit_lens"):
            print("  logit lens (top predictions read off each layer):")
            for row in t["logit_lens"]:
                tops = ", ".join(f"{w} {p:.3f}" for w, p in row["top"])
                print(f"    {row['layer']:<11} {tops}")
    if not r["targets"]:
        print("\n(no [MASK] in the text: no attributions or logit lens; add a [MASK])"
              if r["kind"] == "mlm" else "\n(no masked-LM or classification head: attention only)")
    print(f"\nwrote {r['out_dir']}: {', '.join(r['files'])}")
    return 0


def cmd_params(args) -> int:
    from .config import BertConfig, count_parameters, parameter_breakdown
    config = BertConfig.preset(args.preset)
    head = None if args.head == "none" else args.head
    print(f"preset {args.preset!r}: V={config.vocab_size} P={config.max_position_embeddings} "
          f"T={config.type_vocab_size} H={config.hidden_size} I={config.intermediate_size} "
          f"L={config.num_hidden_layers} A={config.num_attention_heads}")
    for part, n, formula in parameter_breakdown(config, head):
        print(f"  {part:<22} {n:>14,}   {formula}")
    print(f"  {'total':<22} {count_parameters(config, head):>14,}")
    return 0


def cmd_info(args) -> int:
    import platform

    from . import __version__
    from .backend import gpu_available
    print(f"minibert {__version__}, Python {platform.python_version()}, NumPy {np.__version__}")
    for mod in ("numba", "cupy", "safetensors", "tqdm", "matplotlib", "torch", "transformers"):
        try:
            m = __import__(mod)
            print(f"  {mod:<12} {getattr(m, '__version__', '?')}")
        except Exception:  # noqa: BLE001 - any failure means "not available"
            print(f"  {mod:<12} not installed")
    print(f"  GPU available: {gpu_available()}")
    from .backend import cuda_kernels_available
    print(f"  CUDA kernels (numba-cuda): {'installed' if cuda_kernels_available() else 'not installed'}")
    from .distributed import mpi_info
    mpi = mpi_info()
    if mpi["mpi4py"] is None:
        print(f"  MPI: mpi4py not installed (pip install 'minibert[dist]'), {mpi['ranks']} rank")
    else:
        print(f"  MPI: mpi4py {mpi['mpi4py']}, {mpi['library']}, {mpi['ranks']} rank(s)")
    return 0


# ------------------------------------------------------------------ the parser
# Every option's help ends with its default: argparse fills in %(default)s (a literal % in
# a help line is written %%; descriptions are printed as they are).
PRESET_NAMES = "tiny, mini, small, medium, base, large"
DEVICE_HELP = "cpu or gpu (default: %(default)s)"
SEED_HELP = "random seed (default: %(default)s)"


def _recipe_default(key) -> str:
    """``"fast: 2500, bert: 300"``: a pretraining setting in every recipe (the default
    recipe first), for a help line."""
    from .recipes import DEFAULT_RECIPE, PRETRAIN_RECIPES
    names = sorted(PRETRAIN_RECIPES, key=lambda n: n != DEFAULT_RECIPE)

    def show(r):
        v = r[key]
        if key == "warmup":                       # a fraction of the steps
            return f"{round(v * r['steps'])} ({v} x {r['steps']} steps)"
        return ("on" if v else "off") if isinstance(v, bool) else str(v)
    return ", ".join(f"{name}: {show(PRETRAIN_RECIPES[name])}" for name in names)


def _add_demo(sub):
    d = sub.add_parser("demo", help="forward/backward of a small BERT and the gradient-check table",
                       description="Forward and backward of a BertForPreTraining on a random "
                       "batch (half of it padded), then the gradient-check table.")
    d.add_argument("--preset", default="mini", help=f"model size: {PRESET_NAMES} "
                   "(default: %(default)s)")
    d.add_argument("--batch-size", type=int, default=8, help="sequences (default: %(default)s)")
    d.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default: "
                   "%(default)s)")
    d.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    d.add_argument("--device", default="cpu", help=DEVICE_HELP)
    d.set_defaults(func=cmd_demo)


def _add_gradcheck(sub):
    g = sub.add_parser("gradcheck", help="gradient-check every op and a tiny model in float64",
                       description="Central differences in float64 against every op's "
                       "backward and a tiny model's, with random upstream gradients.")
    g.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    g.set_defaults(func=cmd_gradcheck)


def _add_params(sub):
    pa = sub.add_parser("params", help="parameter breakdown of a preset, with the formulas",
                        description="The parameter count of a preset, part by part, with the "
                        "formula next to each count.")
    pa.add_argument("--preset", default="base", help=f"model size: {PRESET_NAMES} "
                    "(default: %(default)s)")
    pa.add_argument("--head", default="none",
                    help="none, pretraining, masked_lm, sequence_classification, "
                    "token_classification, question_answering or multiple_choice "
                    "(default: %(default)s)")
    pa.set_defaults(func=cmd_params)


def _add_pretrain_model_options(pr):
    """The settings a recipe gives: each defaults to the chosen recipe's value."""
    pr.add_argument("--recipe", default="fast", choices=("fast", "bert"),
                    help="the defaults of the settings below: fast (learns in minutes on a "
                    "CPU) or bert (the original recipe at a small scale: seq 128, NSP, static "
                    "masks, dropout 0.1) (default: %(default)s)")
    for flag, kind, what, key in (
            ("--preset", str, f"model size: {PRESET_NAMES}", "preset"),
            ("--vocab-size", int, "tokens of the WordPiece vocabulary to train", "vocab_size"),
            ("--steps", int, "optimizer steps", "steps"),
            ("--batch-size", int, "sequences per step", "batch_size"),
            ("--seq-len", int, "tokens per sequence", "seq_len"),
            ("--lr", float, "peak learning rate", "lr")):
        pr.add_argument(flag, type=kind, default=None,
                        help=f"{what} (default: the recipe's: {_recipe_default(key)})")
    pr.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps "
                    f"(default: the recipe's fraction of --steps: {_recipe_default('warmup')})")
    pr.add_argument("--masked-lm-prob", type=float, default=None, help="fraction of the tokens "
                    f"to predict (default: the recipe's: {_recipe_default('masked_lm_prob')})")
    pr.add_argument("--max-predictions-per-seq", type=int, default=None, help="cap on "
                    "predictions per sequence (default: masked-lm-prob x seq-len, rounded)")
    pr.add_argument("--dropout", type=float, default=None, help="hidden and attention dropout "
                    f"while pretraining (default: the recipe's: {_recipe_default('dropout')})")
    pr.add_argument("--nsp", action=argparse.BooleanOptionalAction, default=None,
                    help="next sentence prediction (segment pairs) or masked LM alone "
                    f"(default: the recipe's: {_recipe_default('nsp')})")
    pr.add_argument("--masking", default=None, choices=("static", "dynamic"),
                    help="static: masks drawn once (x dupe-factor); dynamic: new masks every "
                    f"step (default: the recipe's: {_recipe_default('masking')})")
    pr.add_argument("--dupe-factor", type=int, default=None, help="static masking: copies of "
                    f"the corpus with different masks (default: the recipe's: "
                    f"{_recipe_default('dupe_factor')})")
    pr.add_argument("--optimizer", default=None, choices=("bert", "torch"),
                    help="AdamW variant: bert (no bias correction) or torch (default: the "
                    f"recipe's: {_recipe_default('optimizer')})")


def _add_pretrain_run_options(pr):
    """Where the data comes from, where the run goes, how it is checkpointed and logged."""
    pr.add_argument("--corpus", default=None, help="text file (one sentence per line, blank "
                    "line between documents) or directory of them (default: the docstrings of "
                    "Python's standard library)")
    pr.add_argument("--vocab", default=None, help="vocab.txt to use (default: train one on the "
                    "corpus)")
    pr.add_argument("--out", default="runs/pretrain", help="run directory: checkpoints, "
                    "vocab.txt, loss_curve.png (default: %(default)s)")
    pr.add_argument("--resume", action="store_true", help="continue the run in --out "
                    "(default: start a new run)")
    pr.add_argument("--stop-at", type=int, default=None, help="stop after this step (a "
                    "checkpoint is written); continue with --resume (default: run all steps)")
    pr.add_argument("--save-every", type=int, default=None, help="steps between checkpoints "
                    "(default: steps / 4)")
    pr.add_argument("--eval-every", type=int, default=None, help="steps between held-out "
                    "evaluations (default: steps / 10)")
    pr.add_argument("--device", default="cpu", help=DEVICE_HELP)
    pr.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    pr.add_argument("--log-internals", type=int, nargs="?", const=10, default=None, metavar="N",
                    help="every N steps (N = %(const)s when left out) log gradient norm, "
                    "update/weight ratio, activation mean/std and attention entropy per layer "
                    "to internals.jsonl and internals.png in --out (default: off)")


def _add_pretrain(sub):
    pr = sub.add_parser("pretrain", help="pretrain BERT (masked LM, optionally NSP) from text: "
                        "the main job",
                        description="Build (or load) a WordPiece vocabulary, make masked-LM "
                        "(and next-sentence) instances and pretrain BertForPreTraining. With no "
                        "arguments: the docstrings of Python's standard library and the 'fast' "
                        "recipe. A flag overrides its recipe's value; flags left out take it.")
    _add_pretrain_model_options(pr)
    _add_pretrain_run_options(pr)
    pr.set_defaults(func=cmd_pretrain)


def _add_fill_mask(sub):
    fm = sub.add_parser("fill-mask", help="top-k predictions for each [MASK] of a text",
                        description="The most probable tokens, with their probabilities, for "
                        "each [MASK] of a text.")
    fm.add_argument("checkpoint", help="a minibert run directory or a BERT directory with a "
                    "masked-LM head (BertForMaskedLM or BertForPreTraining) and vocab.txt")
    fm.add_argument("text", help='text with at least one [MASK], e.g. "Return the [MASK] of x."')
    fm.add_argument("--top-k", type=int, default=5, help="predictions per [MASK] (default: "
                    "%(default)s)")
    fm.set_defaults(func=cmd_fill_mask)


def _add_inspect(sub):
    ins = sub.add_parser("inspect", help="attention maps, head statistics and importance, "
                         "attributions and the logit lens of a text",
                         description="Look inside a minibert run directory or a Hugging Face "
                         "BERT directory on one text: attention maps of every layer and head "
                         "(PNG), head statistics (printed and JSON), head importance (the "
                         "gradient of the loss with respect to a head mask), integrated "
                         "gradients per [MASK] (or the predicted class), the logit lens per "
                         "[MASK], and attention.json for bertviz.")
    ins.add_argument("checkpoint", help="a minibert run directory or a BERT directory")
    ins.add_argument("text", help='e.g. "Return the [MASK] of the list."')
    ins.add_argument("--pair", default=None, help="a second segment, token type 1 (default: "
                     "none)")
    ins.add_argument("--out", default="runs/inspect", help="output directory (default: %(default)s)")
    ins.add_argument("--data", default=None, help="text file, one text a line: head importance "
                     "on these (15%% masked) (default: the text itself, each token masked in "
                     "turn)")
    ins.add_argument("--steps", type=int, default=50, help="integrated-gradients steps "
                     "(default: %(default)s)")
    ins.set_defaults(func=cmd_inspect)


def _add_trace(sub):
    tr = sub.add_parser("trace", help="every op call of a tiny model's forward, then its backward",
                        description="Run a tiny BertForSequenceClassification forward and "
                        "backward under minibert.ops.trace() and print each op call: shapes, "
                        "norms, the parameters it reads, and for each backward the forward call "
                        "it undoes and the parameter gradients it produces.")
    tr.add_argument("--layers", type=int, default=1, choices=range(1, 5), metavar="{1..4}",
                    help="encoder layers (default: %(default)s)")
    tr.add_argument("--readable", action="store_true", help="the readable NumPy ops, not "
                    "the kernels (default: the kernels)")
    tr.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    tr.set_defaults(func=cmd_trace)


def _add_info(sub):
    i = sub.add_parser("info", help="versions, backends, GPU",
                       description="The versions of minibert and its dependencies, and which "
                       "backends (GPU, CUDA kernels, MPI) are available.")
    i.set_defaults(func=cmd_info)


COMMANDS = (_add_demo, _add_gradcheck, _add_params, _add_pretrain, add_finetune,
            _add_fill_mask, add_encode, _add_inspect, _add_trace, _add_info)


def build_parser() -> argparse.ArgumentParser:
    """The ``minibert`` parser: one subcommand per ``_add_*`` function above."""
    p = argparse.ArgumentParser(prog="minibert", description="BERT from scratch on NumPy and CuPy.")
    sub = p.add_subparsers(dest="command")
    for add in COMMANDS:
        add(sub)
    return p


def main(argv=None) -> int:
    from .cli_finetune import join_list_values
    parser = build_parser()
    args = parser.parse_args(join_list_values(sys.argv[1:] if argv is None else list(argv)))
    if args.command is None:
        parser.print_help()
        return 0
    from .distributed import world
    try:
        comm = world()
    except RuntimeError as e:                   # several processes, no mpi4py
        print(f"minibert {args.command}: error: {e}", file=sys.stderr)
        return 2
    if comm.size > 1:
        return _main_ranks(args, comm)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as e:
        print(f"minibert {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minibert: interrupted", file=sys.stderr)
        return 130


def _main_ranks(args, comm) -> int:
    """The command on one of several MPI ranks: only rank 0 prints (stdout, the progress
    bar, messages); a rank that fails prints one line with its rank and the reason and
    ends the whole job (``distributed.run_or_abort``)."""
    from .distributed import run_or_abort
    err = sys.stderr
    if not comm.is_root:
        sys.stdout = sys.stderr = open(os.devnull, "w")

    def report(message, exc):
        if not isinstance(exc, SystemExit):          # a TrainingError: rank 0 said it
            print(f"minibert {args.command}: error on {message}", file=err, flush=True)
        sys.stdout.flush()

    return run_or_abort(comm, lambda: args.func(args), report)


if __name__ == "__main__":
    sys.exit(main())
