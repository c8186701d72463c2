"""The ``minibert`` command. The only module that prints.

    minibert demo        forward + backward of a small BERT, then the gradient-check table
    minibert gradcheck   the gradient-check table of every op and a tiny model
    minibert params      the parameter breakdown of a preset, formula next to each count
    minibert info        versions and backends

Bad input is one line on stderr and exit status 2; a failed gradient check exits 1.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


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
    for mod in ("numba", "cupy", "safetensors", "torch", "transformers"):
        try:
            m = __import__(mod)
            print(f"  {mod:<12} {getattr(m, '__version__', '?')}")
        except Exception:  # noqa: BLE001 - any failure means "not available"
            print(f"  {mod:<12} not installed")
    print(f"  GPU available: {gpu_available()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minibert", description="BERT from scratch on NumPy and CuPy.")
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="forward/backward of a small BERT and the gradient-check table")
    d.add_argument("--preset", default="mini", help="model size (tiny, mini, small, medium, base, large)")
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--seq-len", type=int, default=128)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu", help="cpu or gpu")
    d.set_defaults(func=cmd_demo)
    g = sub.add_parser("gradcheck", help="gradient-check every op and a tiny model in float64")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=cmd_gradcheck)
    pa = sub.add_parser("params", help="parameter breakdown of a preset, with the formulas")
    pa.add_argument("--preset", default="base")
    pa.add_argument("--head", default="none",
                    help="none, pretraining, sequence_classification, token_classification, "
                         "question_answering or multiple_choice")
    pa.set_defaults(func=cmd_params)
    i = sub.add_parser("info", help="versions, backends, GPU")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo", *(argv or [])])
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as e:
        print(f"minibert {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minibert: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
