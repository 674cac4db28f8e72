"""The mask / component / span rules of dfdc_cli.faces.tubes against hand-computed results."""

from __future__ import annotations

import numpy as np
import pytest

from dfdc_cli.faces.index import Faces
from dfdc_cli.faces.tubes import box_2d_crops, build_mask, fill_gaps, find_tubes


def faces(*dets):
    """Faces of one sampled frame from (box, prob) pairs; landmarks = box corners + centre."""
    if not dets:
        return Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
    boxes = np.array([b for b, _ in dets], np.float32)
    probs = np.array([p for _, p in dets], np.float32)
    marks = np.stack(
        [[[b[0], b[1]], [b[2], b[1]], [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2], [b[0], b[3]], [b[2], b[3]]] for b in boxes]
    ).astype(np.float32)
    return Faces(boxes, probs, marks)


def test_mask_cells_floor_ceil():
    m = build_mask([faces(((9.5, 10.2, 30.1, 20.0), 0.9))], width=64, height=48, mask_downscale=4)
    assert m.shape == (1, 12, 16)
    ys, xs = np.nonzero(m[0])
    # x: floor(9.5/4)=2 .. ceil(30.1/4)=8 (exclusive); y: floor(10.2/4)=2 .. ceil(20/4)=5
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (2, 8, 2, 5)
    assert m.sum() == 6 * 3


