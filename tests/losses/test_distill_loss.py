"""The distillation losses (similarity and feature) against float64 numpy formulas (value and
student gradient), and their teacher sides receiving no gradient."""
import jax
import jax.numpy as jnp
import numpy as np

from mmfm.losses.distill import distill_clip_loss, distill_feature_loss

S_SCALE, T_SCALE = 7.0, 20.0


def _unit(rng, shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _pairs(batch=8, d_s=16, d_t=24, seed=0):
    """Student [batch, d_s] and teacher [batch, d_t] embeddings; the teacher's width differs."""
    rng = np.random.default_rng(seed)
    s_img, t_img = _unit(rng, (batch, d_s)), _unit(rng, (batch, d_t))
    s_txt = _unit(rng, (batch, d_s)) + 0.8 * s_img  # correlated pairs: non-uniform distributions
    t_txt = _unit(rng, (batch, d_t)) + 1.5 * t_img
    s_txt /= np.linalg.norm(s_txt, axis=1, keepdims=True)
    t_txt /= np.linalg.norm(t_txt, axis=1, keepdims=True)
    return [a.astype(np.float32) for a in (s_img, s_txt, t_img, t_txt)]


def _np_softmax(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_distill(s_img, s_txt, s_scale, t_img, t_txt, t_scale):
    """(loss, d loss / d s_img) in float64: open_clip's DistillClipLoss written out."""
    s = s_scale * s_img.astype(np.float64) @ s_txt.astype(np.float64).T
    t = t_scale * t_img.astype(np.float64) @ t_txt.astype(np.float64).T
    b = len(s)

    def ce(p_logits, q_logits):
        p = _np_softmax(p_logits)
        log_q = q_logits - q_logits.max(1, keepdims=True)
        log_q = log_q - np.log(np.exp(log_q).sum(1, keepdims=True))
        return -np.mean(np.sum(p * log_q, axis=1))

    loss = 0.5 * (ce(t, s) + ce(t.T, s.T))
    # d/dS of the row term is (softmax(S) - softmax(T)) / b; the column term is its transpose.
    d_s = 0.5 * ((_np_softmax(s) - _np_softmax(t)) / b + ((_np_softmax(s.T) - _np_softmax(t.T)) / b).T)
    return loss, s_scale * d_s @ s_txt.astype(np.float64)


def test_value_and_student_gradient_match_numpy():
    s_img, s_txt, t_img, t_txt = _pairs()
    want, want_grad = np_distill(s_img, s_txt, S_SCALE, t_img, t_txt, T_SCALE)
    got = distill_clip_loss(s_img, s_txt, S_SCALE, t_img, t_txt, T_SCALE)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    grad = jax.grad(distill_clip_loss)(jnp.asarray(s_img), s_txt, S_SCALE, t_img, t_txt, T_SCALE)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-6)


def test_teacher_inputs_get_no_gradient_but_student_does():
    s_img, s_txt, t_img, t_txt = _pairs(seed=1)
    grads = jax.grad(distill_clip_loss, argnums=(0, 1, 2, 3, 4, 5))(
        jnp.asarray(s_img), jnp.asarray(s_txt), jnp.float32(S_SCALE), jnp.asarray(t_img),
        jnp.asarray(t_txt), jnp.float32(T_SCALE))
    for g in grads[3:]:
        assert not np.any(np.asarray(g)), "the teacher side must receive no gradient"
    for g in grads[:3]:
        assert np.any(np.asarray(g) != 0)


def test_student_equal_to_teacher_leaves_only_the_teacher_entropy():
    """Cross-entropy = entropy + KL: a student that matches the teacher is at the minimum."""
    _, _, t_img, t_txt = _pairs(seed=2)
    got = float(distill_clip_loss(t_img, t_txt, T_SCALE, t_img, t_txt, T_SCALE))
    logits = T_SCALE * t_img.astype(np.float64) @ t_txt.astype(np.float64).T
    ent = lambda p: -np.mean(np.sum(p * np.log(p), axis=1))
    want = 0.5 * (ent(_np_softmax(logits)) + ent(_np_softmax(logits.T)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    s_img, s_txt, _, _ = _pairs(d_s=24, seed=3)
    assert float(distill_clip_loss(s_img, s_txt, T_SCALE, t_img, t_txt, T_SCALE)) > got


def np_feature(p_img, p_txt, t_img, t_txt):
    """(loss, d loss / d p_img) in float64: mean over rows of 1 - cos, the two towers averaged."""
    def term(p, t):
        p, t = p.astype(np.float64), t.astype(np.float64)
        pn, tn = np.linalg.norm(p, axis=1, keepdims=True), np.linalg.norm(t, axis=1, keepdims=True)
        cos = np.sum(p * t, axis=1, keepdims=True) / (pn * tn)
        # d cos / d p = t / (|p| |t|) - cos p / |p|^2
        return np.mean(1 - cos), -(t / (pn * tn) - cos * p / pn ** 2) / len(p)

    (a, grad), (b, _) = term(p_img, t_img), term(p_txt, t_txt)
    return 0.5 * (a + b), 0.5 * grad


def test_feature_loss_value_and_gradient_match_numpy():
    """Projected student embeddings (any norm) against the teacher's unit embeddings."""
    rng = np.random.default_rng(4)
    p_img, p_txt = (rng.normal(size=(8, 24)).astype(np.float32) * 3 for _ in range(2))
    _, _, t_img, t_txt = _pairs(seed=4)
    p_txt += 2 * t_txt  # some rows near the teacher's: cosines spread over (-1, 1)
    want, want_grad = np_feature(p_img, p_txt, t_img, t_txt)
    got = distill_feature_loss(p_img, p_txt, t_img, t_txt)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    grad = jax.grad(distill_feature_loss)(jnp.asarray(p_img), p_txt, t_img, t_txt)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-7)
    # Scale-free in the student (only directions count), 0 at the teacher, 2 opposite it.
    np.testing.assert_allclose(float(distill_feature_loss(5 * p_img, p_txt, t_img, t_txt)), want,
                               rtol=1e-5)
    assert abs(float(distill_feature_loss(t_img, 0.5 * t_txt, t_img, t_txt))) < 1e-6
    np.testing.assert_allclose(float(distill_feature_loss(-t_img, -t_txt, t_img, t_txt)), 2.0,
                               rtol=1e-6)


def test_feature_loss_sends_no_gradient_to_the_teacher():
    rng = np.random.default_rng(5)
    p_img, p_txt = (jnp.asarray(rng.normal(size=(8, 24)), jnp.float32) for _ in range(2))
    _, _, t_img, t_txt = _pairs(seed=5)
    grads = jax.grad(distill_feature_loss, argnums=(0, 1, 2, 3))(
        p_img, p_txt, jnp.asarray(t_img), jnp.asarray(t_txt))
    assert all(np.any(np.asarray(g) != 0) for g in grads[:2])
    assert not any(np.any(np.asarray(g)) for g in grads[2:])
