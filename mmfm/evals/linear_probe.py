"""Linear probes on frozen features: multinomial logistic regression fitted in JAX.

**Objective** (`fit_logreg`), for features `x [n, D]`, labels `y [n]`, weights `W [D, C]` and
bias `b [C]`:

    mean_i CE(softmax(x_i W + b), y_i) + (l2 / 2) * ||W||_F^2        (bias not penalised)

minimised by full-batch L-BFGS (optax.lbfgs, zoom line search) in float32.

**Relation to scikit-learn.** `LogisticRegression(C=c)` (lbfgs, multinomial, L2) minimises
`c * sum_i CE_i + ||W||^2 / 2`, which has the same minimiser as `mean CE + ||W||^2 / (2 c n)`.
So `l2 = 1 / (c * n)` and `c = 1 / (l2 * n)`, where n is the number of training examples. Both
parameterise all C classes (the penalty fixes W; the unpenalised bias is defined up to a shared
constant, so compare biases after centering).

**Standardisation.** `linear_probe` and `few_shot_probe` standardise features with the mean and
population std (ddof=0) of the examples the probe is fitted on (a zero std is replaced by 1), and
apply the same transform to validation/test features. `fit_logreg` itself fits what it is given.
"""
from __future__ import annotations

import functools
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["fit_logreg", "predict_logreg", "standardize", "linear_probe", "few_shot_probe",
           "sample_few_shot"]

DEFAULT_L2_GRID = tuple(10.0 ** e for e in range(-6, 2))  # 1e-6, 1e-5, ..., 1e1


def standardize(train_x, *others):
  """Standardise with train statistics: `[n, D]` arrays -> float32 arrays (train first)."""
  train_x = np.asarray(train_x, np.float64)
  mean, std = train_x.mean(axis=0), train_x.std(axis=0)
  std = np.where(std > 0, std, 1.0)  # constant features: leave at 0 rather than divide by 0
  return tuple(((np.asarray(x, np.float64) - mean) / std).astype(np.float32)
               for x in (train_x, *others))


def _objective(params, x_nd, y_n, w_n, l2):
  logits = x_nd @ params["w"] + params["b"]
  ce_n = -jnp.take_along_axis(jax.nn.log_softmax(logits), y_n[:, None], axis=1)[:, 0]
  # Weighted mean: weight-0 rows (padding, see few_shot_probe) contribute nothing.
  ce = jnp.sum(w_n * ce_n) / jnp.sum(w_n)
  return ce + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _lbfgs(params, x_nd, y_n, w_n, l2, tol, *, max_iter):
  """L-BFGS until `||grad||_2 < tol` or `max_iter` steps. Returns (params, steps, grad norm)."""
  fun = functools.partial(_objective, x_nd=x_nd, y_n=y_n, w_n=w_n, l2=l2)
  opt = optax.lbfgs()
  # Reuses the value/grad the line search already computed at the accepted point.
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(params, updates), state

  def keep_going(carry):
    _, state = carry
    count = optax.tree.get(state, "count")
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
    return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

  params, state = jax.lax.while_loop(keep_going, step, (params, opt.init(params)))
  grad_norm = optax.tree.norm(jax.grad(fun)(params))
  return params, optax.tree.get(state, "count"), grad_norm


