"""Per-camera state on plain score sequences: smoothing, the alert lifecycle, NaN frames, settings."""

import math
import uuid
from collections.abc import Sequence

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from model.calibration import Calibration
from model.evaluation import live_scores
from model.metrics import causal_smooth
from monitor.camera import AlertEvent, AlertTracker, CameraSettings, CameraState, PerCameraSettings
from monitor.localize import MapScale

FPS = 10.0
T0 = 1_700_000_000.0
CAL = Calibration(threshold=2.0, scale=0.5, false_alarm_rate=0.01, normal_median=1.45, frames=100)
MAP_SCALE = MapScale(threshold=3.0, scale=1.0)


def raw_for(p: float) -> float:
    """The raw score that CAL normalizes to p."""
    return CAL.threshold + CAL.scale * math.log(p / (1.0 - p))


def settings(**fields: object) -> CameraSettings:
    base: dict[str, object] = {
        "smoothing_frames": 1,
        "min_frames": 3,
        "cutoff_seconds": 1.0,
        "cooldown_seconds": 0.0,
        "update_interval_seconds": 1.0,
    }
    return CameraSettings.model_validate({**base, **fields})


def track(cfg: CameraSettings, scores: Sequence[float], start: int = 0) -> list[tuple[int, AlertEvent]]:
    """Feed smoothed scores at FPS to a fresh tracker; (frame index, event) for every event."""
    tracker = AlertTracker("cam", cfg)
    out = []
    for i, s in enumerate(scores, start=start):
        for event in tracker.observe(i, T0 + i / FPS, s, s, ()).events:
            out.append((i, event))
    return out


def kinds(events: list[tuple[int, AlertEvent]]) -> list[str]:
    return [e.type for _, e in events]


def test_clean_interval_gives_one_start_and_one_end() -> None:
    scores = [0.1] * 10 + [0.9] * 20 + [0.1] * 20
    events = track(settings(), scores)
    assert kinds(events) == ["start", "end"]
    (i_start, start), (i_end, end) = events
    assert i_start == 12  # the third consecutive frame over the threshold
    assert start.start_ts == T0 + 1.0 and start.end_ts is None and start.frames == 3
    assert i_end == 40  # 1.0 s after the first frame under the off threshold (frame 30)
    assert end.alert_id == start.alert_id and uuid.UUID(end.alert_id).version == 4
    assert end.start_ts == start.start_ts
    assert end.end_ts == pytest.approx(T0 + 2.9)  # the last frame over the off threshold
    assert end.frames == 20


def test_hysteresis_keeps_one_alert_between_thresholds() -> None:
    wobble = [0.9] * 5 + [0.42, 0.58] * 40 + [0.1] * 15
    steady = track(settings(on_threshold=0.5, off_threshold=0.4, cutoff_seconds=0.0, min_frames=1), wobble)
    assert kinds(steady) == ["start", "end"]
    # The same wobble with the off threshold above its troughs flaps: what hysteresis prevents.
    flapping = track(settings(on_threshold=0.5, off_threshold=0.45, cutoff_seconds=0.0, min_frames=1), wobble)
    assert kinds(flapping).count("start") == 41


def test_min_frames_needs_consecutive_frames() -> None:
    short_bursts = ([0.9] * 2 + [0.1]) * 10
    assert track(settings(min_frames=3), short_bursts) == []
    started = track(settings(min_frames=3), [0.1, 0.9, 0.9, 0.9, 0.9])
    assert [(i, e.type) for i, e in started] == [(3, "start")]
    assert started[0][1].frames == 3


def test_cutoff_bridges_short_dips() -> None:
    dip_under_cutoff = [0.9] * 10 + [0.1] * 8 + [0.9] * 10 + [0.1] * 12
    events = track(settings(cutoff_seconds=1.0), dip_under_cutoff)
    assert kinds(events) == ["start", "end"]
    assert events[1][1].frames == 28
    dip_over_cutoff = [0.9] * 10 + [0.1] * 11 + [0.9] * 10 + [0.1] * 12
    assert kinds(track(settings(cutoff_seconds=1.0), dip_over_cutoff)) == ["start", "end", "start", "end"]


def test_cooldown_suppresses_a_start_right_after_an_end() -> None:
    two_bursts = [0.9] * 5 + [0.1] * 15 + [0.9] * 5 + [0.1] * 30
    # The first alert ends at frame 15; the second burst comes 0.5-0.9 s later.
    assert kinds(track(settings(cooldown_seconds=0.0), two_bursts)) == ["start", "end", "start", "end"]
    assert kinds(track(settings(cooldown_seconds=2.0), two_bursts)) == ["start", "end"]
    # A burst that outlasts the cooldown starts once it is over, dated from its first frame.
    long_second = [0.9] * 5 + [0.1] * 15 + [0.9] * 30 + [0.1] * 20
    events = track(settings(cooldown_seconds=2.0), long_second)
    assert kinds(events) == ["start", "end", "start", "end"]
    (i_end, _), (i_start2, second) = events[1], events[2]
    assert i_end == 15 and i_start2 == 35  # 2.0 s after the end
    assert second.start_ts == pytest.approx(T0 + 2.0)
    assert second.frames == 16


