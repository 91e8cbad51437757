"""The distillation loss against a float64 numpy formula (value and student gradient), and its
teacher side receiving no gradient."""
import jax
import jax.numpy as jnp
import numpy as np

from mmfm.losses.distill import distill_clip_loss

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
