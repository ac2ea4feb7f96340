import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from model.calibration import CalibrationError, calibrate
from model.metrics import auroc, causal_smooth, frame_aurocs, minmax


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_with_and_without_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    tied = np.round(scores)
    assert auroc(labels, tied) == pytest.approx(roc_auc_score(labels, tied), abs=1e-12)


def test_auroc_known_values_and_single_class_error() -> None:
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auroc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    with pytest.raises(ValueError, match="both"):
        auroc(np.zeros(4), np.arange(4))


def test_causal_smoothing_uses_no_future_frame() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    smoothed = causal_smooth(scores, 3)
    np.testing.assert_allclose(smoothed, [1.0, 1.5, 2.0, 3.0, 107 / 3])
    changed = scores.copy()
    changed[4] = -5
    np.testing.assert_allclose(causal_smooth(changed, 3)[:4], smoothed[:4])
    np.testing.assert_allclose(causal_smooth(scores, 1), scores)


def test_frame_aurocs_against_sklearn() -> None:
    rng = np.random.default_rng(3)
    labels = [
        np.r_[np.zeros(30), np.ones(20)].astype(int),
        np.r_[np.zeros(10), np.ones(40)].astype(int),
        np.zeros(25, int),
    ]
    scores = [rng.normal(size=len(lab)) + lab * (i + 1) + 3 * i for i, lab in enumerate(labels)]
    result = frame_aurocs(labels, scores)
    y = np.concatenate(labels)
    assert result["auroc_causal_micro"] == pytest.approx(roc_auc_score(y, np.concatenate(scores)))
    assert result["auroc_paper_micro"] == pytest.approx(
        roc_auc_score(y, np.concatenate([minmax(s) for s in scores]))
    )
    macro = np.mean([roc_auc_score(labels[i], scores[i]) for i in (0, 1)])
    assert result["auroc_macro"] == pytest.approx(macro)


def test_calibration_errs_towards_fewer_false_alarms_and_puts_threshold_at_half() -> None:
    rng = np.random.default_rng(0)
    fresh = rng.normal(size=200_000)  # normal frames the calibration did not see
    many = [np.mean(fresh > calibrate(rng.normal(size=10_000), 0.05).threshold) for _ in range(5)]
    assert np.median(many) == pytest.approx(0.05, abs=0.005)  # many frames: the rate asked for
    for frames in (300, 50):
        rates = np.array(
            [np.mean(fresh > calibrate(rng.normal(size=frames), 0.05).threshold) for _ in range(20)]
        )
        # Few frames: the tail bound's margin, rarely above the asked rate, by more the fewer the frames.
        assert 0.005 <= np.median(rates) <= 0.045 and np.mean(rates > 0.075) <= 0.1
    normal = rng.normal(size=10_000)
    cal = calibrate(normal, 0.05)
    assert cal.normalize(cal.threshold) == pytest.approx(0.5)
    assert cal.normalize(cal.normal_median) == pytest.approx(0.25)
    assert np.all(np.diff(cal.normalize(np.sort(normal))) >= 0)


def test_calibration_refuses_too_few_frames_and_rates_they_cannot_support() -> None:
    with pytest.raises(CalibrationError, match="at least 25 held-out normal frames, got 24"):
        calibrate(np.arange(24.0), 0.1)
    with pytest.raises(
        CalibrationError, match=r"50 held-out normal frames support .* down to 0.005, not 0.001"
    ):
        calibrate(np.arange(50.0), 0.001)
    assert calibrate(np.arange(50.0), 0.005).frames == 50
