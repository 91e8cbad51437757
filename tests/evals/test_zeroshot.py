"""Zero-shot: prompt-ensembled class embeddings and top-k accuracy against numpy references."""
import zlib

import numpy as np
import pytest

from mmfm.evals import class_embeddings, zeroshot_accuracy, zeroshot_logits, zeroshot_predict

DIM = 6


def fake_text_vector(s):
  """Deterministic, deliberately UNnormalised embedding of a string (norms vary 1-10x)."""
  rng = np.random.default_rng(zlib.crc32(s.encode()))
  return rng.normal(size=DIM) * rng.uniform(1, 10)


class FakeEncoder:
  def __init__(self, normalise):
    self.normalise, self.calls = normalise, []

  def __call__(self, texts):
    self.calls.append(list(texts))
    e = np.stack([fake_text_vector(t) for t in texts]).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True) if self.normalise else e


CLASSES = ["cat", "dog", "red circle", "tree"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", lambda c: f"itap of the {c}"]


def expected_class_embeddings():
  out = []
  for c in CLASSES:
    texts = [t(c) if callable(t) else t.format(c) for t in TEMPLATES]
    e = np.stack([fake_text_vector(s) for s in texts])
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    m = e.mean(axis=0)
    out.append(m / np.linalg.norm(m))
  return np.stack(out)


@pytest.mark.parametrize("normalise", [True, False])
@pytest.mark.parametrize("batch_size", [256, 5, 1])
def test_class_embedding_is_normalised_mean_of_normalised(normalise, batch_size):
  enc = FakeEncoder(normalise)
  got = np.asarray(class_embeddings(enc, CLASSES, TEMPLATES, batch_size=batch_size))
  assert got.shape == (len(CLASSES), DIM)
  np.testing.assert_allclose(got, expected_class_embeddings(), atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
  # Every string encoded exactly once, in class-major order, in chunks of batch_size.
  flat = [s for call in enc.calls for s in call]
  assert flat[:3] == ["a photo of a cat.", "a drawing of a cat.", "itap of the cat"]
  assert len(flat) == len(CLASSES) * len(TEMPLATES)
  assert max(len(call) for call in enc.calls) <= batch_size


def test_unnormalised_mean_would_differ():
  # Shows the per-template normalisation matters (so the test above can fail).
  means = []
  for c in CLASSES:
    e = np.stack([fake_text_vector(t(c) if callable(t) else t.format(c)) for t in TEMPLATES])
    means.append(e.mean(0) / np.linalg.norm(e.mean(0)))
  assert np.abs(np.stack(means) - expected_class_embeddings()).max() > 1e-2


def test_encoder_shape_is_checked():
  with pytest.raises(ValueError, match=r"\[n, D\]"):
    class_embeddings(lambda texts: np.zeros((1, DIM)), CLASSES, TEMPLATES)


def make_problem(seed, n=200, c=10, d=16):
  rng = np.random.default_rng(seed)
  class_emb = rng.normal(size=(c, d)).astype(np.float32)
  labels = rng.integers(0, c, n)
  image_emb = (class_emb[labels] + 2.0 * rng.normal(size=(n, d))).astype(np.float32)
  return image_emb, class_emb, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_accuracy_matches_numpy_argmax(seed):
  image_emb, class_emb, labels = make_problem(seed)
  scores = image_emb.astype(np.float64) @ class_emb.T.astype(np.float64)
  top1 = np.mean(np.argmax(scores, axis=1) == labels)
  ranked = np.argsort(-scores, axis=1)
  top5 = np.mean([labels[i] in ranked[i, :5] for i in range(len(labels))])
  for block_size in (None, 16, 4096):
    got = zeroshot_accuracy(image_emb, class_emb, labels, topk=(1, 5), block_size=block_size)
    assert got == {"top1": pytest.approx(top1, abs=1e-12), "top5": pytest.approx(top5, abs=1e-12)}
  assert 0.1 < top1 < top5 < 1.0  # non-trivial problem
  np.testing.assert_array_equal(np.asarray(zeroshot_predict(image_emb, class_emb)),
                                np.argmax(scores, axis=1))
  np.testing.assert_allclose(np.asarray(zeroshot_logits(image_emb, class_emb, scale=100.0)),
                             100.0 * scores, rtol=1e-5, atol=1e-3)


def test_topk_larger_than_num_classes_is_clipped():
  image_emb, class_emb, labels = make_problem(2, c=3)
  got = zeroshot_accuracy(image_emb, class_emb, labels, topk=(1, 3, 5))
  assert set(got) == {"top1", "top3", "top5"}
  assert got["top3"] == got["top5"] == 1.0 and got["top1"] < 1.0


def test_ties_count_against_the_image():
  class_emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)  # classes 0 and 1 equal
  image_emb = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
  got = zeroshot_accuracy(image_emb, class_emb, np.array([0, 1]), topk=(1, 2))
  assert got == {"top1": 0.0, "top2": 1.0}


@pytest.mark.parametrize("labels", [np.array([0, 3]), np.array([-1, 0]), np.array([0.0, 1.0])])
def test_bad_labels_raise(labels):
  with pytest.raises(ValueError, match="labels"):
    zeroshot_accuracy(np.eye(2, 4), np.eye(3, 4), labels)
