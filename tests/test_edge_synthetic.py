"""synthetic-pid: shapes from the config, and the promised redundant / unique / synergy structure."""

from __future__ import annotations

import numpy as np
import torch

from edge.config.schema import SyntheticConfig
from edge.data.synthetic import label_bits, pid_bits, synthetic_pool

SYN = SyntheticConfig(modalities=("a", "b"), n_samples=3000, dim=16, redundant_bits=1,
                      unique_bits=1, synergy_bits=1, noise=0.5)


def _linear_accuracy(x: np.ndarray, bit: np.ndarray) -> float:
    """Held-out accuracy of a least-squares linear classifier for one 0/1 bit."""
    features = np.c_[x, np.ones(len(x))]
    n_fit = len(bit) * 3 // 4
    w, *_ = np.linalg.lstsq(features[:n_fit], 2.0 * bit[:n_fit] - 1.0, rcond=None)
    return float(((features[n_fit:] @ w > 0) == bit[n_fit:]).mean())


def test_shapes_and_classes_follow_the_config() -> None:
    # Prepare
    syn = SyntheticConfig(modalities=("p", "q", "r"), n_samples=500, dim=7, redundant_bits=2,
                          unique_bits=1, synergy_bits=1, noise=0.1)

    # Execute
    pool = synthetic_pool(syn, seed=3)

    # Assert: 2 + 3*1 + 1 = 6 label bits -> 64 classes.
    assert pool.modalities == ("p", "q", "r")
    assert all(pool.x[m].shape == (500, 7) and pool.x[m].dtype == np.float32 for m in "pqr")
    assert pool.n_classes == 64
    assert pool.y.min() >= 0 and pool.y.max() < 64


def test_pid_ground_truth_positions() -> None:
    # Execute
    truth = pid_bits(SyntheticConfig(modalities=("a", "b"), redundant_bits=2, unique_bits=1,
                                     synergy_bits=2))

    # Assert
    assert truth.n_bits == 6
    assert truth.redundant == (0, 1)
    assert truth.unique == {"a": (2,), "b": (3,)}
    assert truth.synergy == (4, 5)
    assert truth.visible("b") == (0, 1, 3)


def test_same_seed_same_data_other_seed_other_data() -> None:
    # Execute
    first, again, other = synthetic_pool(SYN, 0), synthetic_pool(SYN, 0), synthetic_pool(SYN, 1)

    # Assert
    np.testing.assert_array_equal(first.x["a"], again.x["a"])
    assert not np.array_equal(first.x["a"], other.x["a"])


def test_redundant_and_unique_bits_are_linear_in_their_modalities_synergy_is_not() -> None:
    # Prepare
    pool = synthetic_pool(SYN, 0)
    truth = pid_bits(SYN)
    bits = label_bits(pool.y, truth.n_bits)
    (r,), (ua,), (ub,), (s,) = truth.redundant, truth.unique["a"], truth.unique["b"], truth.synergy

    # Execute
    acc = {(m, j): _linear_accuracy(pool.x[m], bits[:, j]) for m in "ab" for j in (r, ua, ub, s)}
    pair = np.c_[pool.x["a"], pool.x["b"]]
    # XOR of two linear features is linear in their products.
    products = (pool.x["a"][:, :, None] * pool.x["b"][:, None, :]).reshape(len(pool.y), -1)

    # Assert
    assert acc["a", r] > 0.9 and acc["b", r] > 0.9       # redundant: in each modality
    assert acc["a", ua] > 0.9 and acc["b", ua] < 0.6     # unique to a
    assert acc["b", ub] > 0.9 and acc["a", ub] < 0.6     # unique to b
    assert acc["a", s] < 0.6 and acc["b", s] < 0.6       # synergy: neither alone
    assert _linear_accuracy(pair, bits[:, s]) < 0.6     # nor a linear read of both
    assert _linear_accuracy(products, bits[:, s]) > 0.85  # but the combination has it


def test_a_small_mlp_learns_the_label_from_both_modalities_not_from_one() -> None:
    # Prepare
    torch.manual_seed(0)
    pool = synthetic_pool(SYN, 0)
    both = np.c_[pool.x["a"], pool.x["b"]]

    def held_out_accuracy(x: np.ndarray) -> float:
        n_fit = len(x) * 3 // 4
        xs, ys = torch.tensor(x), torch.tensor(pool.y)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(),
                                  torch.nn.Linear(64, pool.n_classes))
        opt = torch.optim.Adam(net.parameters(), lr=0.02)
        for _ in range(150):  # full-batch steps: quick on 2250 samples
            loss = torch.nn.functional.cross_entropy(net(xs[:n_fit]), ys[:n_fit])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float((net(xs[n_fit:]).argmax(1) == ys[n_fit:]).float().mean())

    # Execute
    acc_both, acc_a = held_out_accuracy(both), held_out_accuracy(pool.x["a"])

    # Assert: one modality misses b's unique bit and the synergy bit -> at most ~1/4.
    assert acc_both > 0.7
    assert acc_a < 0.3
