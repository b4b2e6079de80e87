"""torch's CPU random generator, emulated without torch: `manual_seed`, `randint`, `randperm`.

The original ACDC implementation draws some task data with torch's default CPU generator
(Greater-Than's nouns and years: `torch.manual_seed(54)` then two `torch.randint` calls;
Induction's corrupted rows and tracr's positional shuffle: `manual_seed` then `torch.randperm`).
Reproducing its prompts bit for bit needs the same draws, and jacdc's core install has no torch,
so this module reimplements the few pieces involved:

- **The engine** is the 32-bit Mersenne Twister MT19937 with the reference `init_genrand`
  seeding. `manual_seed(seed)` keeps the low 32 bits of the seed.
- **`random()`** is one tempered 32-bit output; **`random64()`** is two of them, the first as
  the high half: `(a << 32) | b`.
- **`randint(low, high, size)`** (int64, the default dtype) fills the output in C order with
  `low + r % (high - low)`, where `r` is `random()` when the range is below `2**28` and
  `random64()` otherwise (torch's CPU rule; no rejection, so the modulo bias is torch's too).
- **`randperm(n)`** (int64) starts from `arange(n)` and, for `i = 0 .. n - 2`, swaps entry `i`
  with entry `i + random() % (n - i)`. torch uses another algorithm (on `random64()`) for
  `n >= (2**32 - 1) // 20`, which is not emulated: such sizes raise.

Consecutive calls on one [`TorchGenerator`][] continue one stream, as consecutive torch calls
after one `manual_seed` do. `tests/test_torch_rng.py` checks every function against real torch
over many seeds, ranges and sizes.
"""

from collections.abc import Sequence

import numpy as np
from jaxtyping import Int


_N, _M = 624, 397
_MATRIX_A = 0x9908B0DF
_UPPER, _LOWER = 0x80000000, 0x7FFFFFFF
_MASK32 = 0xFFFFFFFF
_RANDOM64_SPAN = 2**28  # torch's CPU randint draws 64 bits from this range size up
RANDPERM_MAX_N = _MASK32 // 20
"""`randperm` sizes from this one up use torch's other algorithm (not emulated)."""


class TorchGenerator:
    """torch's default CPU generator right after `torch.manual_seed(seed)`.

    **Arguments:**

    - `seed`: an integer in `[0, 2**64)`, as `torch.manual_seed` takes (only its low 32 bits
        reach the engine).
    """

    def __init__(self, seed: int):
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"A torch seed is an integer in [0, 2**64), got {seed}.")
        state = [seed & _MASK32]
        for j in range(1, _N):
            prev = state[-1]
            state.append((1812433253 * (prev ^ (prev >> 30)) + j) & _MASK32)
        self._state = state
        self._next = _N  # the first draw regenerates the whole state

    def _twist(self) -> None:
        mt = self._state
        for i in range(_N):
            y = (mt[i] & _UPPER) | (mt[(i + 1) % _N] & _LOWER)
            mt[i] = mt[(i + _M) % _N] ^ (y >> 1) ^ (_MATRIX_A if y & 1 else 0)
        self._next = 0

    def random(self) -> int:
        """One 32-bit draw (torch's `generator->random()`)."""
        if self._next >= _N:
            self._twist()
        y = self._state[self._next]
        self._next += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y

    def random64(self) -> int:
        """One 64-bit draw from two 32-bit ones, the first as the high half."""
        high = self.random()
        return (high << 32) | self.random()

    def randint(self, low: int, high: int, size: int | Sequence[int]) -> Int[np.ndarray, "..."]:
        """`torch.randint(low, high, size)` (int64): uniform in `[low, high)`, in C order."""
        low, high = int(low), int(high)
        if high <= low:
            raise ValueError(f"randint needs low < high, got low={low}, high={high}.")
        span = high - low
        if span >= 2**64:
            raise ValueError(f"randint's range must be below 2**64, got {span}.")
        shape = (int(size),) if isinstance(size, (int, np.integer)) else tuple(map(int, size))
        draw = self.random64 if span >= _RANDOM64_SPAN else self.random
        values = [low + draw() % span for _ in range(int(np.prod(shape, dtype=np.int64)))]
        return np.array(values, np.int64).reshape(shape)

    def randperm(self, n: int) -> Int[np.ndarray, " n"]:
        """`torch.randperm(n)` (int64) for `0 <= n <` [`RANDPERM_MAX_N`][]."""
        n = int(n)
        if not 0 <= n < RANDPERM_MAX_N:
            raise ValueError(
                f"randperm is emulated for 0 <= n < {RANDPERM_MAX_N} (torch switches algorithm "
                f"above), got n={n}."
            )
        perm = list(range(n))
        for i in range(n - 1):
            j = i + self.random() % (n - i)
            perm[i], perm[j] = perm[j], perm[i]
        return np.array(perm, np.int64)


def torch_randint(
    low: int, high: int, size: int | Sequence[int], *, seed: int
) -> Int[np.ndarray, "..."]:
    """`torch.manual_seed(seed); torch.randint(low, high, size)`, without torch."""
    return TorchGenerator(seed).randint(low, high, size)


def torch_randperm(n: int, *, seed: int) -> Int[np.ndarray, " n"]:
    """`torch.manual_seed(seed); torch.randperm(n)`, without torch."""
    return TorchGenerator(seed).randperm(n)