def fit_logreg(x, y, num_classes: int, l2: float, *, max_iter: int = 1000, tol: float = 1e-5,
               init: dict | None = None, weights=None) -> dict:
  """Fits multinomial logistic regression (objective in the module docstring).

  Args:
    x: `[n, D]` features (standardise them first; see `standardize`).
    y: `[n]` int labels in `[0, num_classes)`.
    num_classes: C.
    l2: penalty strength (`l2 = 1 / (C_sklearn * n)`).
    max_iter: L-BFGS iteration cap.
    tol: stop when the L2 norm of the gradient is below this.
    init: optional warm start `{"w", "b"}`.
    weights: optional `[n]` example weights (default 1); the mean CE becomes
      `sum_i w_i CE_i / sum_i w_i`. Weight-0 rows pad inputs to a shape that is already compiled.

  Returns:
    `{"w": [D, C], "b": [C], "steps": int, "grad_norm": float}` (w, b as jax float32 arrays).
  """
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.int32)
  if init is None:
    init = {"w": jnp.zeros((x.shape[1], num_classes), jnp.float32),
            "b": jnp.zeros((num_classes,), jnp.float32)}
  init = {"w": jnp.asarray(init["w"], jnp.float32), "b": jnp.asarray(init["b"], jnp.float32)}
  w = jnp.ones(x.shape[0], jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  params, steps, grad_norm = _lbfgs(init, x, y, w, jnp.float32(l2), jnp.float32(tol),
                                    max_iter=max_iter)
  return {**params, "steps": int(steps), "grad_norm": float(grad_norm)}


def predict_logreg(params: dict, x) -> jax.Array:
  """Logits `[n, C]` for features `[n, D]` (standardised like the training features)."""
  return jnp.asarray(x, jnp.float32) @ params["w"] + params["b"]


def _accuracy(params: dict, x, y) -> float:
  return float(np.mean(np.asarray(jnp.argmax(predict_logreg(params, x), -1)) == np.asarray(y)))


def _stratified_split(y: np.ndarray, val_fraction: float, seed: int):
  """Per class, `round(val_fraction * n_c)` random examples to validation; >= 1 stays in train."""
  rng = np.random.default_rng(seed)
  val = []
  for c in np.unique(y):
    idx = rng.permutation(np.flatnonzero(y == c))
    val.append(idx[:min(round(val_fraction * idx.size), idx.size - 1)])
  val = np.sort(np.concatenate(val))
  return np.setdiff1d(np.arange(y.size), val), val


def linear_probe(train_x, train_y, test_x, test_y, *, num_classes: int | None = None,
                 val_fraction: float = 0.2, val_data: tuple | None = None,
                 l2_grid: Sequence[float] = DEFAULT_L2_GRID, seed: int = 0,
                 max_iter: int = 1000) -> dict:
  """Linear probe with the L2 strength chosen on a validation split, then refit on all train.

  Args:
    train_x, train_y: `[n, D]` features and `[n]` int labels.
    test_x, test_y: `[m, D]`, `[m]`.
    num_classes: C; default `max(label) + 1` over train and test.
    val_fraction: fraction of each train class held out (stratified, seeded by `seed`) to pick l2;
      ignored when `val_data=(val_x, val_y)` is given, in which case the final fit uses train only.
    l2_grid: candidate l2 values. The best validation accuracy wins; ties go to the larger l2.
    seed: seeds the validation split.
    max_iter: L-BFGS iteration cap per fit.

  Returns:
    `{"accuracy": test accuracy, "best_l2": float, "val_accuracy": at best_l2,
      "val_accuracies": {l2: accuracy}, "predictions": int [m] test predictions}`.
  """
  train_x, train_y = np.asarray(train_x), np.asarray(train_y)
  test_x, test_y = np.asarray(test_x), np.asarray(test_y)
  if num_classes is None:
    num_classes = int(max(train_y.max(), test_y.max())) + 1
  if val_data is None:
    fit_idx, val_idx = _stratified_split(train_y, val_fraction, seed)
    fit_x, fit_y = train_x[fit_idx], train_y[fit_idx]
    val_x, val_y = train_x[val_idx], train_y[val_idx]
  else:
    fit_x, fit_y = train_x, train_y
    val_x, val_y = np.asarray(val_data[0]), np.asarray(val_data[1])
  if val_y.size == 0:
    raise ValueError("empty validation split: raise val_fraction or pass val_data")

  fit_xs, val_xs = standardize(fit_x, val_x)
  val_acc, init = {}, None
  # Strongest penalty first, each fit warm-started from the previous (smooth path, fewer steps).
  for l2 in sorted(l2_grid, reverse=True):
    params = fit_logreg(fit_xs, fit_y, num_classes, l2, max_iter=max_iter, init=init)
    init = params
    val_acc[float(l2)] = _accuracy(params, val_xs, val_y)
  best_l2 = max(val_acc, key=lambda l2: (val_acc[l2], l2))

  # Refit on all of train (fresh statistics) with the chosen penalty.
  train_xs, test_xs = standardize(train_x, test_x)
  params = fit_logreg(train_xs, train_y, num_classes, best_l2, max_iter=max_iter)
  pred = np.asarray(jnp.argmax(predict_logreg(params, test_xs), -1))
  return {"accuracy": float(np.mean(pred == test_y)), "best_l2": best_l2,
          "val_accuracy": val_acc[best_l2], "val_accuracies": val_acc, "predictions": pred}


def sample_few_shot(labels, shots: int, seed: int, num_classes: int | None = None):
  """Indices of `shots` examples per class, drawn without replacement.

  One random permutation per class per seed, of which the first `shots` are taken, so for a fixed
  seed the 1-shot set is inside the 5-shot set. A class with fewer than `shots` examples
  contributes all of them.

  Returns:
    (indices: sorted int64 `[<= shots * C]`, short: tuple of classes with fewer than `shots`).
  """
  labels = np.asarray(labels)
  num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
  rng = np.random.default_rng(seed)
  picked, short = [], []
  for c in range(num_classes):
    idx = rng.permutation(np.flatnonzero(labels == c))
    if idx.size < shots:
      short.append(c)
    picked.append(idx[:shots])
  return np.sort(np.concatenate(picked)), tuple(short)


def few_shot_probe(train_x, train_y, test_x, test_y, *, shots: Sequence[int] = (1, 5, 10, 25),
                   seeds: Sequence[int] = (0, 1, 2), l2: float = 1e-2,
                   num_classes: int | None = None, max_iter: int = 1000) -> dict:
  """Few-shot linear probes: for each shot count and seed, fit on a per-class sample and test.

  No validation split is possible at 1 shot, so l2 is fixed (same convention as `fit_logreg`;
  features standardised on the sampled examples).

  Returns:
    `{shots: {"mean": float, "std": float (population, ddof=0, over seeds),
              "per_seed": tuple of accuracies, "short_classes": classes with fewer than `shots`
              train examples (all of theirs were used)}}`. A warning is also raised for those.
  """
  train_x, train_y = np.asarray(train_x), np.asarray(train_y)
  test_x, test_y = np.asarray(test_x), np.asarray(test_y)
  if num_classes is None:
    num_classes = int(max(train_y.max(), test_y.max())) + 1
  out = {}
  # Every fit is padded to the largest sample with weight-0 rows: one compile for all shots/seeds.
  rows = max(int(np.minimum(np.bincount(train_y, minlength=num_classes), k).sum()) for k in shots)
  for k in shots:
    accs, short = [], ()
    for seed in seeds:
      idx, short = sample_few_shot(train_y, k, seed, num_classes)
      xs, test_xs = standardize(train_x[idx], test_x)
      pad = rows - len(idx)
      params = fit_logreg(np.pad(xs, ((0, pad), (0, 0))), np.pad(train_y[idx], (0, pad)),
                          num_classes, l2, max_iter=max_iter,
                          weights=np.r_[np.ones(len(idx)), np.zeros(pad)])
      accs.append(_accuracy(params, test_xs, test_y))
    if short:
      warnings.warn(f"{k}-shot: classes {list(short)} have fewer than {k} train examples; "
                    "all of theirs were used", stacklevel=2)
    out[k] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "per_seed": tuple(accs),
              "short_classes": short}
  return out
