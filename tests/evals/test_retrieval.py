"""Retrieval recall@K against a plain sort-based numpy reference, across blocks and meshes."""
import jax
import numpy as np
import pytest

from mmfm.evals import retrieval_metrics, retrieval_ranks

KS = (1, 2, 5, 10)


def reference_recall(query, gallery, is_pos, ks):
  """Brute force: order the gallery by score, worst-case ties (negatives before positives).

  Independent of the library's counting formula: it sorts, then finds the first positive.
  """
  query, gallery = np.asarray(query, np.float64), np.asarray(gallery, np.float64)
  first_pos = []
  for q in range(len(query)):
    scores = [float(np.dot(query[q], gallery[g])) for g in range(len(gallery))]
    order = sorted(range(len(gallery)), key=lambda g: (-scores[g], bool(is_pos[q][g])))
    positions = [i for i, g in enumerate(order) if is_pos[q][g]]
    first_pos.append(positions[0] if positions else len(gallery))
  first_pos = np.array(first_pos)
  return {k: float(np.mean(first_pos < k)) for k in ks}


def reference_metrics(image_emb, text_emb, text_to_image, ks=KS):
  ni, nt = len(image_emb), len(text_emb)
  i2t_pos = [[text_to_image[t] == i for t in range(nt)] for i in range(ni)]
  t2i_pos = [[text_to_image[t] == i for i in range(ni)] for t in range(nt)]
  i2t = reference_recall(image_emb, text_emb, i2t_pos, ks)
  t2i = reference_recall(text_emb, image_emb, t2i_pos, ks)
  return {**{f"i2t/R@{k}": v for k, v in i2t.items()}, **{f"t2i/R@{k}": v for k, v in t2i.items()}}


def make_case(seed, num_images, dim=8, noise=1.0, integer=False):
  """Each image gets 1-5 captions (shuffled order); captions are noisy copies of their image."""
  rng = np.random.default_rng(seed)
  text_to_image = np.repeat(np.arange(num_images), rng.integers(1, 6, num_images))
  text_to_image = rng.permutation(text_to_image)
  if integer:  # small integers: every dot product is exact, and ties are everywhere
    image_emb = rng.integers(-1, 2, (num_images, dim)).astype(np.float32)
    text_emb = image_emb[text_to_image] + rng.integers(-1, 2, (len(text_to_image), dim))
    return image_emb, text_emb.astype(np.float32), text_to_image
  image_emb = rng.normal(size=(num_images, dim)).astype(np.float32)
  text_emb = image_emb[text_to_image] + noise * rng.normal(size=(len(text_to_image), dim))
  return image_emb, text_emb.astype(np.float32), text_to_image


def mesh_of(shape, names):
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


CASES = [(0, 1, False), (1, 7, False), (2, 23, False), (3, 5, True), (4, 19, True)]


@pytest.mark.parametrize("seed,num_images,integer", CASES)
def test_matches_reference_for_all_blocks_and_meshes(seed, num_images, integer):
  image_emb, text_emb, t2i = make_case(seed, num_images, integer=integer)
  expected = reference_metrics(image_emb, text_emb, t2i)
  assert set(expected) == {f"{d}/R@{k}" for d in ("i2t", "t2i") for k in KS}
  results = {
      "one block": retrieval_metrics(image_emb, text_emb, t2i, KS),
      "blocks of 7": retrieval_metrics(image_emb, text_emb, t2i, KS, block_size=7),
      "blocks of 1": retrieval_metrics(image_emb, text_emb, t2i, KS, block_size=1),
      "8 devices": retrieval_metrics(image_emb, text_emb, t2i, KS, mesh=mesh_of((8,), ("data",))),
      "2x4 mesh, blocks of 3": retrieval_metrics(
          image_emb, text_emb, t2i, KS, block_size=3, mesh=mesh_of((2, 4), ("data", "fsdp"))),
      "jax inputs": retrieval_metrics(jax.numpy.asarray(image_emb), jax.numpy.asarray(text_emb),
                                      jax.numpy.asarray(t2i), KS, block_size=4),
  }
  for name, got in results.items():
    assert got == expected, name  # exact: ranks are integers


