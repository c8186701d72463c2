"""Tests of minibert.rng: Philox4x32-10 known answers, the stream layout every dropout
implementation shares, uniform / keep_mask, and argument checking."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibert import rng
from tests.helpers import to_np

MASK32 = 0xFFFFFFFF


# Random123's kat_vectors for philox4x32 with 10 rounds: (counter, key, expected output).
KAT = [
    ((0, 0, 0, 0), (0, 0),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32, MASK32, MASK32, MASK32), (MASK32, MASK32),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _philox_python(ctr, key, rounds=10):
    """Philox4x32 on Python ints, written from the paper: an independent reference."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(rounds):
        if r > 0:
            k0 = (k0 + 0x9E3779B9) & MASK32
            k1 = (k1 + 0xBB67AE85) & MASK32
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32)
    return c0, c1, c2, c3


def _word(i, seed, offset):
    """Word of element ``i`` of the stream (seed, offset) from the documented convention,
    by one direct philox4x32 call."""
    block = i // 4
    out = rng.philox4x32(np.uint32(block & MASK32), np.uint32(block >> 32),
                         np.uint32(offset & MASK32), np.uint32(offset >> 32),
                         seed & MASK32, seed >> 32)
    return int(out[i % 4])


@pytest.mark.parametrize("ctr,key,expected", KAT, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(xp, ctr, key, expected):
    words = rng.philox4x32(*(xp.asarray([c], dtype=xp.uint32) for c in ctr), *key)
    got = tuple(int(to_np(w)[0]) for w in words)
    assert got == expected, f"philox4x32({ctr}, {key}) = {[hex(g) for g in got]}, " \
                            f"expected {[hex(e) for e in expected]}"
    assert _philox_python(ctr, key) == expected
    assert all(w.dtype == np.uint32 for w in words)


def test_philox_vectorised_matches_python_reference():
    r = np.random.default_rng(0)
    ctr = r.integers(0, 2**32, size=(4, 50), dtype=np.uint64).astype(np.uint32)
    keys = r.integers(0, 2**32, size=(2, 50), dtype=np.uint64).astype(np.uint32)
    out = rng.philox4x32(*ctr, keys[0], keys[1])
    for j in range(50):
        expected = _philox_python(tuple(int(c[j]) for c in ctr), (int(keys[0, j]), int(keys[1, j])))
        assert tuple(int(w[j]) for w in out) == expected, f"column {j}"


@pytest.mark.parametrize("seed,offset", [(0, 0), (42, 7), (2**32 + 5, 2**40 + 3), (2**64 - 1, 2**64 - 1)])
def test_random_bits_layout(seed, offset):
    n = 37                                              # not a multiple of 4: a partial last block
    bits = rng.random_bits(n, seed, offset)
    assert bits.shape == (n,) and bits.dtype == np.uint32
    expected = [_word(i, seed, offset) for i in range(n)]
    assert [int(b) for b in bits] == expected


class _BlocksFrom:
    """NumPy with ``arange`` shifted by ``base``: ``random_bits`` numbers its blocks with
    ``xp.arange``, so this runs its counter-word split at block indices >= 2**32 without
    materialising 2**34 elements."""

    def __init__(self, base):
        self.base = base

    def __getattr__(self, name):
        return getattr(np, name)

    def arange(self, n, dtype):
        return np.arange(n, dtype=dtype) + dtype(self.base)


@pytest.mark.parametrize("base", [2**32 - 1, 5 * 2**32 + 3, 2**62 + 2**33 + 1])
def test_random_bits_high_block_words(base):
    seed, offset, n = 1234, 99, 12                      # blocks base, base + 1, base + 2
    bits = rng.random_bits(n, seed, offset, xp=_BlocksFrom(base))
    for i in range(n):
        block = base + i // 4
        expected = _philox_python((block & MASK32, block >> 32, offset & MASK32, offset >> 32),
                                  (seed & MASK32, seed >> 32))[i % 4]
        assert int(bits[i]) == expected == _word(4 * base + i, seed, offset), f"element {i}"
    # the high counter word matters: block b and block b mod 2**32 give different words
    low = rng.random_bits(n, seed, offset, xp=_BlocksFrom(base & MASK32))
    if base >> 32:
        assert not np.array_equal(bits, low)


@given(seed=st.integers(0, 2**64 - 1), offset=st.integers(0, 2**64 - 1), n=st.integers(0, 21))
def test_random_bits_layout_hypothesis(seed, offset, n):
    bits = rng.random_bits(n, seed, offset)
    assert [int(b) for b in bits] == [_word(i, seed, offset) for i in range(n)]


def test_backends_give_the_same_bits(xp):
    for seed, offset in ((0, 0), (7, 2**33 + 1), (2**63 + 11, 5)):
        np.testing.assert_array_equal(to_np(rng.random_bits(1001, seed, offset, xp)),
                                      rng.random_bits(1001, seed, offset))
        np.testing.assert_array_equal(to_np(rng.uniform((7, 11), seed, offset, xp)),
                                      rng.uniform((7, 11), seed, offset))
        np.testing.assert_array_equal(to_np(rng.keep_mask((3, 5, 9), 0.3, seed, offset, xp)),
                                      rng.keep_mask((3, 5, 9), 0.3, seed, offset))


def test_uniform_has_24_bit_resolution_in_unit_interval(xp):
    shape = (200, 257)
    u = rng.uniform(shape, seed=3, offset=1, xp=xp)
    bits = rng.random_bits(200 * 257, 3, 1)
    u_np = to_np(u)
    assert u.shape == shape and u.dtype == np.float32
    assert u_np.min() >= 0.0 and u_np.max() < 1.0
    scaled = u_np.astype(np.float64) * 2**24
    np.testing.assert_array_equal(scaled, np.floor(scaled))        # multiples of 2**-24
    np.testing.assert_array_equal(scaled.reshape(-1), (bits >> 8).astype(np.float64))  # C order
    # float64 output holds the very same values
    np.testing.assert_array_equal(to_np(rng.uniform(shape, 3, 1, xp, np.float64)), u_np)
    # the largest possible word maps strictly below 1 in float32
    assert np.float32((MASK32 >> 8) * 2.0**-24) < 1.0


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_is_one_minus_p(xp, p):
    n = 200_000
    keep = to_np(rng.keep_mask((n,), p, seed=11, offset=2, xp=xp))
    assert keep.dtype == np.bool_
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(keep.mean() - (1 - p)) < 5 * sigma, f"kept {keep.mean():.4f}, expected {1 - p}"
    # keep is exactly uniform >= p
    np.testing.assert_array_equal(keep, rng.uniform((n,), 11, 2) >= np.float32(p))


def test_keep_mask_p_zero_keeps_everything():
    assert rng.keep_mask((4, 33), 0.0, seed=1).all()


def test_streams_differ_across_seeds_and_offsets():
    n = 256
    base = rng.random_bits(n, 5, 9)
    others = {"offset + 1": (5, 10), "seed + 1": (6, 9), "seed high word": (5 + 2**32, 9),
              "offset high word": (5, 9 + 2**32)}
    for what, (seed, offset) in others.items():
        other = rng.random_bits(n, seed, offset)
        same = int(np.sum(other == base))
        assert same <= 1, f"{what}: {same} of {n} words equal the base stream"
    # an offset is not the same stream shifted by some blocks
    shifted = rng.random_bits(n + 64, 5, 10)
    for k in range(0, 64, 4):
        assert not np.array_equal(shifted[k:k + n], base)


@pytest.mark.parametrize("name", ["seed", "offset"])
def test_bad_seed_or_offset_raises(name):
    def call(value):
        kwargs = {"seed": 0, "offset": 0, name: value}
        return rng.random_bits(4, kwargs["seed"], kwargs["offset"])

    for value in (-1, 2**64, np.int64(-3)):
        with pytest.raises(ValueError, match=rf"{name}=.* is out of range, expected 0 <= {name} < 2\*\*64"):
            call(value)
    for value in (1.5, "3", True, None, np.float64(2.0)):
        with pytest.raises(TypeError, match=rf"{name}=.* has type \w+, expected an integer"):
            call(value)
    # the extremes are valid, as are NumPy integers
    call(2**64 - 1)
    call(np.uint64(2**64 - 1))
    call(np.int32(7))
    # the same checks guard uniform and keep_mask
    with pytest.raises(ValueError, match=rf"{name}=-1 is out of range"):
        rng.keep_mask((3,), 0.5, **{"seed": 0, "offset": 0, name: -1})


def test_check_u64_is_the_public_check():
    """``check_u64`` (used by the dropout op and the kernels) returns a Python int and
    raises with the argument's name."""
    assert rng.check_u64("seed", np.uint64(2**64 - 1)) == 2**64 - 1
    assert type(rng.check_u64("offset", np.int32(7))) is int
    with pytest.raises(ValueError, match=r"offset=-1 is out of range, expected 0 <= offset"):
        rng.check_u64("offset", -1)
    with pytest.raises(TypeError, match=r"seed=True has type bool, expected an integer"):
        rng.check_u64("seed", True)


def test_bad_count_raises():
    with pytest.raises(ValueError, match=r"n=-1 is not a valid element count"):
        rng.random_bits(-1, 0)
    assert rng.random_bits(0, 0).shape == (0,)


# ------------------------------------------------------------------- rows of a larger layout
def _rows_of(lengths, S):
    """Padded positions b * S + i (i < n_b) of the real tokens of a right-padded batch."""
    return np.array([b * S + i for b, n in enumerate(lengths) for i in range(n)], dtype=np.int64)


@pytest.mark.parametrize("lengths,S,R,start", [
    ((3, 1, 5), 5, 7, 0),                   # R not a multiple of 4, a length-1 sequence
    ((2, 4), 4, 1, 3),                      # one element per row, start inside a block
    ((5, 5), 5, 6, 2**32 + 1),              # no padding at all
    ((1, 0, 2), 3, 13, 10),                 # an empty sequence
])
@pytest.mark.parametrize("seed,offset", [(0, 0), (2**63 + 11, 2**40 + 3)])
def test_keep_mask_rows_is_keep_mask_at_the_rows(xp, lengths, S, R, start, seed, offset):
    B, p = len(lengths), 0.4
    rows = _rows_of(lengths, S)
    whole = to_np(rng.keep_mask((B * S, R), p, seed, offset, xp, start))
    got = rng.keep_mask_rows(xp.asarray(rows), R, p, seed, offset, xp, start)
    assert got.shape == (rows.size, R) and got.dtype == np.bool_
    np.testing.assert_array_equal(to_np(got), whole[rows])


def test_keep_mask_rows_follows_the_convention():
    """Element (t, j) is stream element start + rows[t] * R + j, any row order, repeats
    allowed, unsigned rows too: checked word by word against the documented convention."""
    seed, offset, p, R, start = 2**40 + 9, 7, 0.5, 5, 3
    for rows in (np.array([6, 0, 3, 3, 1]), np.array([2, 9], dtype=np.uint8)):
        got = rng.keep_mask_rows(rows, R, p, seed, offset, start=start)
        for t, r in enumerate(rows):
            words = [_word(start + int(r) * R + j, seed, offset) for j in range(R)]
            np.testing.assert_array_equal(got[t], [(w >> 8) * 2.0**-24 >= p for w in words])


def test_keep_mask_rows_up_to_the_last_element_index():
    """A last element index of 2**64 - 1 is drawn from its own counter block (no wraparound);
    one more is refused."""
    seed, offset, R = 5, 2**64 - 1, 6
    rows = np.array([1, 0])
    start = 2**64 - 2 * R                               # row 1 ends at element 2**64 - 1
    got = rng.keep_mask_rows(rows, R, 0.5, seed, offset, start=start)
    for t, r in enumerate(rows):
        words = [_word(start + int(r) * R + j, seed, offset) for j in range(R)]
        np.testing.assert_array_equal(got[t], [(w >> 8) * 2.0**-24 >= 0.5 for w in words])
    with pytest.raises(ValueError, match=r"rows holds 1: with row_size=6 and start=.* >= 2\*\*64"):
        rng.keep_mask_rows(rows, R, 0.5, seed, offset, start=start + 1)


def test_keep_mask_rows_empty():
    assert rng.keep_mask_rows(np.zeros(0, np.int64), 7, 0.5, 1).shape == (0, 7)
    assert rng.keep_mask_rows(np.array([3, 1]), 0, 0.5, 1).shape == (2, 0)


@pytest.mark.parametrize("rows,error,message", [
    ([0, 1], TypeError, r"rows has type builtins.list, expected a numpy integer array"),
    (np.array([0.0, 1.0]), TypeError, r"rows has dtype float64, expected an integer dtype"),
    (np.array([True, False]), TypeError, r"rows has dtype bool, expected an integer dtype"),
    (np.array([[0, 1]]), ValueError, r"rows has shape \(1, 2\), expected a 1-D array"),
    (np.array(3), ValueError, r"rows has shape \(\), expected a 1-D array"),
    (np.array([0, 4, -2]), ValueError, r"rows holds -2 \(at index 2\), expected row indices >= 0"),
])
def test_bad_rows_raise(rows, error, message):
    with pytest.raises(error, match=message):
        rng.keep_mask_rows(rows, 3, 0.5, 1)


def test_check_rows():
    rows = rng.check_rows(np.array([4, 0, 2], np.int32), 3, row_size=5, start=1)
    assert rows.dtype == np.uint64 and rows.tolist() == [4, 0, 2]
    with pytest.raises(ValueError, match=r"rows has length 3, expected 2: one row index per row"):
        rng.check_rows(np.array([4, 0, 2]), 2)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"row_size=.* is not a valid row size"):
            rng.keep_mask_rows(np.array([0]), bad, 0.5, 1)
    with pytest.raises(ValueError, match=r"start=-1 is out of range"):
        rng.keep_mask_rows(np.array([0]), 2, 0.5, 1, start=-1)