def test_updates_report_new_peaks_at_most_once_per_interval() -> None:
    rising = [0.6 + 0.01 * i for i in range(35)] + [0.1] * 20
    events = track(settings(update_interval_seconds=1.0), rising)
    assert kinds(events) == ["start", "update", "update", "update", "update", "end"]
    times = [i for i, e in events if e.type in ("start", "update")]
    # Frames 33-34 are new peaks within the interval: reported at 42, during the cutoff.
    assert times == [2, 12, 22, 32, 42]
    peaks = [e.peak.score for _, e in events]
    assert peaks == sorted(peaks) and all(e.new_peak for _, e in events[:4])
    assert events[4][1].peak.frame_index == 34 and not events[4][1].new_peak
    assert events[-1][1].peak.frame_index == 34


def test_a_peak_inside_the_interval_is_reported_when_it_passes() -> None:
    scores = [0.7, 0.7, 0.7, 0.95] + [0.8] * 20 + [0.1] * 20
    events = track(settings(update_interval_seconds=1.0), scores)
    assert [(i, e.type) for i, e in events] == [(2, "start"), (12, "update"), (34, "end")]
    update = events[1][1]
    assert update.peak.frame_index == 3 and update.peak.score == 0.95 and not update.new_peak


def test_start_peak_can_be_an_earlier_frame_of_the_streak() -> None:
    tracker = AlertTracker("cam", settings(min_frames=3))
    steps = [tracker.observe(i, T0 + i / FPS, s, s, ()) for i, s in enumerate([0.95, 0.7, 0.8])]
    assert [s.new_peak for s in steps] == [True, False, False]
    (start,) = steps[-1].events
    assert start.peak.frame_index == 0 and start.peak.ts == T0 and not start.new_peak


def test_close_ends_an_open_alert_once() -> None:
    tracker = AlertTracker("cam", settings())
    assert tracker.close() == []
    for i in range(5):
        tracker.observe(i, T0 + i / FPS, 0.9, 0.9, ())
    assert tracker.alert_id is not None
    (end,) = tracker.close()
    assert end.type == "end" and end.end_ts == pytest.approx(T0 + 0.4) and end.frames == 5
    assert tracker.alert_id is None and tracker.close() == []


def test_time_going_backwards_is_no_time_passing() -> None:
    tracker = AlertTracker("cam", settings(cutoff_seconds=1.0))
    for i in range(5):
        tracker.observe(i, T0 + i / FPS, 0.9, 0.9, ())
    # The camera clock jumps back an hour; frames keep coming 0.1 s apart.
    events = [e for i in range(5, 40) for e in tracker.observe(i, T0 - 3600 + i / FPS, 0.1, 0.1, ()).events]
    assert [e.type for e in events] == ["end"]


@pytest.mark.parametrize("seed", range(5))
def test_lifecycle_invariants_on_random_scores(seed: int) -> None:
    """start, update*, end per alert; one open at a time; starts respect min_frames and cooldown."""
    rng = np.random.default_rng(seed)
    # Regime switches every ~2 s between quiet, noisy and anomalous, plus NaN frames.
    levels = np.repeat(rng.choice([0.1, 0.45, 0.8], 40), rng.integers(5, 40, 40))
    scores = np.clip(levels + rng.normal(0, 0.12, levels.size), 0, 1)
    scores[rng.random(levels.size) < 0.03] = np.nan
    cfg = settings(min_frames=4, cutoff_seconds=0.7, cooldown_seconds=1.5, update_interval_seconds=0.5)
    tracker = AlertTracker("cam", cfg)
    open_id, last_end_t, run, last_event_t = None, -1e9, 0, 0.0
    seen: list[str] = []
    for i, s in enumerate(scores):
        t = i / FPS
        smoothed = None if np.isnan(s) else float(s)
        step = tracker.observe(i, T0 + t, smoothed, 0.0 if smoothed is None else smoothed, ())
        run = run + 1 if smoothed is not None and smoothed >= cfg.on_threshold else 0
        for event in step.events:
            seen.append(event.type)
            if event.type == "start":
                assert open_id is None and run >= cfg.min_frames
                assert t - last_end_t >= cfg.cooldown_seconds - 1e-6
                open_id = event.alert_id
            else:
                assert event.alert_id == open_id
            if event.type == "update":
                assert t - last_event_t >= cfg.update_interval_seconds - 1e-6
            if event.type == "end":
                assert event.end_ts is not None and event.start_ts <= event.end_ts <= T0 + t
                open_id, last_end_t = None, t
            last_event_t = t
        assert step.alert_id == open_id
    assert seen.count("start") >= 3 and seen.count("update") >= 3  # the sequence exercised the machine
    assert open_id is None or tracker.close()[0].alert_id == open_id


