"""What ``minibert pretrain --log-internals N`` costs: the monitor's time per logged step
against the training step, on the shapes of the "bert" pretraining recipe (preset mini,
batch 16 x 128, V = 8192, random well-formed rows: the data does not change the cost).

    python benchmarks/bench_internals.py [--steps 40] [--every 10] [--batch-size 16] [--seq-len 128]

(``--steps 5 --every 2 --batch-size 2 --seq-len 32`` is a short run.)

It trains ``--steps`` steps with the monitor on, timing the monitor's two calls apart from
the rest of each step, and prints: the median step time without the monitor's calls, the
median monitor time per logged step after the first (the first call also pays one-time
costs, printed apart), and the overhead (monitor time per N steps) / (N x step).
"""
import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from minibert import BertConfig, BertForPreTraining
from minibert.internals import InternalsMonitor
from minibert.train import TrainConfig, Trainer


def arrays(n, S, P, V, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (n, S))
    lengths = rng.integers(S // 2, S + 1, n)
    mask = (np.arange(S)[None] < lengths[:, None]).astype(np.int64)
    pos = np.stack([np.sort(rng.choice(np.arange(1, k), P, replace=False)) for k in lengths])
    return dict(input_ids=ids * mask, token_type_ids=np.zeros((n, S), np.int64),
                attention_mask=mask, masked_lm_positions=pos,
                masked_lm_ids=rng.integers(5, V, (n, P)),
                masked_lm_weights=np.ones((n, P), np.float32),
                next_sentence_labels=rng.integers(0, 2, n))


class TimedMonitor(InternalsMonitor):
    """The monitor, with the time of each call kept."""
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seconds = {}

    def before_update(self, model, batch):
        t = time.perf_counter()
        super().before_update(model, batch)
        self._t = time.perf_counter() - t

    def after_update(self, model, batch, step):
        t = time.perf_counter()
        super().after_update(model, batch, step)
        self.seconds[step] = self._t + time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="training steps (default: 40)")
    ap.add_argument("--every", type=int, default=10,
                    help="log the internals every N steps (default: 10)")
    ap.add_argument("--batch-size", type=int, default=16,
                    help="sequences per batch (default: 16; 2 for a short run)")
    ap.add_argument("--seq-len", type=int, default=128,
                    help="tokens per sequence (default: 128; 32 for a short run)")
    args = ap.parse_args()
    config = BertConfig.preset("mini", vocab_size=8192)
    S, B = args.seq_len, args.batch_size
    data = arrays(8 * B, S, max(1, round(0.15 * S)), config.vocab_size)
    model = BertForPreTraining(config, seed=0)
    with tempfile.TemporaryDirectory() as out:
        mon = TimedMonitor(args.every, out)
        tc = TrainConfig(steps=args.steps, batch_size=B, eval_every=10 ** 6, save_every=10 ** 6)
        trainer = Trainer(model, data, None, out, tc, monitor=mon)
        trainer.train_step()                                       # warm-up (compilation)
        mon.seconds.clear()
        for _ in range(args.steps - 1):
            trainer.train_step()
        hist = trainer.history[1:]
        plain = [h["seconds"] - mon.seconds.get(h["step"], 0.0) for h in hist]
        step = float(np.median(plain))
        logged = list(mon.seconds.values())
        first, per_log = logged[0], float(np.median(logged[1:] or logged))
        overhead = per_log / (args.every * step)
    res = dict(command="python benchmarks/bench_internals.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
        steps_timed=len(hist), logged_steps=len(mon.seconds), median_step_s=step,
        monitor_first_call_s=first, monitor_s_per_logged_step=per_log, overhead=overhead)
    print(f"preset mini, batch {B} x {S}: median step {step * 1e3:.0f} ms (without the "
          f"monitor); monitor {per_log * 1e3:.1f} ms per logged step (median of "
          f"{len(logged) - 1} after the first, which took {first * 1e3:.0f} ms); every "
          f"{args.every} steps: overhead {100 * overhead:.2f}% of training time")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
