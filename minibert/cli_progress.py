"""The command line's progress: a tqdm bar fed by the Trainer's callbacks, and the stage
messages of a run (shared by ``minibert pretrain`` and ``minibert finetune``)."""
from __future__ import annotations

import sys


class _Progress:
    """A tqdm bar over the training steps, fed by the trainer's callbacks. The bar is drawn
    from the first step on, so an error while the data is prepared stays one clean line."""

    def __init__(self, total, desc, keys):
        self.total, self.desc, self.keys = total, desc, keys
        self.bar = None

    def _open(self, done):
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, initial=done, desc=self.desc, unit="step",
                            dynamic_ncols=True, file=sys.stderr, mininterval=0.5)

    def step(self, rec):
        self._open(rec["step"] - 1)             # a resumed run starts part of the way in
        self.bar.update(1)
        post = {k: f"{rec[k]:.3f}" for k in self.keys if k in rec}
        post["tok/s"] = f"{rec['tokens_per_s']:,.0f}"
        self.bar.set_postfix(post, refresh=False)
        if rec["step"] >= self.total:           # the last step: what follows prints plainly
            self.bar.close()

    def eval(self, rec):
        text = ", ".join(f"{k} {rec[k]:.4f}" + (f" (baseline {rec['mlm_baseline']:.4f})"
                                                 if k == "mlm_acc" and "mlm_baseline" in rec else "")
                         for k in ("loss", *self.keys[1:]) if k in rec)
        line = f"step {rec['step']}: held-out {text}"
        if self.bar is None or self.bar.disable:
            print(line, flush=True)
        else:
            self.bar.write(line)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _stage(msg):
    print(msg, flush=True)


def _run_training(run, total, desc, keys):
    from .train import TrainingError
    progress = _Progress(total, desc, keys)
    try:
        return run(on_step=progress.step, on_eval=progress.eval)
    except TrainingError as e:
        progress.close()
        print(f"minibert: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        progress.close()
