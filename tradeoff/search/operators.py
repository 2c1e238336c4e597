"""NSGA-II's variation and parent selection as NumPy operators over a whole generation.

DEAP 1.4's formulas, vectorised: the binary tournament on dominance and crowding distance
(`tools.selTournamentDCD`'s rule), simulated binary crossover (`tools.cxSimulatedBinaryBounded`)
and polynomial mutation (`tools.mutPolynomialBounded`), each drawing from the search's seeded
`numpy.random.Generator`; `tests/test_nsga.py` feeds DEAP's own operators the same draws and
compares. `search.nsga` registers them in each run's DEAP toolbox.
"""

from __future__ import annotations

from itertools import chain

import numpy as np
from deap import base

# SBX's two children are x1 + x2 -/+ beta_q * (x2 - x1), halved: the sign of each row.
_SBX_SIDES = np.array([[-1.0], [1.0]])


def tournament_dcd(
    wvalues: np.ndarray, crowding: np.ndarray, order1: np.ndarray, order2: np.ndarray, ties: np.ndarray
) -> np.ndarray:
    """DEAP's dominance/crowding tournament (`selTournamentDCD`), all tournaments at once.

    DEAP's rule for each pair: the one that dominates wins, else the larger crowding
    distance, else a coin (draw <= 0.5: the first). The pairs come from two shuffles of
    the candidates taken four at a time, as DEAP pairs them: (o1[i], o1[i+1]),
    (o1[i+2], o1[i+3]), (o2[i], o2[i+1]), (o2[i+2], o2[i+3]) for i = 0, 4, 8, ...; so
    each candidate plays twice, and consecutive winners (the next parent pair) differ.

    Args:
        wvalues: (n, M) weighted fitness (DEAP's `wvalues`: larger is better).
        crowding: (n,) crowding distances (DEAP's `crowding_dist`; inf at front ends).
        order1, order2: (c,) the two shuffles of candidate indices, c a multiple of 4.
        ties: (c,) uniform [0, 1) coins, one per tournament (used only on ties).

    Returns:
        (c,) winners' indices, in DEAP's order.
    """
    pairs = np.concatenate([order1.reshape(-1, 2, 2), order2.reshape(-1, 2, 2)], axis=1).reshape(-1, 2)
    a, b = pairs[:, 0], pairs[:, 1]
    a_no_worse = b_no_worse = True
    for objective in wvalues.T:  # column by column: cheaper than 2-D reductions for M = 2
        wa, wb = objective[a], objective[b]
        a_no_worse = a_no_worse & (wa >= wb)
        b_no_worse = b_no_worse & (wb >= wa)
    a_dominates = a_no_worse & ~b_no_worse  # no worse anywhere, better somewhere
    b_dominates = b_no_worse & ~a_no_worse
    ca, cb = crowding[a], crowding[b]
    undecided = ~a_dominates & ~b_dominates
    first_wins = a_dominates | (undecided & ((ca > cb) | ((ca == cb) & (ties <= 0.5))))
    return np.where(first_wins, a, b)


def select_parents(population: list, k: int, rng: np.random.Generator, store: np.ndarray) -> np.ndarray:
    """Genes (k, K-1) of `k` parents by the dominance/crowding tournament (`tournament_dcd`).

    It needs a multiple of four candidates; other sizes are padded with the first
    individuals (at most three) and the choice truncated to `k`. Reads the fitness and
    crowding distance `selNSGA2` left on each individual.
    """
    n = len(population)
    wvalues = np.fromiter(chain.from_iterable([ind.fitness.wvalues for ind in population]), np.float64, 2 * n)
    crowding = np.fromiter([ind.fitness.crowding_dist for ind in population], np.float64, n)
    rows = np.fromiter([ind.row for ind in population], np.intp, n)
    pad = (-n) % 4
    if pad:
        candidates = np.concatenate([np.arange(n), np.arange(pad)])
        order1, order2 = candidates[rng.permutation(n + pad)], candidates[rng.permutation(n + pad)]
    else:
        order1, order2 = rng.permutation(n), rng.permutation(n)
    winners = tournament_dcd(wvalues.reshape(n, 2), crowding, order1, order2, rng.random(n + pad))
    return store[rows[winners[:k]]]


