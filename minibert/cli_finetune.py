"""``minibert finetune`` (every task family) and ``minibert encode`` (a text's vectors, or
the feature-based approach's hidden-state features as .npz): their options and what they
print. Part of the command line (``minibert.cli`` builds the parser and handles errors)."""
from __future__ import annotations

import os
import time

import numpy as np

from .tasks import TASK_NAMES

# the long names of metric keys in the printed summary
_SHOWN = {"acc": "accuracy"}


# options whose value is a list that may start with "-" (-4,-3,-2,-1): argparse would read
# such a value as an option, so "--layers -4,-3" is passed to it as "--layers=-4,-3"
LIST_FLAGS = ("--feature-layers", "--layers", "--label-list")


def join_list_values(argv: list) -> list:
    """``argv`` with each ``FLAG VALUE`` of ``LIST_FLAGS`` written ``FLAG=VALUE``."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in LIST_FLAGS and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def int_list(flag: str, text: str | None) -> list | None:
    """``"-4,-3,-2,-1"`` -> [-4, -3, -2, -1]; None stays None. A ValueError (one line, exit
    status 2) names the flag and the value."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not a comma-separated list of integers, expected "
                         "e.g. -4,-3,-2,-1") from None
    return values


def str_list(flag: str, text: str | None) -> list | None:
    """``"O,B-PER,I-PER"`` -> ["O", "B-PER", "I-PER"]; None stays None."""
    if text is None:
        return None
    values = [v.strip() for v in text.split(",")]
    if len(values) < 2 or not all(values):
        raise ValueError(f"{flag} {text!r} is invalid, expected at least two non-empty "
                         "comma-separated names, e.g. O,B-PER,I-PER")
    return values


def _add_data_options(ft):
    ft.add_argument("--task", default="classification", choices=TASK_NAMES,
                    help="the task family: " + ", ".join(TASK_NAMES) + " (default: %(default)s)")
    ft.add_argument("--train", "--data", dest="train", default=None, metavar="FILE",
                    help="training file, its format found from the extension and content "
                    "(CSV/TSV/JSON lines; CoNLL for ner; SQuAD JSON for qa; SWAG CSV/JSON lines "
                    "for multiple-choice); --data is another name for it (default: the task's "
                    "built-in task)")
    ft.add_argument("--eval", default=None, metavar="FILE", help="held-out file in the same "
                    "format (default: none: 20%% is held out of --train)")
    ft.add_argument("--checkpoint", default="runs/pretrain",
                    help="a minibert run directory or any BERT directory with vocab.txt, with "
                    "or without a pooler (a missing one is initialized) (default: %(default)s)")
    ft.add_argument("--out", default="runs/finetune", help="run directory: checkpoints, "
                    "metrics.json, predictions (default: %(default)s)")


def _add_run_options(ft):
    ft.add_argument("--steps", type=int, default=300, help="optimizer steps (default: %(default)s)")
    ft.add_argument("--batch-size", type=int, default=16, help="examples per step (default: "
                    "%(default)s)")
    ft.add_argument("--seq-len", type=int, default=None, help="tokens per row, longer inputs "
                    "truncated (qa: windows); each batch is padded only to its longest row "
                    "(default: the task's: 384 for qa, 128 otherwise)")
    ft.add_argument("--lr", type=float, default=None,
                    help="peak learning rate (default: 2e-4; 1e-3 with --feature-based)")
    ft.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    ft.add_argument("--device", default="cpu", help="cpu or gpu (default: %(default)s)")
    ft.add_argument("--resume", action="store_true", help="continue the run in --out "
                    "(default: start a new run)")