def test_integer_case_has_ties_and_nontrivial_recall():
  # Guards the tie test above against being vacuous.
  image_emb, text_emb, t2i = make_case(4, 19, integer=True)
  scores = text_emb @ image_emb.T
  assert any(len(np.unique(row)) < len(row) for row in scores)
  got = retrieval_metrics(image_emb, text_emb, t2i, KS)
  assert 0 < got["t2i/R@1"] < got["t2i/R@10"] <= 1
  assert 0 < got["i2t/R@1"] < 1


def test_any_caption_counts_for_image_queries():
  # Image 0's captions: caption 0 is the best text for it, caption 1 the worst.
  image_emb = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  text_emb = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], np.float32)
  t2i = np.array([0, 0, 1])
  got = retrieval_metrics(image_emb, text_emb, t2i, (1, 2))
  assert got["i2t/R@1"] == 1.0  # both images find one of their captions first
  # Caption 1 ([-1, 0]) scores -1 with image 0 and 0 with image 1: image 1 wins, a miss at R@1.
  assert got["t2i/R@1"] == pytest.approx(2 / 3)
  assert got["t2i/R@2"] == 1.0


def test_ties_count_against_the_query():
  # A collapsed model must not look perfect.
  n = 6
  image_emb = np.ones((n, 4), np.float32)
  text_emb = np.ones((2 * n, 4), np.float32)
  t2i = np.repeat(np.arange(n), 2)
  got = retrieval_metrics(image_emb, text_emb, t2i, (1, n - 1, n, 2 * n - 2, 2 * n - 1))
  assert got["t2i/R@1"] == 0.0 and got[f"t2i/R@{n - 1}"] == 0.0 and got[f"t2i/R@{n}"] == 1.0
  # Image queries: 2n - 2 other-image captions tie with each positive.
  assert got[f"i2t/R@{2 * n - 2}"] == 0.0 and got[f"i2t/R@{2 * n - 1}"] == 1.0


def test_nan_scores_are_misses():
  image_emb, text_emb, t2i = make_case(5, 6)
  text_emb[0] = np.nan
  ranks = retrieval_ranks(text_emb, image_emb, t2i, np.arange(6))
  assert int(ranks[0]) == 5  # every other image counts as beating it
  assert np.all(np.asarray(ranks[1:]) < 6)


def test_rank_of_query_without_positive_is_gallery_size():
  ranks = retrieval_ranks(np.eye(3), np.eye(4, 3), np.array([0, -1, 7]), np.arange(4))
  np.testing.assert_array_equal(np.asarray(ranks), [0, 4, 4])


def test_memory_is_blocked():
  # The largest intermediate in the compiled computation is block x gallery, not queries x
  # gallery: compile the public retrieval_ranks itself and read its HLO and temp memory.
  import functools
  q, g = np.zeros((64, 4), np.float32), np.zeros((50, 4), np.float32)
  args = (q, g, np.zeros(64, np.int32), np.zeros(50, np.int32))

  def compiled(block):
    return jax.jit(functools.partial(retrieval_ranks, block_size=block)).lower(*args).compile()

  blocked, whole = compiled(8), compiled(64)
  assert "f32[8,50]" in blocked.as_text() and "f32[64,50]" not in blocked.as_text()
  assert "f32[64,50]" in whole.as_text()  # the check above can fail
  mem = [c.memory_analysis().temp_size_in_bytes for c in (blocked, whole)]
  assert mem[0] < 64 * 50 * 4 <= mem[1], mem  # scores of all 64 queries never exist at once


@pytest.mark.parametrize("t2i,match", [
    (np.array([0, 1, 1]), "no caption"),      # image 2 has no caption
    (np.array([0, 1, 3]), r"\[0, 3\)"),       # out of range
    (np.array([0.0, 1.0, 2.0]), "int"),
])
def test_bad_mapping_raises(t2i, match):
  with pytest.raises(ValueError, match=match):
    retrieval_metrics(np.eye(3), np.eye(3), t2i)


def test_bad_ks_raise():
  with pytest.raises(ValueError, match="ks"):
    retrieval_metrics(np.eye(3), np.eye(3), np.arange(3), ks=(0, 1))
