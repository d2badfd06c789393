import numpy as np
import pytest

from edgeanchor.errors import EdgeAnchorError
from edgeanchor.kmeans import anchor_fitness, assign_to_levels, kmeans_anchors

CENTRES = np.array([[10.0, 14.0], [40.0, 25.0], [90.0, 160.0]])


def clustered(n_per=200, seed=1, spread=0.03):
    """Box sizes around three well-separated centres, each within +-3 % noise."""
    rng = np.random.default_rng(seed)
    wh = np.concatenate([c * (1 + rng.uniform(-spread, spread, (n_per, 2))) for c in CENTRES])
    return rng.permutation(wh)


def test_recovers_separated_clusters():
    anchors = kmeans_anchors(clustered(), 3)
    assert anchors.shape == (3, 2) and anchors.dtype == np.float64
    np.testing.assert_allclose(anchors, CENTRES, rtol=0.05)


def test_deterministic_for_a_seed():
    wh = np.random.default_rng(3).uniform(3, 200, (300, 2))
    a = kmeans_anchors(wh, 9, seed=5)
    np.testing.assert_array_equal(a, kmeans_anchors(wh, 9, seed=5))
    assert not np.array_equal(a, kmeans_anchors(wh, 9, seed=6))


def test_sorted_by_area():
    anchors = kmeans_anchors(np.random.default_rng(4).uniform(3, 300, (400, 2)), 9)
    area = anchors.prod(1)
    assert (np.diff(area) > 0).all()


def test_fitness_hand_worked():
    # Box 10x10 fits the 10x10 anchor exactly (metric 1); 50x10 has w ratio 5 >= 4 (metric 1/5).
    # Recall 1/2; mean best metric (1 + 0.2) / 2 = 0.6.
    recall, metric = anchor_fitness(np.array([[10.0, 10.0]]), np.array([[10.0, 10.0], [50.0, 10.0]]))
    assert recall == 0.5 and metric == pytest.approx(0.6)
    # A second anchor 40x10 is within 4 of the 50x10 box (ratio 1.25): recall 1, metric (1 + 0.8) / 2.
    recall, metric = anchor_fitness(np.array([[10.0, 10.0], [40.0, 10.0]]), np.array([[10.0, 10.0], [50.0, 10.0]]))
    assert recall == 1.0 and metric == pytest.approx(0.9)
    # The bound is strict: a ratio of exactly 4 does not count.
    assert anchor_fitness(np.array([[10.0, 10.0]]), np.array([[40.0, 10.0]]))[0] == 0.0


def test_too_few_boxes_is_one_line_error():
    with pytest.raises(EdgeAnchorError) as err:
        kmeans_anchors(np.array([[10.0, 10.0], [20.0, 30.0]]), 3)
    msg = str(err.value)
    assert "k=3" in msg and "\n" not in msg and "--" not in msg


def test_small_boxes_are_ignored():
    wh = np.concatenate([clustered(), np.array([[1.0, 50.0], [50.0, 1.5], [0.5, 0.5]] * 50)])
    np.testing.assert_allclose(kmeans_anchors(wh, 3), CENTRES, rtol=0.05)
    # Only 2 boxes are at least 2 px on both sides: too few for 3 anchors.
    with pytest.raises(EdgeAnchorError, match="only 2 of 5 boxes"):
        kmeans_anchors(np.array([[1.0, 50.0], [50.0, 1.0], [1.9, 1.9], [10, 10], [20, 20]]), 3)


def test_bad_k_is_an_error():
    with pytest.raises(EdgeAnchorError, match="k >= 1"):
        kmeans_anchors(clustered(), 0)


def test_assign_to_levels():
    anchors = np.array([[100.0, 100.0], [5.0, 5.0], [30.0, 10.0], [20.0, 20.0], [60.0, 50.0], [8.0, 12.0]])
    levels = assign_to_levels(anchors, 3)
    # Areas: 10000, 25, 300, 400, 3000, 96 -> (25, 96), (300, 400), (3000, 10000).
    assert [level.tolist() for level in levels] == [
        [[5.0, 5.0], [8.0, 12.0]], [[30.0, 10.0], [20.0, 20.0]], [[60.0, 50.0], [100.0, 100.0]]]
    with pytest.raises(EdgeAnchorError, match="cannot split 6 anchors evenly over 4 levels"):
        assign_to_levels(anchors, 4)
    with pytest.raises(EdgeAnchorError):
        assign_to_levels(anchors, 0)
