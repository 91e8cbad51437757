"""Linear probes: same optimum as scikit-learn's LogisticRegression; few-shot sampling and stats."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mmfm.evals import (few_shot_probe, fit_logreg, linear_probe, predict_logreg, sample_few_shot,
                        standardize)

NUM_CLASSES, DIM = 5, 20


def blobs(separation, seed=0, n=500):
  """Gaussian blobs with per-feature scales and offsets (so standardisation matters)."""
  rng = np.random.default_rng(seed)
  centers = separation * rng.normal(size=(NUM_CLASSES, DIM))
  scale, offset = rng.uniform(0.5, 3.0, DIM), rng.uniform(-5, 5, DIM)

  def draw():
    y = rng.integers(0, NUM_CLASSES, n)
    x = (centers[y] + rng.normal(size=(n, DIM))) * scale + offset
    return x.astype(np.float32), y

  return draw(), draw()


PROBLEMS = {"separable": 1.0, "overlapping": 0.3}


def softmax(z):
  z = z - z.max(axis=1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("c", [1.0, 0.05])
def test_same_optimum_as_sklearn(problem, c):
  (train_x, train_y), (test_x, test_y) = blobs(PROBLEMS[problem])
  scaler = StandardScaler().fit(train_x)  # same standardisation for both
  xs, test_xs = scaler.transform(train_x), scaler.transform(test_x)
  np.testing.assert_allclose(standardize(train_x, test_x)[1], test_xs, atol=1e-4)

  sk = LogisticRegression(C=c, max_iter=10_000, tol=1e-8).fit(xs, train_y)
  params = fit_logreg(xs, train_y, NUM_CLASSES, l2=1.0 / (c * len(train_y)))
  assert params["grad_norm"] < 1e-4

  acc = np.mean(np.argmax(np.asarray(predict_logreg(params, test_xs)), 1) == test_y)
  sk_acc = np.mean(sk.predict(test_xs) == test_y)
  assert abs(acc - sk_acc) <= 0.01, (acc, sk_acc)
  # Same optimum, not just similar accuracy.
  w = np.asarray(params["w"]).T  # [C, D], sklearn's layout
  assert np.abs(w - sk.coef_).max() <= 5e-3 * np.abs(sk.coef_).max()
  b = np.asarray(params["b"])  # the bias is defined up to a shared constant
  np.testing.assert_allclose(b - b.mean(), sk.intercept_ - sk.intercept_.mean(), atol=5e-3)
  probs = softmax(np.asarray(predict_logreg(params, test_xs), np.float64))
  np.testing.assert_allclose(probs, sk.predict_proba(test_xs), atol=5e-3)


def test_l2_convention_is_not_vacuous():
  # A 10x different penalty gives measurably different coefficients, so the test above can fail.
  (train_x, train_y), _ = blobs(PROBLEMS["overlapping"])
  xs, = standardize(train_x)
  sk = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-8).fit(xs, train_y)
  params = fit_logreg(xs, train_y, NUM_CLASSES, l2=10.0 / len(train_y))
  assert np.abs(np.asarray(params["w"]).T - sk.coef_).max() > 0.05 * np.abs(sk.coef_).max()


@pytest.mark.parametrize("problem", PROBLEMS)
def test_linear_probe_selects_on_validation_and_matches_sklearn(problem):
  (train_x, train_y), (test_x, test_y) = blobs(PROBLEMS[problem], seed=1)
  grid = (1e-4, 1e-2, 10.0)
  out = linear_probe(train_x, train_y, test_x, test_y, l2_grid=grid, seed=0)
  assert set(out["val_accuracies"]) == set(grid)
  assert out["val_accuracy"] == max(out["val_accuracies"].values())
  assert out["val_accuracies"][out["best_l2"]] == out["val_accuracy"]
  assert out["val_accuracies"][10.0] < out["val_accuracy"]  # a heavy penalty hurts: grid matters
  # The final model is refit on ALL of train: compare with sklearn refit with the same penalty.
  scaler = StandardScaler().fit(train_x)
  sk = LogisticRegression(C=1.0 / (out["best_l2"] * len(train_y)), max_iter=10_000, tol=1e-8)
  sk.fit(scaler.transform(train_x), train_y)
  sk_acc = np.mean(sk.predict(scaler.transform(test_x)) == test_y)
  assert abs(out["accuracy"] - sk_acc) <= 0.01, (out["accuracy"], sk_acc)


def test_explicit_validation_split_and_tie_break():
  (train_x, train_y), (test_x, test_y) = blobs(PROBLEMS["separable"], n=100)
  (val_x, val_y), _ = blobs(PROBLEMS["separable"], seed=0, n=100)
  out = linear_probe(train_x, train_y, test_x, test_y, val_data=(val_x, val_y),
                     l2_grid=(1e-6, 1e-5))
  # Nearly identical penalties give the same validation accuracy; the tie goes to the larger.
  assert out["val_accuracies"][1e-6] == out["val_accuracies"][1e-5]
  assert out["best_l2"] == 1e-5


def test_stratified_validation_split():
  from mmfm.evals.linear_probe import _stratified_split
  y = np.repeat(np.arange(4), [10, 20, 5, 1])
  fit, val = _stratified_split(y, 0.2, seed=3)
  assert sorted(np.concatenate([fit, val]).tolist()) == list(range(len(y)))
  assert np.bincount(y[val], minlength=4).tolist() == [2, 4, 1, 0]  # 1-example class stays in fit
  assert not np.array_equal(val, _stratified_split(y, 0.2, seed=4)[1])


def test_sample_few_shot_exactly_k_per_class():
  y = np.repeat(np.arange(4), [10, 7, 3, 12])
  for k in (1, 5):
    idx, short = sample_few_shot(y, k, seed=0)
    assert len(np.unique(idx)) == len(idx)  # without replacement
    assert np.bincount(y[idx], minlength=4).tolist() == [k, k, min(k, 3), k]
    assert short == ((2,) if k == 5 else ())
  # Different seeds pick different examples; the same seed is reproducible; 1-shot is in 5-shot.
  assert not np.array_equal(sample_few_shot(y, 5, 0)[0], sample_few_shot(y, 5, 1)[0])
  np.testing.assert_array_equal(sample_few_shot(y, 5, 2)[0], sample_few_shot(y, 5, 2)[0])
  assert set(sample_few_shot(y, 1, 2)[0]) <= set(sample_few_shot(y, 5, 2)[0])


def test_few_shot_probe_statistics():
  (train_x, train_y), (test_x, test_y) = blobs(PROBLEMS["overlapping"], seed=2, n=200)
  train_x, train_y = train_x[train_y != 4], train_y[train_y != 4]  # class 4 has no train examples
  with pytest.warns(UserWarning) as record:
    out = few_shot_probe(train_x, train_y, test_x, test_y, shots=(2, 8), seeds=(0, 1, 2), l2=0.1,
                         num_classes=NUM_CLASSES)
  assert ["fewer than 2 " in str(w.message) for w in record] == [True, False]
  assert set(out) == {2, 8}
  for k, r in out.items():
    accs = np.array(r["per_seed"])
    assert len(accs) == 3 and len(set(accs.tolist())) > 1  # seeds give different samples
    assert r["mean"] == pytest.approx(accs.mean()) and r["std"] == pytest.approx(accs.std())
    assert r["std"] > 0 and r["short_classes"] == (4,)
  assert out[8]["mean"] > out[2]["mean"]
  # Per-seed accuracy is reproducible from the documented recipe.
  idx, _ = sample_few_shot(train_y, 8, seed=1, num_classes=NUM_CLASSES)
  xs, test_xs = standardize(train_x[idx], test_x)
  params = fit_logreg(xs, train_y[idx], NUM_CLASSES, 0.1)
  acc = np.mean(np.argmax(np.asarray(predict_logreg(params, test_xs)), 1) == test_y)
  assert acc == pytest.approx(out[8]["per_seed"][1])