def sbx_bounded(
    first: np.ndarray, second: np.ndarray, draws: np.ndarray, *, eta: float, low: float, up: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bounded simulated binary crossover of many pairs at once; DEAP's formulas, vectorised.

    Gene by gene the same as DEAP 1.4's `tools.cxSimulatedBinaryBounded` (Deb's NSGA-II C
    code): a gene pair is crossed when its first draw is <= 0.5 and the parents differ by
    more than 1e-14; both children come from one spread draw and are clipped to
    [low, up]; a third draw <= 0.5 swaps them. DEAP draws the last two only for crossed
    genes; here every gene has all three (unused ones are ignored), so the operator is a
    few NumPy passes instead of a Python loop over genes.

    Args:
        first, second: (n, d) parent genes; row i of each forms a pair. Not modified.
        draws: (3, n, d) uniform [0, 1) numbers: per gene, cross?, spread, swap?.
        eta: distribution index (larger = children nearer their parents).
        low, up: the bounds of every gene.

    Returns:
        (child1, child2), new (n, d) float64 arrays.
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    cross_u, spread_u, swap_u = draws
    cross = (cross_u <= 0.5) & (np.abs(first - second) > 1e-14)
    a, b = first[cross], second[cross]
    x1, x2 = np.minimum(a, b), np.maximum(a, b)
    span = x2 - x1
    # Row 0 the lower child (room below x1), row 1 the upper one (room above x2).
    beta = 1.0 + (2.0 * np.concatenate([x1 - low, up - x2]).reshape(2, -1) / span)
    alpha = 2.0 - beta ** -(eta + 1)
    rand = spread_u[cross]
    scaled = rand * alpha  # < 2, as rand < 1 and alpha <= 2: both bases below are finite
    spread = np.where(rand <= 1.0 / alpha, scaled, 1.0 / (2.0 - scaled)) ** (1.0 / (eta + 1))
    children = np.minimum(np.maximum(0.5 * (x1 + x2 + _SBX_SIDES * spread * span), low), up)
    swap = swap_u[cross] <= 0.5
    child1, child2 = first.copy(), second.copy()
    child1[cross] = np.where(swap, children[1], children[0])
    child2[cross] = np.where(swap, children[0], children[1])
    return child1, child2


def polynomial_mutation_bounded(
    genes: np.ndarray, draws: np.ndarray, *, eta: float, low: float, up: float, indpb: float
) -> np.ndarray:
    """Bounded polynomial mutation of many genes at once; DEAP's formulas, vectorised.

    Gene by gene the same as DEAP 1.4's `tools.mutPolynomialBounded` (Deb's NSGA-II C
    code): a gene mutates when its first draw is <= indpb, by a step from its second
    draw, clipped to [low, up]. DEAP draws the second only for mutated genes; here every
    gene has both (unused ones are ignored).

    Args:
        genes: (n, d) genes. Not modified.
        draws: (2, n, d) uniform [0, 1) numbers: per gene, mutate?, step.
        eta: distribution index (larger = smaller steps).
        low, up: the bounds of every gene.
        indpb: probability that a gene mutates.

    Returns:
        The mutated genes, a new (n, d) float64 array.
    """
    genes = np.asarray(genes, dtype=np.float64)
    hit_u, r = draws
    span = up - low
    # Both branches on every gene (a few whole-array passes beat masked subsets at this
    # size); their bases are >= 0 for any draw in [0, 1) and genes in [low, up].
    lower = r < 0.5
    xy_pow = np.where(lower, 1.0 - (genes - low) / span, 1.0 - (up - genes) / span) ** (eta + 1)
    val = np.where(lower, 2.0 * r + (1.0 - 2.0 * r) * xy_pow, 2.0 * (1.0 - r) + 2.0 * (r - 0.5) * xy_pow)
    val_pow = val ** (1.0 / (eta + 1.0))
    delta_q = np.where(lower, val_pow - 1.0, 1.0 - val_pow)
    moved = np.minimum(np.maximum(genes + delta_q * span, low), up)
    return np.where(hit_u <= indpb, moved, genes)


def vary(toolbox: base.Toolbox, genes: np.ndarray, cxpb: float, rng: np.random.Generator) -> np.ndarray:
    """Children of consecutive parent pairs: SBX with probability cxpb, then mutation.

    All pairs are crossed and all children mutated in one vectorised call each, with
    uniform draws from `rng` taken in a fixed order (same seed, same children). A child
    whose genes came out unchanged is a copy of a parent already in the population: it
    is dropped (as pymoo drops duplicates), not scored again.

    Args:
        genes: (m, K-1) the parents' genes; rows 2i and 2i+1 are a pair. Not modified.

    Returns:
        The children's genes (M, K-1), M <= m.
    """
    m, dim = genes.shape
    first = 2 * np.flatnonzero(rng.random(m // 2) <= cxpb)
    rows = genes.copy()  # parents themselves are never modified
    if first.size:
        second = first + 1
        rows[first], rows[second] = toolbox.mate(genes[first], genes[second], rng.random((3, first.size, dim)))
    rows = toolbox.mutate(rows, rng.random((2, m, dim)))
    return rows[(rows != genes).any(axis=1)]
