"""Mean per-class recall and per-group accuracy against scikit-learn and plain numpy loops."""
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from mmfm.evals.group_metrics import group_accuracy, mean_per_class_recall, topk_correct


@pytest.mark.parametrize("seed", range(5))
def test_mean_per_class_recall_is_sklearn_balanced_accuracy(seed):
    rng = np.random.default_rng(seed)
    # Unbalanced classes (some rare), predictions right about half the time.
    labels = rng.choice(7, size=300, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.04, 0.01])
    pred = np.where(rng.random(300) < 0.5, labels, rng.integers(0, 7, 300))
    ours = mean_per_class_recall(pred, labels)
    assert ours == pytest.approx(balanced_accuracy_score(labels, pred), abs=1e-12)
    # Unbalanced data: plain accuracy is a different number.
    assert ours != pytest.approx(np.mean(pred == labels), abs=1e-3)


def test_mean_per_class_recall_ignores_classes_absent_from_labels():
    labels = np.array([0, 0, 2, 2])
    pred = np.array([0, 1, 2, 1])  # class 1 is predicted but never a label
    assert mean_per_class_recall(pred, labels) == pytest.approx(0.5)
    assert mean_per_class_recall(pred, labels, num_classes=3) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        mean_per_class_recall(pred[:3], labels)


def test_topk_correct_matches_a_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 9))
    labels = rng.integers(0, 9, 50)
    for k in (1, 3, 9):
        loop = [labels[i] in np.argsort(-logits[i])[:k] for i in range(50)]
        np.testing.assert_array_equal(topk_correct(logits, labels, k), loop)


def test_group_accuracy_against_numpy_and_min_count():
    rng = np.random.default_rng(1)
    groups = rng.choice(["red", "blue", "green", "white"], size=400, p=[0.4, 0.3, 0.29, 0.01])
    rate = {"red": 0.9, "blue": 0.6, "green": 0.75, "white": 0.0}
    correct = rng.random(400) < np.vectorize(rate.get)(groups)
    g = group_accuracy(correct, groups, min_count=10)
    for name in ("red", "blue", "green"):
        assert g["groups"][name]["accuracy"] == pytest.approx(np.mean(correct[groups == name]))
        assert g["groups"][name]["count"] == int(np.sum(groups == name))
    ranked = {n: np.mean(correct[groups == n]) for n in ("red", "blue", "green")}
    # "white" has 4 examples: listed, but too few to be the worst group.
    assert g["groups"]["white"]["count"] < 10
    assert g["worst_group"] == min(ranked, key=ranked.get) == "blue"
    assert g["worst"] == pytest.approx(min(ranked.values()))
    assert g["spread"] == pytest.approx(max(ranked.values()) - min(ranked.values()))
    assert g["mean"] == pytest.approx(np.mean(correct))
    # With every group counted, the empty-handed small group is the worst.
    assert group_accuracy(correct, groups)["worst_group"] == "white"


def test_group_accuracy_names_ids():
    g = group_accuracy(np.array([1, 0, 1, 1], bool), np.array([0, 0, 1, 1]), {0: "low", 1: "high"})
    assert g["groups"] == {"low": {"accuracy": 0.5, "count": 2},
                           "high": {"accuracy": 1.0, "count": 2}}
    assert g["worst_group"] == "low"