# CameraState: normalization, smoothing, invalid scores, localization.


def state(**fields: object) -> CameraState:
    return CameraState("gate-1", settings(**fields), CAL, MAP_SCALE)


def test_smoothing_is_causal_mean_of_the_last_frames() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 40)
    cam = state(smoothing_frames=5)
    smoothed = [cam.update(i, T0 + i / FPS, raw_for(x), None, (240, 360)).smoothed for i, x in enumerate(p)]
    np.testing.assert_allclose(np.asarray(smoothed, dtype=float), causal_smooth(p, 5), atol=1e-9)
    # Changing the future changes nothing in the past.
    q = p.copy()
    q[25:] = 0.99
    cam2 = state(smoothing_frames=5)
    smoothed2 = [cam2.update(i, T0 + i / FPS, raw_for(x), None, (240, 360)).smoothed for i, x in enumerate(q)]
    assert smoothed2[:25] == smoothed[:25] and smoothed2[25] != smoothed[25]


def test_evaluation_smooths_what_the_monitor_smooths() -> None:
    # The benchmark protocol's headline is the score the live monitor thresholds: the evaluation's
    # smoothed scores must be the camera's, frame for frame, extreme raw scores included.
    rng = np.random.default_rng(1)
    raw = rng.normal(CAL.threshold, 2.0, 60)
    raw[20:24] = 40.0  # an event far above the threshold, then normal frames again
    cam = state(smoothing_frames=8)
    live = [cam.update(i, T0 + i / FPS, float(x), None, (240, 360)).smoothed for i, x in enumerate(raw)]
    np.testing.assert_allclose(np.asarray(live, dtype=float), live_scores(raw, CAL, 8), atol=1e-12)
    # Four frames after the event, the raw mean would still be far above the threshold; the monitor's
    # mean of calibrated scores is bounded by the event's share of the window.
    assert causal_smooth(raw, 8)[27] > 2 * CAL.threshold + 10
    assert live_scores(raw, CAL, 8)[27] <= 4 / 8 + 4 / 8 * float(CAL.normalize(raw[24:28]).max())


def test_verdict_carries_normalized_score_and_alert_state() -> None:
    cam = state(min_frames=2)
    verdicts = [cam.update(i, T0 + i / FPS, raw_for(0.8), None, (240, 360)) for i in range(3)]
    assert verdicts[0].score == pytest.approx(0.8) and verdicts[0].raw_score == pytest.approx(raw_for(0.8))
    assert [v.anomalous for v in verdicts] == [False, True, True]
    assert verdicts[1].events[0].type == "start" and verdicts[2].alert_id == verdicts[1].events[0].alert_id
    assert verdicts[1].events[0].camera_id == "gate-1"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_never_alert_and_are_reported_invalid(bad: float) -> None:
    cam = state(min_frames=1, smoothing_frames=3)
    verdicts = [cam.update(i, T0 + i / FPS, bad, None, (240, 360)) for i in range(30)]
    assert all(not v.valid and v.score is None and v.smoothed is None for v in verdicts)
    assert not any(v.events or v.anomalous or v.new_peak for v in verdicts)
    # Invalid frames leave the smoothing window alone.
    after = cam.update(30, T0 + 3.0, raw_for(0.3), None, (240, 360))
    assert after.smoothed == pytest.approx(0.3)


def test_a_nan_frame_breaks_the_min_frames_streak() -> None:
    cam = state(min_frames=3)
    hot = raw_for(0.9)
    verdicts = [
        cam.update(i, T0 + i / FPS, s, None, (240, 360)) for i, s in enumerate([hot, hot, math.nan, hot, hot])
    ]
    assert not any(v.events for v in verdicts)
    assert cam.update(5, T0 + 0.5, hot, None, (240, 360)).events[0].type == "start"


def hot_map(frame_hw: tuple[int, int], rect: tuple[int, int, int, int]) -> np.ndarray:
    truth = np.zeros(frame_hw, np.float32)
    truth[rect[1] : rect[3], rect[0] : rect[2]] = 1.0
    cover = cv2.resize(truth, (30, 20), interpolation=cv2.INTER_AREA)
    return cover / cover.max() * 8.0


