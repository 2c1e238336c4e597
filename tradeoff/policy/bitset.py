"""The fast scorer: P threshold vectors scored at once with rank bitsets.

The fast scorer (`make_scorer`), and why it is exact
----------------------------------------------------
Ranks. Per exit k < K-1, sort the confidences once: `order_k` lists the samples from
least to most confident and a sample's "place" is its index in that list. For a
threshold t, `r = searchsorted(sorted_k, t, side="left")` is the first place whose value
is >= t, so every place before r holds a value < t and every place from r on a value
>= t. Hence, for every sample and every t (ties included, whatever order the sort gave
equal values, since they all fall on one side of r; NaN excluded):

    conf_k[n] >= t   <=>   place_k(n) >= r

so the float rule becomes an integer one, and the set of samples passing exit k is a
*suffix* of `order_k`: the samples at places r..N-1.

Bitsets. A set of samples is a packed bitset, one bit per sample (bit n & 63 of word
n >> 6, W = ceil(N / 64) uint64 words). For "level" places j*B (j = 0 .. N // B) we store
the bitset `level_k[j]` of the samples at places >= j*B. With B = 1 (a level at every
place, used while the tables take <= 64 MiB: N <= ~13,000 for K = 4; beyond, about 1,024
levels) the passing set of exit k is exactly `level_k[r]`: one row gathered per
(row, exit).

Counting. Let cum_k = pass_0 | ... | pass_k, the samples gone by exit k (an OR down the
exits). Since cum_{k-1} is a subset of cum_k, |cum_k| - |cum_{k-1}| samples leave at
exit k, and N - |cum_{K-2}| at the deepest. For right answers: with C_k the samples exit
k answers right and e(n) a sample's exit, n is in cum_k exactly for k >= e(n), so the
bitset C_e = C_{K-1} ^ XOR_{k<K-1} (cum_k & (C_k ^ C_{k+1})) (the XOR telescopes to
C_{e(n)} bit by bit), and its popcount is the number answered right. All of it is
O(P K N / 64) word operations per call, in chunks of rows small enough to stay in cache.

Remainders (B > 1, large N). Levels every B places keep the tables at
(K-1) * (N // B + 1) * W * 8 bytes, linear in N for a fixed level count. Then the
nearest stored level `level_k[j]`, j = round(r / B), differs from the passing set by the
samples at places between j*B and r (fewer than B/2 + 1, except near the top): all of
them set in one and clear in the other. Flipping exactly those bits (`order_k[a:b]`,
XOR with `ufunc.at`) makes the gathered bitset exact before counting. That costs
O(P K B) scattered bit flips per call, kept minor by the level count (see
`_choose_block`; N = 10^6, K = 8 under the default 256 MiB cap: 306 levels, B = 3268,
~0.6 M flips against ~11 M word operations per 100 rows). Once the cap binds, B grows
like K N^2 / cap, so for N well beyond 10^6 raise `max_level_bytes` to stay linear.

Fallbacks. Under `ensemble` / `most-confident` every exit is thresholded (M = K) and the
fallback's answer does not depend on the thresholds, so it is one more "right" row: the
slots are the M thresholded exits plus the fallback, C_M its right answers, and the
counting above runs on M + 1 slots unchanged (under `deepest`, M = K-1 and C_M = C_{K-1}).
Per-class thresholds (P, M, C) are scored by the vectorised reference instead.

Arithmetic. Both this scorer and the reference produce integer counts (samples leaving
at each exit, samples answered right) and turn them into scores with the same few float
operations (`tradeoff.policy.table.scores_from_counts`), so their results are equal bit for bit.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from tradeoff.errors import is_integer
from tradeoff.policy.table import (
    ExitTable, Scores, check_table, check_thresholds, score_thresholds_reference, scores_from_slots,
)

# Budget for the scorer's level bitsets; beyond it, levels thin out (block size B > 1).
DEFAULT_MAX_LEVEL_BYTES = 256 * 2**20
# Below this, a level at every place (B = 1); above it, about _TARGET_LEVELS levels.
_EXACT_LEVEL_BYTES = 64 * 2**20
_TARGET_LEVELS = 1024
# Budget for the scorer's temporaries within one call (it works in chunks of threshold rows).
_CALL_BYTES = 4 * 2**20


def _pack_rows(mask: np.ndarray) -> np.ndarray:
    """(R, N) bool -> (R, W) uint64, bit n & 63 of word n >> 6 set where mask[:, n]."""
    R, N = mask.shape
    W = (N + 63) // 64
    packed = np.zeros((R, W * 8), dtype=np.uint8)
    packed[:, : (N + 7) // 8] = np.packbits(mask, axis=1, bitorder="little")
    return packed.view("<u8").astype(np.uint64, copy=False)


def _bits(n: np.ndarray) -> np.ndarray:
    """The uint64 with bit n & 63 set, for each sample index n."""
    return np.left_shift(np.uint64(1), (n & 63).astype(np.uint64))


def _block_bitsets(order: np.ndarray, block: int, out: np.ndarray) -> None:
    """Row b of `out` (>= ceil(N / B), W) = bitset of the samples at places [bB, (b+1)B) of `order`.

    Sorting each block's sample ids makes (row, word) keys ascend, so the bits of one
    word are OR-reduced in one `reduceat` pass (no `ufunc.at`, no N x W bool matrix).
    """
    N, W = order.size, out.shape[1]
    whole = N // block
    n = np.concatenate([np.sort(order[: whole * block].reshape(whole, block), axis=1).ravel(),
                        np.sort(order[whole * block :])]).astype(np.int64)
    key = (np.arange(N, dtype=np.int64) // block) * W + (n >> 6)
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    out.reshape(-1)[key[starts]] = np.bitwise_or.reduceat(_bits(n), starts)


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount_into(words: np.ndarray, out: np.ndarray) -> None:
    """out[...] = number of set bits of each uint64 in `words` (out float64, same shape).

    `np.bitwise_count` (NumPy >= 2.0, pinned in constraints.txt); setup.cfg still allows
    NumPy 1.24, where a byte lookup table does the same.
    """
    if hasattr(np, "bitwise_count"):
        np.bitwise_count(words, out=out, casting="unsafe")
    else:  # NumPy < 2
        out[...] = _BYTE_POPCOUNT[words.view(np.uint8)].reshape(*words.shape, 8).sum(axis=-1)


def _xor_bits_into(flat: np.ndarray, word: np.ndarray, n: np.ndarray) -> None:
    """flat[word[i]] ^= bit of sample n[i] (repeated words allowed)."""
    np.bitwise_xor.at(flat, word, _bits(n))


def _choose_block(n: int, m: int, max_level_bytes: int) -> int:
    """B: 1 (exact levels, no remainders) while the tables stay small, else ~1,024 levels.

    Remainder flips (~B/4 scattered XORs per row and exit) cost about as much as the
    bitset work (~N/64 words per row and exit, a dozen passes) when B ~ N / 400; ~1,024
    levels keep them a minor part while the tables stay modest (K = 8: 90 MB at N = 10^5),
    and `max_level_bytes` caps them (N = 10^6, K = 8: 306 levels, B = 3268).
    """
    per_level = max(m, 1) * ((n + 63) // 64) * 8
    if (n + 1) * per_level <= min(_EXACT_LEVEL_BYTES, max_level_bytes):
        return 1
    levels = max(1, min(_TARGET_LEVELS, max_level_bytes // per_level))
    return n // levels + 1  # then n // B + 1 <= levels rows


class BitsetScorer:
    """Scores threshold matrices on one `ExitTable`; build once, call many times.

    See the module docstring for the algorithm and why it equals the reference exactly.

    Attributes:
        block: B, places between stored levels (1 = a level at every place, no remainders).
        level_bytes: memory held by the level bitsets.
    """

    def __init__(self, table: ExitTable, *, max_level_bytes: int = DEFAULT_MAX_LEVEL_BYTES, block: int | None = None):
        check_table(table)
        K, N = table.confidence.shape
        M, W = table.num_thresholds, (N + 63) // 64
        self._K, self._M, self._N, self._W = K, M, N, W
        self._table = table
        answer_correct = table.answer_correct  # (M + 1, N): the thresholded exits, then the fallback
        right = _pack_rows(answer_correct)  # (M + 1, W): C_k
        self._flip = right[:-1] ^ right[1:]  # (M, W) D_k: slots k and k + 1 disagree on rightness
        self._right_last = right[M]
        self._right_at_last = int(answer_correct[M].sum())
        if block is None:
            block = _choose_block(N, M, max_level_bytes)
        if not is_integer(block) or block < 1:
            raise ValueError(f"block must be a positive integer number of places; got {block!r}")
        self.block = B = int(min(block, N))
        nlev = N // B + 1
        conf = np.asarray(table.confidence[:M], dtype=np.float64)
        # Any sorted order works (ties sit on one side of every r), so no stable sort needed.
        self._order = np.argsort(conf, axis=1).astype(np.int32 if N < 2**31 else np.int64)  # (M, N)
        self._sorted = np.take_along_axis(conf, self._order, axis=1)  # (M, N)
        self._levels_2d = np.zeros((M * nlev, W), dtype=np.uint64)  # row k * nlev + j = level_k[j]
        self._level_offsets = np.arange(M, dtype=np.int64) * nlev
        for k in range(M):
            levels = self._levels_2d[k * nlev : (k + 1) * nlev]
            _block_bitsets(self._order[k], B, levels)
            rev = levels[::-1]
            np.bitwise_or.accumulate(rev, axis=0, out=rev)  # level j = OR of block rows >= j
        self.level_bytes = int(self._levels_2d.nbytes)

    def __call__(self, thresholds: np.ndarray) -> Scores:
        """Score a (P, M) threshold matrix (M = K-1 under `deepest`, else K); a (M,) vector is one
        row. Per-class (P, M, C) thresholds go to the vectorised reference (same counts)."""
        if self._table.predicted is not None and np.ndim(thresholds) == 3:
            return score_thresholds_reference(self._table, thresholds)
        t = check_thresholds(thresholds, self._K, self._M)
        P = t.shape[0]
        N, W, M = self._N, self._W, self._M
        exit_counts = np.zeros((P, M + 1), dtype=np.int64)  # slots: M thresholded exits, then the fallback
        correct_counts = np.zeros(P, dtype=np.int64)
        if M == 0:
            exit_counts[:, 0] = N
            correct_counts[:] = self._right_at_last
            return scores_from_slots(correct_counts, exit_counts, self._table)
        tt = np.ascontiguousarray(t.T)  # (M, P)
        rows = int(max(1, min(P, _CALL_BYTES // (16 * (M + 1) * W))))  # uint64 bitsets + float64 popcounts
        for p0 in range(0, P, rows):
            p1 = min(P, p0 + rows)
            r = np.stack([np.searchsorted(self._sorted[k], tt[k, p0:p1], side="left") for k in range(M)])
            self._count(r, exit_counts[p0:p1], correct_counts[p0:p1])
        return scores_from_slots(correct_counts, exit_counts, self._table)

    def _count(self, r: np.ndarray, exit_counts: np.ndarray, correct_counts: np.ndarray) -> None:
        """Counts for the rows whose first passing places are `r` (M, P), written in place.

        With cum_k the samples gone by exit k, |cum_k| - |cum_{k-1}| leave at k. A sample
        is in cum_k exactly for k >= its exit e, so C_e = C_{K-1} ^ XOR_k (cum_k & D_k) with
        D_k = C_k ^ C_{k+1} (C_k: samples exit k answers right), and one popcount of that
        bitset counts the right answers.
        """
        M, P = r.shape
        W, B = self._W, self.block
        lev = r if B == 1 else np.minimum((r + B // 2) // B, self._N // B)  # nearest stored level
        buf = np.empty((M + 1, P, W), dtype=np.uint64)
        cum, right = buf[:M], buf[M]
        np.take(self._levels_2d, (lev + self._level_offsets[:, None]).ravel(), axis=0, out=cum.reshape(M * P, W))
        if B > 1:
            self._toggle_remainders(cum, r, lev * B)
        for k in range(1, M):
            np.bitwise_or(cum[k - 1], cum[k], out=cum[k])
        flips = np.bitwise_and(cum, self._flip[:, None, :])
        np.bitwise_xor(flips[0], self._right_last, out=right)
        for k in range(1, M):
            np.bitwise_xor(right, flips[k], out=right)
        pop = np.empty((M + 1, P, W), dtype=np.float64)
        _popcount_into(buf, pop)
        # (M + 1, P); float64 adds integers < 2**53 exactly in any order; einsum, not BLAS
        # (no thread pool whose stragglers stall a call on a busy machine)
        sums = np.einsum("mpw->mp", pop).astype(np.int64)
        gone = sums[:M]
        exit_counts[:, 0] = gone[0]
        exit_counts[:, 1:M] = (gone[1:] - gone[:-1]).T
        exit_counts[:, M] = self._N - gone[M - 1]
        correct_counts[:] = sums[M]

    def _toggle_remainders(self, cum: np.ndarray, r: np.ndarray, level_place: np.ndarray) -> None:
        """Turn each gathered level (M, P, W) into the exact passing set, in place.

        level_k[j] holds the samples at places >= j*B; the passing set those at places
        >= r. They differ by the samples at places between the two, all set in one and
        clear in the other, so flipping their bits (fewer than B/2 + 1 per row and exit,
        except near the top) makes the level exact.
        """
        M, P, W = cum.shape
        lo = np.minimum(r, level_place).ravel()
        length = np.abs(r - level_place).ravel()  # (M * P,)
        total = int(length.sum())
        if total == 0:
            return
        which = np.repeat(np.arange(M * P), length)  # bitset row k * P + p of each sample to flip
        first = np.cumsum(length) - length
        place = np.repeat(lo - first, length) + np.arange(total)
        n = self._order[which // P, place]
        _xor_bits_into(cum.reshape(-1), which * W + (n >> 6), n)


def make_scorer(
    table: ExitTable, *, max_level_bytes: int = DEFAULT_MAX_LEVEL_BYTES, block: int | None = None
) -> Callable[[np.ndarray], Scores]:
    """A scorer for `table`: precomputes sorted confidences and level bitsets once.

    The search calls it for every population (build: a sort per exit plus the level
    tables, ~10 ms at N = 5,000, K = 4; a few seconds at N = 10^6, K = 8). Calls only
    read the precomputed arrays, so one scorer may serve several threads.

    Args:
        table: the split's exit table.
        max_level_bytes: memory cap of the level bitsets. A level at every place
            (B = 1, no remainders) while that takes <= 64 MiB, else ~1,024 levels, fewer
            if the cap binds (B grows, and the per-call remainder work with it).
        block: force B (testing); None picks it as above.

    Returns:
        A callable thresholds (P, K-1) -> Scores, equal bit for bit to
        `score_thresholds_reference`.

    Raises:
        ValueError: for an empty table or NaN confidences.
    """
    return BitsetScorer(table, max_level_bytes=max_level_bytes, block=block)
