import numpy as np

from tradeoff.policy.scoring import exit_indices, exit_table, score_thresholds_reference


def test_four_sample_cache_by_hand():
    # two exits, 2 classes; confidences (maxprob) of exit 1: 0.88, 0.5, 0.73, 0.98
    logits = np.array(
        [
            [[2.0, 0.0], [0.0, 0.0], [0.0, 1.0], [4.0, 0.0]],
            [[0.0, 3.0], [3.0, 0.0], [0.0, 3.0], [3.0, 0.0]],
        ],
        np.float32,
    )
    labels = np.array([0, 0, 1, 1])
    table = exit_table(logits, labels, np.array([1.0, 3.0]))
    np.testing.assert_allclose(table.confidence[0], [0.880797, 0.5, 0.731059, 0.982014], atol=1e-6)
    # t = 0.7: samples 0, 2, 3 leave at exit 1 (right, right, wrong); sample 1 at exit 2 (right)
    s = score_thresholds_reference(table, np.array([[0.7], [0.5], [1.0]]))
    np.testing.assert_allclose(s.accuracy, [0.75, 0.75, 0.5])
    np.testing.assert_allclose(s.flops, [1.5, 1.0, 3.0])
    np.testing.assert_allclose(s.exit_fractions, [[0.75, 0.25], [1.0, 0.0], [0.0, 1.0]])
    # a tie at the threshold leaves (>=)
    np.testing.assert_array_equal(exit_indices(table, np.array([0.5])), [0, 0, 0, 0])