def _add_task_options(ft):
    from .tasks.base import TaskOptions
    d = TaskOptions()
    g = ft.add_argument_group("task options (each task reads the ones it needs)")
    g.add_argument("--text-column", default=d.text_column, help="classification/regression: "
                   "column or field of the text (default: %(default)s)")
    g.add_argument("--text-pair-column", default=d.text_pair_column, help="classification/"
                   "regression: column of the second segment, used when the file has it "
                   "(default: %(default)s)")
    g.add_argument("--label-column", default=d.label_column, help="classification/regression: "
                   "column of the label or score (default: %(default)s)")
    g.add_argument("--tokens-field", default=d.tokens_field, help="ner JSON lines: field of the "
                   "token list (default: the first of tokens, words present)")
    g.add_argument("--tags-field", default=d.tags_field, help="ner JSON lines: field of the tag "
                   "list (default: the first of ner_tags, ner, tags present)")
    g.add_argument("--label-list", default=None, metavar="A,B,C",
                   help="class or tag names by id, for files whose labels are integers "
                   "(default: the labels found in the training data)")
    g.add_argument("--doc-stride", type=int, default=d.doc_stride, help="qa: tokens between the "
                   "starts of a context's windows (default: %(default)s)")
    g.add_argument("--max-query-length", type=int, default=d.max_query_length, help="qa: "
                   "question tokens kept (default: %(default)s)")
    g.add_argument("--max-answer-length", type=int, default=d.max_answer_length, help="qa: "
                   "longest answer in tokens (default: %(default)s)")
    g.add_argument("--n-best", type=int, default=d.n_best, help="qa: start/end candidates "
                   "kept per question (default: %(default)s)")
    g.add_argument("--null-score-threshold", type=float, default=d.null_score_threshold,
                   help="qa v2.0: answer \"\" when the null score beats the best span by more "
                   "than this (default: %(default)s)")


def _add_feature_options(ft):
    g = ft.add_argument_group("feature-based approach (BERT paper, section 5.3)")
    g.add_argument("--feature-based", action="store_true", help="freeze the encoder and train "
                   "only the task head on hidden-state features (default: fine-tune everything)")
    g.add_argument("--feature-layers", default=None, metavar="-4,-3,-2,-1",
                   help="hidden states to combine, 0 = the embeddings, -1 = the last layer "
                   "(default: the last four hidden states, all of them when the model has fewer)")
    g.add_argument("--feature-combine", default="concat", choices=("concat", "sum"),
                   help="how the chosen hidden states are combined (default: %(default)s)")


def add_finetune(sub):
    ft = sub.add_parser("finetune", help="fine-tune for classification, regression, ner, qa "
                        "or multiple-choice",
                        description="Fine-tune a minibert or Hugging Face BERT checkpoint on "
                        "one task of the BERT paper's families, from the files people have or "
                        "the task's built-in standard-library task, and score it on held-out "
                        "data with the task's official metrics (metrics.json, predictions in "
                        "the task's standard format).")
    _add_data_options(ft)
    _add_run_options(ft)
    _add_task_options(ft)
    _add_feature_options(ft)
    ft.set_defaults(func=cmd_finetune)


def _options(args):
    from .tasks.base import TaskOptions
    return TaskOptions(text_column=args.text_column, text_pair_column=args.text_pair_column,
                       label_column=args.label_column, tokens_field=args.tokens_field,
                       tags_field=args.tags_field, label_list=str_list("--label-list", args.label_list),
                       doc_stride=args.doc_stride, max_query_length=args.max_query_length,
                       max_answer_length=args.max_answer_length, n_best=args.n_best,
                       null_score_threshold=args.null_score_threshold)


def _number(key, v) -> str:
    """Counts (SQuAD's ``total``, ``HasAns_total``, ...) as integers, scores to 4 decimals."""
    return str(int(v)) if key.endswith("total") else f"{v:.4f}"


def metrics_line(metrics: dict) -> str:
    """One line: the task's metrics, then their trivial baselines."""
    from .finetuning import FACTS
    own = [k for k in metrics if k not in FACTS and not k.startswith("baseline_")]
    base = [k for k in metrics if k.startswith("baseline_")]
    line = "held-out " + ", ".join(f"{_SHOWN.get(k, k)} {_number(k, metrics[k])}" for k in own)
    if base:
        line += " (trivial baseline: " + ", ".join(
            f"{_SHOWN.get(k[9:], k[9:])} {_number(k, metrics[k])}" for k in base) + ")"
    if "loss" in metrics:
        line += f"; loss {metrics['loss']:.4f}"
    n = metrics["eval_examples"]
    return line + f"; {n} example{'' if n == 1 else 's'} after {metrics['steps']} steps"


