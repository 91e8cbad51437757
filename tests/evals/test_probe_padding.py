"""Weight-0 padding rows (used so few-shot fits share one compiled shape) change nothing."""
import numpy as np
from sklearn.linear_model import LogisticRegression

from mmfm.evals.linear_probe import fit_logreg, standardize


def test_padded_fit_equals_unpadded_and_sklearn():
  rng = np.random.default_rng(0)
  c, d, n = 4, 6, 20
  y = np.repeat(np.arange(c), n // c)
  x = rng.normal(size=(n, d)) + 1.5 * np.eye(c, d)[y]
  (xs,) = standardize(x)
  l2 = 0.05
  plain = fit_logreg(xs, y, c, l2, tol=1e-7)
  pad = 13
  padded = fit_logreg(np.vstack([xs, rng.normal(size=(pad, d))]), np.r_[y, np.zeros(pad, int)], c,
                      l2, tol=1e-7, weights=np.r_[np.ones(n), np.zeros(pad)])
  np.testing.assert_allclose(np.asarray(padded["w"]), np.asarray(plain["w"]), atol=1e-4)
  # Independent reference: sklearn with C = 1 / (l2 * n) on the unpadded rows.
  ref = LogisticRegression(C=1.0 / (l2 * n), tol=1e-10, max_iter=10_000).fit(xs, y)
  np.testing.assert_allclose(np.asarray(padded["w"]).T, ref.coef_, atol=1e-3)


def test_weights_are_a_weighted_mean():
  """Integer weights equal repeating rows (the weighted-mean CE definition)."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(9, 3)).astype(np.float32)
  y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
  w = np.array([1, 2, 1, 3, 1, 1, 2, 1, 1])
  weighted = fit_logreg(x, y, 3, 0.1, tol=1e-7, weights=w)
  repeated = fit_logreg(np.repeat(x, w, axis=0), np.repeat(y, w), 3, 0.1, tol=1e-7)
  np.testing.assert_allclose(np.asarray(weighted["w"]), np.asarray(repeated["w"]), atol=1e-4)
