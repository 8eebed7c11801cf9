import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from torchbayesian import bnn

SETTINGS = settings(max_examples=40, deadline=None)
# Scores on a coarse grid, so that ties between and within the two groups are frequent.
scores = st.lists(st.integers(0, 6), min_size=1, max_size=30)


def _labelled(inside, outside):
    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return labels, np.r_[inside, outside].astype(np.float64)


def _fpr_at_tpr_sklearn(labels, values, tpr):
    fpr, true_rate, _ = roc_curve(labels, values, drop_intermediate=False)
    return fpr[np.argmax(true_rate >= tpr - 1e-12)]


@SETTINGS
@given(inside=scores, outside=scores, scale=st.sampled_from([0.25, 1.0, -3.0]))
def test_metrics_match_scikit_learn_with_ties(inside, outside, scale):
    inside_t, outside_t = scale * torch.tensor(inside, dtype=torch.float32), scale * torch.tensor(outside, dtype=torch.float32)
    labels, values = _labelled(inside_t.numpy(), outside_t.numpy())
    assert bnn.auroc(inside_t, outside_t).item() == pytest.approx(roc_auc_score(labels, values), abs=1e-12)
    assert bnn.aupr(inside_t, outside_t).item() == pytest.approx(average_precision_score(labels, values), abs=1e-12)
    for tpr in (0.5, 0.95, 1.0):
        expected = _fpr_at_tpr_sklearn(labels, values, tpr)
        assert bnn.fpr_at_tpr(inside_t, outside_t, tpr=tpr).item() == pytest.approx(expected, abs=1e-12)


def test_known_values():
    inside, outside = torch.tensor([0.1, 0.4]), torch.tensor([0.35, 0.8])
    assert bnn.auroc(inside, outside).item() == pytest.approx(0.75)
    # Thresholds 0.8, 0.4, 0.35: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    assert bnn.aupr(inside, outside).item() == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert bnn.fpr_at_tpr(inside, outside).item() == pytest.approx(0.5)
    assert bnn.fpr_at_tpr(inside, outside, tpr=0.5).item() == 0.0


def test_separable_scores_are_perfect_and_reversed_scores_are_worst():
    inside, outside = torch.rand(50), 2 + torch.rand(40)
    assert bnn.auroc(inside, outside).item() == 1.0
    assert bnn.aupr(inside, outside).item() == 1.0
    assert bnn.fpr_at_tpr(inside, outside).item() == 0.0
    assert bnn.auroc(outside, inside).item() == 0.0
    assert bnn.fpr_at_tpr(outside, inside).item() == 1.0


def test_constant_scores_are_uninformative():
    inside, outside = torch.zeros(30), torch.zeros(10)
    assert bnn.auroc(inside, outside).item() == 0.5
    assert bnn.aupr(inside, outside).item() == pytest.approx(0.25)
    assert bnn.fpr_at_tpr(inside, outside).item() == 1.0


def test_accepts_any_shape_integer_scores_and_gradients_do_not_matter():
    inside = torch.arange(6).reshape(2, 3)
    outside = torch.tensor([[2.5, 7.0]], requires_grad=True)
    assert bnn.auroc(inside, outside).item() == pytest.approx(roc_auc_score([0] * 6 + [1] * 2, [0, 1, 2, 3, 4, 5, 2.5, 7]))


@pytest.mark.parametrize("metric", [bnn.auroc, bnn.aupr, bnn.fpr_at_tpr])
def test_bad_inputs_raise(metric):
    with pytest.raises(ValueError, match="in_scores is empty"):
        metric(torch.zeros(0), torch.ones(3))
    with pytest.raises(ValueError, match="out_scores contains NaN"):
        metric(torch.zeros(2), torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError, match="out_scores must be a real-valued Tensor"):
        metric(torch.zeros(2), [1.0, 2.0])
    with pytest.raises(TypeError, match="in_scores must be a real-valued Tensor of scores, got dtype torch.bool"):
        metric(torch.zeros(2, dtype=torch.bool), torch.ones(2))


@pytest.mark.parametrize("tpr", [0.0, 1.5, True, "0.95"])
def test_fpr_at_tpr_rejects_bad_rate(tpr):
    with pytest.raises(ValueError, match=r"tpr must be a number in \(0, 1\]"):
        bnn.fpr_at_tpr(torch.zeros(2), torch.ones(2), tpr=tpr)