def test_mask_clips_boxes_and_ignores_outside_ones():
    m = build_mask([faces(((50, -5, 80, 20), 0.9), ((-30, -30, -1, -1), 0.9))], width=70, height=40, mask_downscale=4)
    assert m.shape == (1, 10, 18)  # ceil(40/4), ceil(70/4)
    ys, xs = np.nonzero(m[0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (12, 18, 0, 5)


def test_fill_gaps_only_single_empty_frames_between_non_empty():
    m = np.zeros((7, 4, 4), bool)
    m[0, 0:2, 0:3] = True
    m[2, 1:3, 1:4] = True  # s1 empty between s0 and s2 -> AND
    m[3, 0, 0] = True
    m[6, 0, 0] = True  # s4, s5 empty: a 2-frame gap is not filled
    f = fill_gaps(m)
    assert np.array_equal(f[1], m[0] & m[2])
    assert f[1].sum() == 2  # rows 1, cols 1..2
    assert not f[4].any() and not f[5].any()
    assert np.array_equal(f[[0, 2, 3, 6]], m[[0, 2, 3, 6]])


def test_one_face_span_and_union_box():
    # every 10, 45 decoded frames, detections on sampled frames 0..4 (frames 0, 10, .., 40)
    fs = [faces(((8, 8, 24, 24), 0.9)) for _ in range(5)]
    (t,) = find_tubes(fs, every=10, n_frames=45, width=64, height=64, mask_downscale=4, min_frames=30)
    assert (t.first_frame, t.last_frame, t.n_frames) == (0, 44, 45)  # (4+1)*10-1 = 49 clipped to 44
    assert t.box == (8, 8, 24, 24)
    assert t.n_detections == 5 and t.mean_prob == pytest.approx(0.9) and t.max_prob == pytest.approx(0.9)
    assert t.tube_id == 0


def test_union_box_is_mask_bbox_scaled_back_and_clipped():
    fs = [faces(((9, 10, 30, 20), 0.9)), faces(((13, 6, 33, 18), 0.8)), faces(((60, 30, 75, 41), 0.7))]
    # the third box is far away -> separate component, too short anyway
    (t,) = find_tubes(fs, every=15, n_frames=45, width=70, height=41, mask_downscale=4, min_frames=30)
    # cells: x floor(9/4)=2 .. ceil(33/4)=9 -> 8..36; y floor(6/4)=1 .. ceil(20/4)=5 -> 4..20
    assert t.box == (8, 4, 36, 20)
    assert (t.first_frame, t.last_frame) == (0, 29)
    assert t.mean_prob == pytest.approx(0.85)
    # box clipped to the frame: a face at the right/bottom edge of a 70x41 frame
    fs = [faces(((50, 25, 80, 50), 0.9))] * 3
    (t,) = find_tubes(fs, every=10, n_frames=30, width=70, height=41, mask_downscale=4, min_frames=30)
    assert t.box == (48, 24, 70, 41)


def test_min_frames_rule_rejects_short_components():
    fs = [faces(((8, 8, 24, 24), 0.99)), faces(((8, 8, 24, 24), 0.99)), faces(), faces(), faces()]
    assert find_tubes(fs, every=10, n_frames=50, width=64, height=64, min_frames=30) == []  # 20 frames
    (t,) = find_tubes(fs, every=10, n_frames=50, width=64, height=64, min_frames=20)
    assert (t.first_frame, t.last_frame) == (0, 19)


def test_one_frame_gap_is_bridged_two_frame_gap_is_not():
    b = ((8, 8, 24, 24), 0.9)
    one_gap = [faces(b), faces(b), faces(), faces(b), faces(b)]
    (t,) = find_tubes(one_gap, every=10, n_frames=50, width=64, height=64, min_frames=30)
    assert (t.first_frame, t.last_frame, t.n_detections) == (0, 49, 4)
    assert not t.track.detected[20] and t.track.detected[30]
    two_gap = [faces(b), faces(b), faces(), faces(), faces(b), faces(b)]
    ts = find_tubes(two_gap, every=10, n_frames=60, width=64, height=64, min_frames=10)
    assert sorted((t.first_frame, t.last_frame) for t in ts) == [(0, 19), (40, 59)]
    # a gap where the face jumped: AND(prev, next) is empty, nothing bridges
    jump = [faces(b), faces(b), faces(b), faces(), faces(((40, 40, 60, 60), 0.9))] + [faces(((40, 40, 60, 60), 0.9))] * 2
    ts = find_tubes(jump, every=10, n_frames=70, width=64, height=64, min_frames=10)
    assert sorted((t.first_frame, t.last_frame) for t in ts) == [(0, 29), (40, 69)]


def test_26_connectivity_joins_diagonal_neighbours_in_time():
    # s0 covers cells x,y 0..1; s1 covers 2..3: they touch only diagonally across time
    fs = [faces(((0, 0, 8, 8), 0.9)), faces(((8, 8, 16, 16), 0.9)), faces(((16, 16, 24, 24), 0.9))]
    (t,) = find_tubes(fs, every=10, n_frames=30, width=32, height=32, min_frames=30)
    assert t.box == (0, 0, 24, 24)
    # one empty cell column between them: not connected
    fs = [faces(((0, 0, 8, 8), 0.9)), faces(((12, 12, 20, 20), 0.9))]
    assert len(find_tubes(fs, every=20, n_frames=40, width=32, height=32, min_frames=20)) == 2


def test_two_faces_ranked_by_mean_prob_and_max_faces():
    a, b, c = ((4, 4, 20, 20), 0.80), ((40, 4, 56, 20), 0.99), ((4, 40, 20, 56), 0.90)
    fs = [faces(a, b, c) for _ in range(3)]
    ts = find_tubes(fs, every=10, n_frames=30, width=64, height=64, min_frames=30, max_faces=5)
    assert [t.box for t in ts] == [(40, 4, 56, 20), (4, 40, 20, 56), (4, 4, 20, 20)]
    assert [t.tube_id for t in ts] == [0, 1, 2]
    ts = find_tubes(fs, every=10, n_frames=30, width=64, height=64, min_frames=30, max_faces=2)
    assert [t.mean_prob for t in ts] == pytest.approx([0.99, 0.90])
    assert len(find_tubes(fs, every=10, n_frames=30, width=64, height=64, min_frames=30, max_faces=0)) == 3


def test_max_frames_caps_span_and_box_covers_kept_span_only():
    fs = [faces(((8, 8, 24, 24), 0.9)) for _ in range(10)] + [faces(((16, 8, 32, 24), 0.9)) for _ in range(20)]
    (t,) = find_tubes(fs, every=10, n_frames=300, width=64, height=64, min_frames=30, max_frames=100)
    assert (t.first_frame, t.last_frame, t.n_frames) == (0, 99, 100)
    assert t.box == (8, 8, 24, 24)  # the later, shifted boxes are outside the kept span
    assert t.n_detections == 10
    (t,) = find_tubes(fs, every=10, n_frames=300, width=64, height=64, min_frames=30, max_frames=300)
    assert (t.first_frame, t.last_frame) == (0, 299) and t.box == (8, 8, 32, 24)


def test_track_interpolates_between_detections_and_holds_at_ends():
    fs = [faces(), faces(((0, 0, 10, 10), 0.8)), faces(((10, 0, 20, 10), 0.6)), faces(((10, 0, 20, 10), 0.7))]
    fs[3] = faces()  # last sampled frame empty: the span ends with frame 29
    fs[0] = faces()
    fs = fs[:3] + [faces(((10, 0, 20, 10), 0.7))]
    (t,) = find_tubes(fs, every=10, n_frames=45, width=32, height=32, mask_downscale=2, min_frames=30)
    tr = t.track
    assert (t.first_frame, t.last_frame) == (10, 39)
    assert tr.frames[0] == 10 and tr.frames[-1] == 39 and len(tr.frames) == 30
    np.testing.assert_allclose(tr.boxes[0], [0, 0, 10, 10])
    np.testing.assert_allclose(tr.boxes[5], [5, 0, 15, 10])  # frame 15: halfway
    np.testing.assert_allclose(tr.boxes[29], [10, 0, 20, 10])  # held after the last detection
    np.testing.assert_allclose(tr.landmarks[5, 2], [10, 5])  # centre point interpolated
    assert tr.detected.tolist() == [i in (0, 10, 20) for i in range(30)]
    assert tr.probs[0] == pytest.approx(0.8) and np.isnan(tr.probs[1])
    assert tuple(tr.crop_box) == t.box and tr.size == 256


def test_detections_in_same_component_use_best_per_frame():
    fs = [faces(((8, 8, 24, 24), 0.7), ((10, 10, 26, 26), 0.95))] * 3
    (t,) = find_tubes(fs, every=10, n_frames=30, width=64, height=64, min_frames=30)
    assert t.n_detections == 3 and t.mean_prob == pytest.approx(0.95)
    np.testing.assert_allclose(t.track.boxes[0], [10, 10, 26, 26])


def test_empty_inputs():
    assert find_tubes([], every=10, n_frames=0, width=64, height=64) == []
    assert find_tubes([faces()] * 5, every=10, n_frames=50, width=64, height=64) == []


def test_box_2d_crops():
    fs = [faces(((0, 0, 10, 10), 0.9)), faces(((10, 0, 30, 20), 0.9)), faces(((10, 0, 30, 20), 0.9))]
    (t,) = find_tubes(fs, every=10, n_frames=30, width=64, height=64, min_frames=30)
    crops = box_2d_crops(t.track, n=32)
    assert crops.shape == (30, 4)
    side = 1.2 * np.percentile([10, 20, 20], 90)
    np.testing.assert_allclose(crops[:, 2] - crops[:, 0], side, rtol=1e-6)
    np.testing.assert_allclose((crops[0, 0] + crops[0, 2]) / 2, 5.0, rtol=1e-6)  # centre of box 0
    np.testing.assert_allclose((crops[5, 1] + crops[5, 3]) / 2, 7.5, rtol=1e-6)  # halfway 5 -> 10