def test_regions_come_through_in_source_pixels() -> None:
    cam = state()
    v = cam.update(0, T0, raw_for(0.9), hot_map((480, 640), (300, 100, 420, 220)), (480, 640))
    (region,) = v.regions
    assert 280 <= region.bbox[0] <= 300 and 420 <= region.bbox[2] <= 440 and not v.suppressed


def test_ignored_hot_area_cannot_raise_an_alert() -> None:
    rect, hw = (300, 100, 420, 220), (480, 640)
    polygon = [(280, 80), (440, 80), (440, 240), (280, 240)]
    masked = state(ignore_polygons=[polygon])
    verdicts = [masked.update(i, T0 + i / FPS, raw_for(0.95), hot_map(hw, rect), hw) for i in range(20)]
    assert all(v.suppressed and v.regions == () and v.smoothed == 0.0 for v in verdicts)
    assert verdicts[0].score == pytest.approx(0.95)  # the published score stays the model's
    assert not any(v.events for v in verdicts)
    elsewhere = hot_map(hw, (20, 300, 140, 420))
    v = masked.update(20, T0 + 2.0, raw_for(0.95), elsewhere, hw)
    assert len(v.regions) == 1 and not v.suppressed
    plain = state()
    started = [
        e
        for i in range(5)
        for e in plain.update(i, T0 + i / FPS, raw_for(0.95), hot_map(hw, rect), hw).events
    ]
    assert [e.type for e in started] == ["start"] and started[0].peak.regions


def test_map_threshold_override_moves_the_region_threshold() -> None:
    m = np.zeros((20, 30), np.float32)
    m[5:10, 5:10] = 4.0
    assert len(state().update(0, T0, 0.0, m, (160, 240)).regions) == 1
    assert state(map_threshold=5.0).update(0, T0, 0.0, m, (160, 240)).regions == ()


def test_snapshot_of_a_kept_peak_and_its_switch() -> None:
    hw = (240, 360)
    frame = np.full(hw, 100, np.uint8)
    m = hot_map(hw, (100, 60, 200, 160))
    cam = state()
    v = cam.update(0, T0, raw_for(0.9), m, hw)
    jpeg = cam.snapshot(frame, m, v.regions)
    assert jpeg is not None and cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (
        240,
        360,
        3,
    )
    assert state(snapshot={"enabled": False}).snapshot(frame, m, v.regions) is None


# Settings: validation messages and per-camera overrides.


def test_settings_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match=r"off_threshold \(0.6\) must be below on_threshold \(0.5\)"):
        CameraSettings(off_threshold=0.6)
    with pytest.raises(ValidationError, match=r"ignore_polygons\[0\] has 2 points"):
        CameraSettings(ignore_polygons=[[(0, 0), (1, 1)]])
    with pytest.raises(ValidationError, match="smoothing_window"):
        CameraSettings.model_validate({"smoothing_window": 3})
    with pytest.raises(ValidationError, match="cooldown_seconds"):
        CameraSettings(cooldown_seconds=-1)
    with pytest.raises(ValidationError, match="map_threshold"):
        CameraSettings(map_threshold=float("nan"))


def test_per_camera_overrides_merge_over_defaults() -> None:
    table = PerCameraSettings.model_validate(
        {
            "defaults": {"on_threshold": 0.6, "off_threshold": 0.45, "snapshot": {"max_side": 480}},
            "cameras": {
                "gate-1": {"on_threshold": 0.7, "snapshot": {"enabled": False}},
                "lobby.2": {"ignore_polygons": [[[0, 0], [50, 0], [50, 50]]]},
            },
        }
    )
    gate = table.for_camera("gate-1")
    assert gate.on_threshold == 0.7 and gate.off_threshold == 0.45
    assert gate.snapshot.enabled is False and gate.snapshot.max_side == 480
    assert table.for_camera("lobby.2").ignore_polygons == [[(0, 0), (50, 0), (50, 50)]]
    assert table.for_camera("unknown") == table.defaults


def test_bad_override_fails_at_load_naming_camera_and_field() -> None:
    with pytest.raises(ValidationError, match=r"cameras\.gate-1: off_threshold \(0.7\) must be below"):
        PerCameraSettings.model_validate({"cameras": {"gate-1": {"off_threshold": 0.7}}})
    with pytest.raises(ValidationError, match=r"cameras\.gate-1\.min_frames"):
        PerCameraSettings.model_validate({"cameras": {"gate-1": {"min_frames": 0}}})
    with pytest.raises(ValidationError, match="cameras"):
        PerCameraSettings.model_validate({"cameras": {"bad id!": {}}})
