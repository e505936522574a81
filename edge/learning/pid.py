"""Partial information decomposition (PID) of the label over a pair of modalities, in bits.

For modalities A, B and label Y, I(Y; A, B) = R + U_a + U_b + S: redundancy R (what either
modality tells about Y), unique U_a / U_b (what only one tells) and synergy S (what only the two
together tell). The measure is BROJA (Bertschinger, Rauh, Olbrich, Jost and Ay 2014, "Quantifying
unique information", Entropy 16:2161): U_a = min I_Q(Y; A | B) over the distributions Q with
the observed (A, Y) and (B, Y) marginals, R = I(Y; A) - U_a, S = I(Y; A, B) - R - U_a - U_b.
It is the quantity the CVX estimator of Liang et al. 2023 ("Quantifying & Modeling Multimodal
Interactions", NeurIPS) computes. `dit` (the optional extra `pid`) solves it, with its exponential
cone program (Makkeh, Theis and Vicente 2018, "BROJA-2PID", Entropy 20:271) when `ecos` is
installed.

BROJA needs discrete variables: each modality is replaced by its k-means cluster index (k-means++
seeding, Arthur and Vassilvitskii 2007; Lloyd iterations), the joint counts (cluster_a, cluster_b,
label) are the sufficient statistic, and an interval comes from resampling that table
(multinomial bootstrap). What discretisation costs: I(Y; cluster(A)) <= min(I(Y; A), log2 k), so
a modality carrying more than log2 k bits about Y is cut down, and the plug-in estimate of a table
with few samples per cell is biased upwards — the bias falls on synergy, the only atom that
depends on the full joint table (R and U depend only on the (A, Y) and (B, Y) marginals).
bench/pid.py measures both on synthetic-pid.

Pure functions on numpy arrays; `dit` is imported on first use only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

import numpy as np

from edge.errors import UserError

EXTRA_HINT = "pip install 'parse-edge[pid]' (in a checkout: pip install -e '.[pid]')"


# --- discretisation: k-means --------------------------------------------------------------------

def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur and Vassilvitskii 2007): (k, D) centres drawn from the rows of x.

    Parameters
    ----------
    x : (N, D) float array, N >= k >= 1.
    k : number of centres.
    rng : random source.
    """
    centres = [x[rng.integers(len(x))]]
    nearest = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = nearest.sum()
        # All remaining points sit on a centre already: any point will do.
        pick = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=nearest / total)
        centres.append(x[pick])
        nearest = np.minimum(nearest, ((x - x[pick]) ** 2).sum(axis=1))
    return np.stack(centres).astype(np.float64)


