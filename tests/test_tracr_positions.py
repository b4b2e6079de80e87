"""tracr's positional corruption option (`positions="none" | "shuffled"`)."""

import numpy as np
import pytest

import jacdc
from jacdc import tasks
from jacdc.tasks._tracr import POSITION_SEED, shuffled_positions


def test_shuffled_is_torch_randperm_under_seed_49():
    assert shuffled_positions(2, 4).tolist() == [[2, 3, 0, 1]] * 2
    assert shuffled_positions(1, 5).tolist() == [[0, 2, 4, 1, 3]]
    torch = pytest.importorskip("torch")
    for seq in range(1, 12):
        torch.manual_seed(POSITION_SEED)
        assert shuffled_positions(1, seq)[0].tolist() == torch.randperm(seq).tolist(), seq


@pytest.mark.parametrize("name", ["tracr-reverse", "tracr-proportion"])
def test_option_is_applied_and_recorded(name):
    none = tasks.load_task(name)
    assert none.info["positions"] == "none" and none.info["corrupted_positions"] is None
    assert none.val.corrupted_positions is None and none.test.corrupted_positions is None
    shuffled = tasks.load_task(name, positions="shuffled")
    assert shuffled.info["positions"] == "shuffled"
    assert shuffled.info["corrupted_positions"] == [2, 3, 0, 1]  # seq 4 for both tasks
    cp = np.asarray(shuffled.val.corrupted_positions)
    assert cp.shape == shuffled.val.clean.shape and (cp == [2, 3, 0, 1]).all()
    np.testing.assert_array_equal(shuffled.val.clean, none.val.clean)


def test_unknown_option_is_one_line_error():
    with pytest.raises(ValueError, match="positions must be one of none, shuffled") as err:
        tasks.load_task("tracr-reverse", positions="random")
    assert "\n" not in str(err.value)


def test_sp_cache_never_shuffles_positions():
    # The original's SP caches the corrupted run with the ordinary positions.
    none = tasks.load_task("tracr-reverse")
    shuffled = tasks.load_task("tracr-reverse", positions="shuffled")
    a = jacdc.unit_ablation_sources(none.model, none.val, False)
    b = jacdc.unit_ablation_sources(shuffled.model, shuffled.val, False)
    np.testing.assert_array_equal(a.resid, b.resid)
    # ... while ACDC's corrupted run does use them.
    c = jacdc.ablation_sources(shuffled.model, shuffled.val, False)
    assert not np.allclose(a.resid, c.resid)