def cmd_finetune(args) -> int:
    from functools import partial

    from .cli_progress import _run_training, _stage
    from .finetuning import finetune
    from .tasks import get_family
    family = get_family(args.task)
    t0 = time.perf_counter()
    run = partial(finetune, task=family, train=args.train, eval=args.eval,
                  checkpoint=args.checkpoint, out_dir=args.out, steps=args.steps,
                  batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, seed=args.seed,
                  device=args.device, resume=args.resume, options=_options(args),
                  feature_based=args.feature_based,
                  feature_layers=int_list("--feature-layers", args.feature_layers),
                  feature_combine=args.feature_combine, on_stage=_stage)
    r = _run_training(run, args.steps, f"finetune {args.task}", ("loss", family.metric))
    print(metrics_line(r.metrics))
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    print(f"checkpoint: {r.train.checkpoint}")
    for path in r.files:
        print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- encode
def add_encode(sub):
    en = sub.add_parser("encode", help="tokens, ids and the [CLS] / pooled vectors of a text, "
                        "or hidden-state features (.npz)",
                        description="The tokens and ids of a text and a summary of its [CLS] "
                        "hidden state and pooled vector; with --layers, the feature-based "
                        "approach's features (the chosen hidden states combined) written to "
                        "--out as .npz.")
    en.add_argument("checkpoint", help="a minibert run directory or a BERT directory")
    en.add_argument("text", nargs="+", help="the text(s) to encode")
    en.add_argument("--layers", default=None, metavar="-4,-3,-2,-1",
                    help="hidden states to export, 0 = the embeddings, -1 = the last layer "
                    "(default: none, print the summary)")
    en.add_argument("--combine", default="concat", choices=("concat", "sum"),
                    help="with --layers: how the hidden states are combined (default: %(default)s)")
    en.add_argument("--out", default=None, metavar="FEATURES.npz", help="with --layers: the "
                    ".npz file to write (default: none; required with --layers)")
    en.set_defaults(func=cmd_encode)


def cmd_encode(args) -> int:
    layers = int_list("--layers", args.layers)
    if layers is None:
        if args.out is not None:
            raise ValueError(f"--out {args.out!r} is given without --layers, expected --layers "
                             "with it (the summary is printed, not written)")
        if len(args.text) != 1:
            raise ValueError(f"{len(args.text)} texts are given, expected one (or --layers and "
                             "--out to export features of several)")
        return _print_summary(args.checkpoint, args.text[0])
    if args.out is None:
        raise ValueError("--layers is given without --out, expected --out FEATURES.npz")
    if not args.out.endswith(".npz"):
        raise ValueError(f"--out {args.out!r} does not end in .npz, expected FEATURES.npz")
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        raise ValueError(f"--out {args.out!r}: its directory {parent!r} does not exist")
    from .tasks.feature_export import encode_features, write_features_npz
    result = encode_features(args.checkpoint, list(args.text), layers, args.combine)
    write_features_npz(args.out, result)
    dims = sorted({int(np.shape(f)[-1]) for f in result["features"]})
    lengths = [int(np.shape(f)[0]) for f in result["features"]]
    print(f"{len(lengths)} text(s) of {', '.join(map(str, lengths))} tokens: hidden states "
          f"{list(result['layers'])} combined by {result['combine']}, "
          f"{' / '.join(map(str, dims))} features a token")
    print(f"wrote {args.out}")
    return 0


def _print_summary(checkpoint, text) -> int:
    from .recipes import encode
    r = encode(checkpoint, text)
    print(f"tokens ({len(r['tokens'])}): {' '.join(r['tokens'])}")
    print(f"ids: {r['ids']}")
    for name in ("cls", "pooled"):
        v = r[name]
        if v is None:
            print("pooled output: none (the checkpoint has no pooler)")
            continue
        label = "[CLS] hidden state" if name == "cls" else "pooled output"
        print(f"{label}: dim {v.size}, norm {np.linalg.norm(v):.4f}, mean {v.mean():.4f}, "
              f"std {v.std():.4f}, first 6 {np.array2string(v[:6], precision=4)}")
    return 0
