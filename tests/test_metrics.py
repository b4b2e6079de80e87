"""The language-model task metrics on hand-made logits, with hand-computed values (all
minimised: a better model scores lower)."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jacdc.tasks import DocstringMetric, LogitDiffMetric, NLLMetric, ProbDiffMetric


def _logits_from_probs(probs):
    """Logits whose softmax is `probs` (zeros become a very negative logit)."""
    probs = np.asarray(probs, np.float64)
    with np.errstate(divide="ignore"):
        return jnp.asarray(np.where(probs > 0, np.log(probs), -1e4), jnp.float32)


def test_logit_diff_hand_computed():
    # (batch 2, pos 2, vocab 5); only the last position counts.
    logits = np.zeros((2, 2, 5), np.float32)
    logits[0, 0] = [9, -9, 9, 9, 9]  # ignored (not the last position)
    logits[0, 1] = [0.0, 3.0, 0.5, 0.0, 0.0]  # IO = 1, S = 2: -(3 - 0.5) = -2.5
    logits[1, 1] = [2.0, 0.0, 0.0, 0.0, 5.0]  # IO = 0, S = 4: -(2 - 5) = 3
    metric = LogitDiffMetric(correct=jnp.array([1, 0]), wrong=jnp.array([2, 4]))
    np.testing.assert_allclose(metric.per_example(jnp.asarray(logits)), [-2.5, 3.0], rtol=1e-6)
    np.testing.assert_allclose(metric(jnp.asarray(logits)), 0.25, rtol=1e-6)


def test_logit_diff_sign_prefers_io():
    good = jnp.array([[[0.0, 4.0, 1.0]]])  # IO (1) well above S (2)
    bad = jnp.array([[[0.0, 1.0, 4.0]]])
    metric = LogitDiffMetric(correct=jnp.array([1]), wrong=jnp.array([2]))
    assert float(metric(good)) == pytest.approx(-3.0)
    assert float(metric(good)) < float(metric(bad))


def _year_setup():
    # Vocabulary of 102 tokens: 0 and 1 are words, 2 + YY is the token of the year "YY".
    year_tokens = jnp.arange(2, 102)
    probs = np.zeros(102)
    probs[0] = 0.5
    probs[2 + 5] = 0.2  # "05"
    probs[2 + 50] = 0.3  # "50"
    return year_tokens, _logits_from_probs(probs)[None, None, :]


@pytest.mark.parametrize(
    "yy, expected",
    [
        (10, -(0.3 - 0.2)),  # "50" later, "05" not
        (5, -(0.3 - 0.2)),  # YY == yy counts as not greater
        (4, -(0.5 - 0.0)),  # both later
        (50, -(0.0 - 0.5)),  # neither later ("50" == yy)
        (99, -(0.0 - 0.5)),
    ],
)
def test_prob_diff_hand_computed(yy, expected):
    year_tokens, logits = _year_setup()
    metric = ProbDiffMetric(year_tokens=year_tokens, start_year=jnp.array([yy]))
    assert float(metric(logits)) == pytest.approx(expected, abs=1e-5)


def test_prob_diff_batch_mean_and_last_position():
    year_tokens, one = _year_setup()
    first = jnp.zeros_like(one)  # a different, ignored first position
    logits = jnp.concatenate([jnp.concatenate([first, one], axis=1)] * 2, axis=0)
    metric = ProbDiffMetric(year_tokens=year_tokens, start_year=jnp.array([10, 50]))
    np.testing.assert_allclose(metric.per_example(logits), [-0.1, 0.5], atol=1e-5)
    assert float(metric(logits)) == pytest.approx(0.2, abs=1e-5)
    # Perfect: all mass on later years -> -1; all on earlier -> +1.
    perfect = _logits_from_probs(np.eye(102)[2 + 99])[None, None]
    worst = _logits_from_probs(np.eye(102)[2 + 0])[None, None]
    m1 = ProbDiffMetric(year_tokens=year_tokens, start_year=jnp.array([10]))
    assert float(m1(perfect)) == pytest.approx(-1.0, abs=1e-5)
    assert float(m1(worst)) == pytest.approx(1.0, abs=1e-5)


def test_docstring_metric_hand_computed():
    logits = jnp.array(
        [
            [[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 2.5, -1.0, 7.0]],  # correct 1, wrong 0,2,3
            [[0.0, 0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 1.0, 3.0, 9.0]],  # correct 0, wrong 1,2,3
        ]
    )
    metric = DocstringMetric(correct=jnp.array([1, 0]), wrong=jnp.array([[0, 2, 3], [1, 2, 3]]))
    # -(2 - max(1, 2.5, -1)) = 0.5 ;  -(4 - max(0, 1, 3)) = -1. Token 4 is no candidate.
    np.testing.assert_allclose(metric.per_example(logits), [0.5, -1.0], rtol=1e-6)
    assert float(metric(logits)) == pytest.approx(-0.25)


def test_nll_hand_computed():
    probs = [0.5, 0.25, 0.25]
    logits = jnp.broadcast_to(_logits_from_probs(probs), (2, 2, 3))
    metric = NLLMetric(
        targets=jnp.array([[0, 2], [1, 2]]), weights=jnp.array([[1.0, 0.0], [1.0, 1.0]])
    )
    ln2, ln4 = math.log(2), math.log(4)
    np.testing.assert_allclose(metric.per_example(logits), [ln2, ln4], rtol=1e-5)
    # Mean over the three weighted (example, position) pairs, not over examples.
    assert float(metric(logits)) == pytest.approx((ln2 + 2 * ln4) / 3, rel=1e-5)


def test_nll_sign_and_empty_weights():
    confident = _logits_from_probs([0.98, 0.01, 0.01])[None, None]
    unsure = _logits_from_probs([0.2, 0.4, 0.4])[None, None]
    metric = NLLMetric(targets=jnp.array([[0]]), weights=jnp.array([[1.0]]))
    assert float(metric(confident)) < float(metric(unsure))
    empty = NLLMetric(targets=jnp.array([[0]]), weights=jnp.array([[0.0]]))
    assert float(empty(unsure)) == 0.0


METRICS = {  # name: (metric, vocabulary size)
    "logit_diff": (LogitDiffMetric(correct=jnp.array([1, 0]), wrong=jnp.array([2, 4])), 5),
    "docstring": (
        DocstringMetric(correct=jnp.array([1, 0]), wrong=jnp.array([[0, 2], [1, 3]])),
        5,
    ),
    "prob_diff": (
        ProbDiffMetric(year_tokens=jnp.arange(2, 102), start_year=jnp.array([3, 70])),
        102,
    ),
    "nll": (NLLMetric(targets=jnp.array([[0, 1], [2, 0]]), weights=jnp.ones((2, 2))), 5),
}


class TestMetricsJitAndGrad(chex.TestCase):
    """Each metric's value and gradient, jitted and run op by op (chex variants), against the
    op-by-op value and finite differences."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*sorted(METRICS))
    def test_value_and_grad(self, name):
        metric, vocab = METRICS[name]
        logits = jax.random.normal(jax.random.key(0), (2, 2, vocab))
        value, grad = self.variant(jax.value_and_grad(lambda x: metric(x)))(logits)
        np.testing.assert_allclose(value, metric(logits), rtol=1e-5, atol=1e-6)
        assert grad.shape == logits.shape and bool(jnp.isfinite(grad).all())
        # Central differences along one random direction (float64 on the host side).
        direction = np.asarray(jax.random.normal(jax.random.key(1), logits.shape))
        eps = 1e-2
        fd = float(metric(logits + eps * direction)) - float(metric(logits - eps * direction))
        fd /= 2 * eps
        np.testing.assert_allclose(float((grad * direction).sum()), fd, rtol=2e-2, atol=1e-3)