def assign(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (squared Euclidean) for every row: (N,) int64 in [0, k)."""
    d2 = (x * x).sum(axis=1)[:, None] - 2.0 * x @ centres.T + (centres * centres).sum(axis=1)
    return np.asarray(d2.argmin(axis=1), dtype=np.int64)


def cluster_sums(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Lloyd statistic: per centre, the sum of the rows nearest to it (k, D) and their count (k,).

    Sums and counts are additive over data holders, so gossip-averaging them across agents runs
    Lloyd's iteration on the union of their data without moving any sample (the decentralised
    k-means of Datta, Giannella and Kargupta 2009, IEEE TKDE 21:1372).
    """
    labels = assign(x, centres)
    k = len(centres)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    return sums, np.bincount(labels, minlength=k).astype(np.float64)


def lloyd_update(centres: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Move each centre to sums / counts (Lloyd); an empty cluster keeps its centre."""
    out: np.ndarray = centres.copy()
    full = counts > 0
    out[full] = sums[full] / counts[full, None]
    return out


def kmeans(x: np.ndarray, k: int, seed: int, restarts: int = 20, iters: int = 50) -> np.ndarray:
    """Centres (min(k, N), D) of the best of `restarts` k-means++ / Lloyd runs (lowest inertia).

    Many restarts because a merged pair of clusters is a stable local optimum: on synthetic-pid's
    8 hypercube corners 4 restarts left one in 12 modalities with two corners merged, 20 none
    of 60 (6 bit settings x 5 seeds x 2 modalities).

    Raises
    ------
    ValueError
        If x is not a non-empty 2-D array of finite numbers or k < 1.
    """
    if x.ndim != 2 or len(x) == 0 or not np.isfinite(x).all():
        raise ValueError("kmeans: expected a non-empty (N, D) array of finite numbers")
    if k < 1:
        raise ValueError(f"kmeans: expected k >= 1, got {k}")
    x = x.astype(np.float64)
    k = min(k, len(x))
    rng = np.random.default_rng([seed, 0x6B6D])
    best, best_inertia = None, math.inf
    for _ in range(max(1, restarts)):
        centres = kmeans_pp(x, k, rng)
        for _ in range(iters):
            new = lloyd_update(centres, *cluster_sums(x, centres))
            if np.allclose(new, centres):
                break
            centres = new
        inertia = float(((x - centres[assign(x, centres)]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    assert best is not None
    return best


def joint_counts(a: np.ndarray, b: np.ndarray, y: np.ndarray,
                 shape: tuple[int, int, int]) -> np.ndarray:
    """Count (cluster_a, cluster_b, label) triples: a (k_a, k_b, n_classes) int64 table."""
    table = np.zeros(shape, dtype=np.int64)
    np.add.at(table, (a, b, y), 1)
    return table


# --- the decomposition -------------------------------------------------------------------------

@dataclass(frozen=True)
class Pid:
    """The four BROJA atoms of I(Y; A, B), in bits."""

    redundancy: float
    unique_a: float
    unique_b: float
    synergy: float

    @property
    def total_bits(self) -> float:
        """I(Y; A, B): the sum of the atoms."""
        return self.redundancy + self.unique_a + self.unique_b + self.synergy

    def as_dict(self) -> dict[str, float]:
        """JSON-ready atoms."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def require_dit() -> Any:
    """Import dit lazily; a one-line UserError naming the `pid` extra when it is missing."""
    try:
        import dit
        from dit.pid import PID_BROJA
    except ImportError:
        raise UserError(f"pid: the BROJA estimator needs dit, an optional extra: {EXTRA_HINT}") \
            from None
    return dit, PID_BROJA


def _solver() -> str:
    """Pick dit's exponential cone program when ecos is there (fast on large tables), else its default."""
    try:
        import ecos  # noqa: F401
    except ImportError:
        return "auto"
    return "cone"


def broja(counts: np.ndarray) -> Pid:
    """BROJA PID of the label from a (k_a, k_b, n_classes) table of counts (plug-in estimate).

    Atoms are non-negative by construction; the solver's tolerance can leave a value a hair below
    zero, which is clipped.

    Raises
    ------
    ValueError
        If the table is not 3-D, holds negative or non-finite entries, or is empty.
    UserError
        If dit is not installed.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 3 or not np.isfinite(counts).all() or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("broja: expected a non-empty 3-D table of non-negative counts")
    p = counts / counts.sum()
    if min((p.sum(axis=axes) > 0).sum() for axes in ((1, 2), (0, 2), (0, 1))) < 2:
        return Pid(0.0, 0.0, 0.0, 0.0)  # a constant variable: no information to decompose
    dit, pid_broja = require_dit()
    support = np.nonzero(p)
    outcomes = [tuple(int(v) for v in t) for t in zip(*support, strict=True)]
    dist = dit.Distribution(outcomes, p[support].tolist())
    with warnings.catch_warnings():
        # dit warns about the dense sample space k_a * k_b * n_classes; the tables are sparse
        # and the cone program only sees their support.
        warnings.filterwarnings("ignore", message="Sample space has more than")
        pid = pid_broja(dist, [[0], [1]], [2], method=_solver())

    def atom(node: tuple[tuple[int, ...], ...]) -> float:
        return max(0.0, float(pid.get_pi(node)))

    return Pid(atom(((0,), (1,))), atom(((0,),)), atom(((1,),)), atom(((0, 1),)))


@dataclass(frozen=True)
class PidEstimate:
    """A point estimate with a bootstrap percentile interval (`level`, e.g. 0.9)."""

    point: Pid
    low: Pid
    high: Pid
    n_samples: int
    draws: int
    level: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready estimate."""
        # No draws, no interval: null rather than the point estimate posing as its own bounds.
        bounded = self.draws > 0
        return {"bits": self.point.as_dict(), "low": self.low.as_dict() if bounded else None,
                "high": self.high.as_dict() if bounded else None,
                "total_bits": self.point.total_bits, "n_samples": self.n_samples,
                "bootstrap_draws": self.draws, "level": self.level}


def bootstrap_pid(counts: np.ndarray, draws: int, seed: int, level: float = 0.9) -> PidEstimate:
    """Point estimate plus a percentile interval from `draws` multinomial resamples of the table.

    Resampling the table with its own total is the nonparametric bootstrap of the samples with
    the discretisation held fixed (the interval does not include the k-means variability).
    """
    counts = np.asarray(counts)
    point = broja(counts)
    n = round(float(counts.sum()))
    if draws < 1:
        return PidEstimate(point, point, point, n, 0, level)
    rng = np.random.default_rng([seed, 0xB007])
    p = (counts / counts.sum()).ravel()
    samples = [broja(rng.multinomial(n, p).reshape(counts.shape)) for _ in range(draws)]
    tail = 100 * (1 - level) / 2
    bounds = []
    for q in (tail, 100 - tail):
        bounds.append(Pid(*(float(np.percentile([getattr(s, f.name) for s in samples], q))
                            for f in fields(Pid))))
    return PidEstimate(point, bounds[0], bounds[1], n, draws, level)


def planted_pid(redundant_bits: int, unique_bits: int, synergy_bits: int, with_first: bool) -> Pid:
    """Give the PID that synthetic-pid plants for a pair of its modalities (edge.synthetic).

    Label bits are independent fair coins, so each redundant bit is a copy seen by both (1 bit
    of R), each unique bit is seen by one (1 bit of U), and each synergy bit is an XOR of a mask
    the first modality shows and the masked bit every other modality shows: 1 bit of S for a
    pair that includes the first modality, nothing for a pair that does not (both show the same
    masked bit, independent of the label). BROJA is additive over independent components
    (Bertschinger et al. 2014), so the atoms are these bit counts.
    """
    return Pid(float(redundant_bits), float(unique_bits), float(unique_bits),
               float(synergy_bits if with_first else 0))


# --- what the estimates decide -------------------------------------------------------------------

def auto_split(estimates: Sequence[Pid], latent: int) -> tuple[int, int, int]:
    """`model.split: auto`: redundant / unique / synergy widths of a latent of `latent` units.

    Rule: with R = mean redundancy, U = mean unique information per modality ((U_a + U_b) / 2)
    and S = mean synergy over the modality pairs some agent holds, each slice gets one unit and
    the other latent - 3 units are shared in proportion to R : U : S (largest remainder). The
    floor keeps every branch signature alive (a slice of width 0 would remove a head). With no
    estimate or no information at all, the equal split. One ratio fleet-wide, computed before
    round 0: widths change branch signatures, so every agent must build the same ones.
    Measured on 30 seeds no rule was chosen on (bench/RESULTS.md, `split: auto` on 30 fresh
    seeds): within 0.3 points of the best of six fixed ratios on mfeat fou+zer, fou+zer+kar and
    the synergy-heavy synthetic set; tempered variants (halfway to 1:1:1, square-root shares) were
    no better.

    Returns widths summing to `latent`, which read as a ratio give the same widths for `latent`
    (edge.config.slice_widths) and at least one unit each for any larger latent.

    Raises
    ------
    ValueError
        If latent < 3 or an estimate is negative or not finite.
    """
    if latent < 3:
        raise ValueError(f"auto_split: expected a latent of at least 3 units, got {latent}")
    if not estimates:
        return _largest_remainder(latent, (1.0, 1.0, 1.0), floor=1)
    atoms = np.array([[e.redundancy, (e.unique_a + e.unique_b) / 2, e.synergy] for e in estimates])
    if not np.isfinite(atoms).all() or (atoms < 0).any():
        raise ValueError("auto_split: expected finite, non-negative PID atoms")
    shares = atoms.mean(axis=0)
    if shares.sum() <= 0:
        shares = np.ones(3)
    return _largest_remainder(latent, tuple(float(s) for s in shares), floor=1)


def _largest_remainder(total: int, shares: tuple[float, ...], floor: int) -> tuple[int, int, int]:
    free = total - floor * len(shares)
    raw = [free * s / sum(shares) for s in shares]
    widths = [int(w) for w in raw]
    for i in sorted(range(len(raw)), key=lambda i: widths[i] - raw[i])[: free - sum(widths)]:
        widths[i] += 1
    a, b, c = (w + floor for w in widths)
    return a, b, c


class SynergyScope(str, Enum):
    """With whom a modality's synergy projection s_m is averaged."""

    MODALITY = "modality"        # every neighbour holding m (dsgd-hybrid)
    COMBINATION = "combination"  # neighbours holding the same modality combination (PARSE)


# Synergy share of I(Y; A, B) above which s_m is shared by combination only. Not set by data yet:
# on the three-modality benchmark (mfeat fou+zer+kar, README "Where partial alignment wins, ties
# and loses") the scope moved accuracy by less than its noise (by modality +0.15 ± 0.14 points).
SYNERGY_SHARE_THRESHOLD = 0.1


def synergy_scope(pairs_with_m: Sequence[Pid],
                  threshold: float = SYNERGY_SHARE_THRESHOLD) -> SynergyScope:
    """Choose the sharing scope of s_m from the pairs that contain m.

    By combination when synergy is a large part of what some pair tells
    (S / I(Y; A, B) >= threshold), else by modality, where s_m finds more partners.
    """
    share = max((e.synergy / e.total_bits for e in pairs_with_m if e.total_bits > 0), default=0.0)
    return SynergyScope.COMBINATION if share >= threshold else SynergyScope.MODALITY
