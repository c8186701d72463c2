"""benchmarks/bench_padding_free.py's batch builders and its reading of the sweep: the
padding shares it reports and the crossover it names are what its batches hold."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_padding_free as bpf  # noqa: E402


@pytest.mark.parametrize("share", [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.45])
def test_a_sweep_batch_has_the_padding_share_asked_and_stays_full_length(share):
    tokens = np.arange(5, 5 + 32 * 128)
    b = bpf.sweep_batch(tokens, 32, 128, share, seed=0)
    assert b["ids"].shape == b["mask"].shape == (32, 128)
    n = b["mask"].sum(axis=1)
    assert n[0] == 128 and n.min() >= 1                       # padded to its own longest row
    assert np.all(np.diff(b["mask"], axis=1) <= 0)             # right-padded: 1s then 0s
    assert np.all((b["ids"] != 0) == b["mask"].astype(bool))   # [PAD] (0) exactly off the mask
    assert abs(bpf.padding_share([b]) - share) <= 0.5 / (32 * 128)
    assert set(np.unique(b["labels"])) <= {0, 1}
    with pytest.raises(ValueError, match="share=0.5"):
        bpf.sweep_batch(tokens, 32, 128, 0.5, seed=0)


def test_batches_are_padded_to_their_longest_row_and_truncated_at_the_cap():
    rng = np.random.default_rng(0)
    b = bpf._pad([[7] * 3, [8] * 200, [9]], cls_id=2, sep_id=3, cap=16, rng=rng)
    assert b["ids"].shape == (3, 16)
    assert b["ids"][0].tolist() == [2, 7, 7, 7, 3] + [0] * 11
    assert b["ids"][1].tolist() == [2] + [8] * 14 + [3]
    assert b["mask"].sum(axis=1).tolist() == [5, 16, 3]
    assert bpf.padding_share([b]) == pytest.approx(1 - 24 / 48)
    short = bpf._pad([[7], [7, 7]], 2, 3, 16, rng)
    assert short["ids"].shape == (2, 4)                        # not padded to the cap
    assert bpf.padding_share([b, short]) == pytest.approx(1 - (24 + 7) / (48 + 8))


def test_spaced_batches_cover_the_text_from_first_to_last():
    texts = list(range(100))
    got = bpf._spaced(texts, 10, 3)
    assert got == [texts[0:10], texts[40:50], texts[90:100]]
    with pytest.raises(SystemExit):
        bpf._spaced(texts, 10, 11)


def _point(share, finetune, inference):
    return {"padding_share": share, "finetune unpad=False / unpad=True": finetune,
            "inference unpad=False / unpad=True": inference}


def test_the_crossover_is_interpolated_where_the_ratio_reaches_one():
    points = [_point(0.0, 0.9, 1.1), _point(0.1, 0.95, 1.2), _point(0.2, 1.05, 1.3)]
    assert bpf.crossover(points, "finetune") == pytest.approx(0.15)
    assert bpf.crossover(points, "inference") == 0.0
    assert bpf.crossover(points[:2], "finetune") is None
    noisy = [_point(0.0, 1.01, 1.0), _point(0.05, 0.96, 1.0), _point(0.1, 1.04, 1.0)]
    assert bpf.crossover(noisy, "finetune") == pytest.approx(0.075)   # the last rise through 1


def test_ratios_divide_the_peer_and_the_padded_path_by_minibert():
    ms = {"minibert": 10.0, "minibert unpad=False": 12.0, "minibert unpad=True": 8.0, "hf": 24.0}
    r = bpf.ratios(ms, list(ms))
    assert r == {"hf / minibert": 2.4, "hf / minibert unpad=False": 2.0,
                 "hf / minibert unpad=True": 3.0, "unpad=False / unpad=True": 1.5,
                 "unpad=False / default": 1.2}
    assert bpf.ratios({"minibert": 10.0, "hf": 5.0}, ["minibert", "hf"]) == {"hf / minibert": 0.5}
