"""The torch CPU-generator emulation (`tasks/_torch_rng.py`) against the MT19937 reference and
against real torch (skipped without torch) over many seeds, ranges and sizes."""

import numpy as np
import pytest

from jacdc.tasks._torch_rng import (
    RANDPERM_MAX_N,
    TorchGenerator,
    torch_randint,
    torch_randperm,
)


def test_mt19937_reference_outputs():
    # The C++ standard's check for std::mt19937: the 10,000th output of the default seed 5489.
    g = TorchGenerator(5489)
    first = g.random()
    assert first == 3499211612
    for _ in range(9998):
        g.random()
    assert g.random() == 4123659995
    # Only the low 32 bits of the seed reach the engine.
    a, b = TorchGenerator(7), TorchGenerator(7 + 2**32)
    assert [a.random() for _ in range(5)] == [b.random() for _ in range(5)]
    g, ref = TorchGenerator(3), TorchGenerator(3)
    high, low = ref.random(), ref.random()
    assert g.random64() == (high << 32) | low


def test_randperm_is_a_permutation_and_errors():
    for n in (0, 1, 2, 17):
        assert sorted(torch_randperm(n, seed=n).tolist()) == list(range(n))
    with pytest.raises(ValueError, match="emulated for 0 <= n"):
        torch_randperm(RANDPERM_MAX_N, seed=0)
    with pytest.raises(ValueError, match="low < high"):
        torch_randint(3, 3, 4, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 2\*\*64\)"):
        TorchGenerator(-1)
    assert torch_randint(-5, 5, (3, 4), seed=1).shape == (3, 4)
    assert torch_randint(0, 10, 0, seed=1).shape == (0,)


SEEDS = [0, 1, 42, 49, 54, 2**31 - 1, 2**32 + 5, 2**64 - 1] + list(
    np.random.default_rng(0).integers(0, 2**32, 12)
)
RANGES = [
    (0, 1),
    (0, 2),
    (0, 120),
    (0, 99),
    (-7, 3),
    (5, 1000),
    (0, 2**28 - 1),  # the last range size torch serves with 32 random bits
    (0, 2**28),  # the first with 64
    (0, 2**31 + 1),
    (0, 2**32 - 1),
    (0, 2**32),
    (-(2**40), 2**40 + 3),
    (-(2**63), 2**63 - 1),
]


@pytest.mark.parametrize("seed", SEEDS)
def test_against_torch(seed):
    torch = pytest.importorskip("torch")
    seed = int(seed)
    for low, high in RANGES:
        torch.manual_seed(seed)
        expected = torch.randint(low, high, (2, 37)).numpy()
        np.testing.assert_array_equal(
            torch_randint(low, high, (2, 37), seed=seed), expected, err_msg=f"{low, high}"
        )
    for n in (1, 2, 3, 4, 10, 50, 100, 257, 1000):
        torch.manual_seed(seed)
        expected = torch.randperm(n).numpy()
        np.testing.assert_array_equal(torch_randperm(n, seed=seed), expected, err_msg=f"n={n}")
    # One stream across consecutive calls of every kind (crossing the 624-word state refill).
    torch.manual_seed(seed)
    expected = [
        torch.randint(0, 120, (200,)),
        torch.randint(0, 2**33, (300,)),
        torch.randperm(50),
        torch.randint(-3, 500, (7, 11)),
        torch.randperm(700),
    ]
    g = TorchGenerator(seed)
    got = [
        g.randint(0, 120, 200),
        g.randint(0, 2**33, (300,)),
        g.randperm(50),
        g.randint(-3, 500, (7, 11)),
        g.randperm(700),
    ]
    for e, o in zip(expected, got):
        assert o.dtype == np.int64
        np.testing.assert_array_equal(o, e.numpy())


def test_original_draws():
    """The draws the original's data use (checked against torch above): tracr's positional
    shuffle for 4 positions and the first Greater-Than noun indices."""
    np.testing.assert_array_equal(torch_randperm(4, seed=49), [2, 3, 0, 1])
