"""Face detection: a batched MTCNN cascade (P-Net -> R-Net -> O-Net) of our own.

The networks and their weights are facenet-pytorch's (2.5.3, weights bundled in its wheel under
``facenet_pytorch/data``; loaded from there, never downloaded). The cascade around them is ours:
facenet-pytorch's batch ``MTCNN.detect`` crashes on a batch that mixes frames with and without
faces (ragged numpy arrays), crops every candidate box in a Python loop, and runs its final NMS
in numpy. Here every stage runs on the whole batch at once, on the chosen device:

1. image pyramid (scales ``12/min_face_size * factor**k`` while the short side stays >= 12 px),
   area-resampled; P-Net on each scale; a candidate per output cell with face prob >= t1;
   NMS (IoU 0.5) per scale and image, then NMS (IoU 0.7) per image over all scales;
   box regression, squaring ("rerec").
2. every candidate cropped (clipped to the frame, not zero-padded) and area-resampled to 24x24
   in one vectorised gather from per-frame integral images; R-Net; keep prob > t2;
   NMS (IoU 0.7) per image; regression; squaring.
3. the same crop at 48x48; O-Net; keep prob > t3; landmarks; regression;
   greedy NMS per image with the 'Min' overlap (intersection / smaller area) > 0.7, in torch.

The result is numerically the same as facenet-pytorch's ``MTCNN(keep_all=True).detect`` on each
frame alone (tests/test_detect.py checks it). Known, deliberate differences, all corner cases:

* the area resampling of a crop is computed from an exact integral image, so crop pixels can
  differ from facenet-pytorch's by float rounding (< 1e-4 grey levels);
* network outputs for a batch can differ from a batch of one by float rounding (~1e-6), which
  can only matter for a score sitting exactly on a threshold;
* a candidate whose crop would be empty (box entirely outside the frame) is dropped; facenet-
  pytorch skips its crop without dropping the box, misaligning the rest of the batch;
* ties of equal final score are broken like numpy's small-array argsort (later candidate first).

Conventions of the output (:class:`dfdc_cli.faces.index.Faces`, one per frame): coordinates are float
pixels of the input frame (x to the right, y down; a box may extend a little past the frame edges
-- clip it yourself); boxes are ``x1, y1, x2, y2``; landmarks are five ``(x, y)`` points in MTCNN
order: the eye on the image's left, the other eye, nose tip, left mouth corner, right mouth
corner; faces are ordered by descending probability.
"""

from __future__ import annotations

import os
import threading
from typing import Optional, Sequence, Union

import facenet_pytorch
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, nms

from dfdc_cli.faces.detectors import DetectSettings
from dfdc_cli.faces.index import Faces

DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
DEFAULT_FACTOR = 0.709
DEFAULT_MIN_FACE_SIZE = 20
# Frames per pass through the cascade, when not given. On CPU small batches are faster per frame
# (P-Net activations stay in cache: measured 4 < 1 < 8 < 30 ms/frame at 960x540); on a GPU
# big batches are what makes it fast.
DEFAULT_BATCH_SIZE = {"cpu": 4, "cuda": 32}

# R-Net / O-Net see at most this many crops per forward pass (bounds memory, not results:
# checked bit for bit against 4096 on DFDC frames; 4096 R-Net crops took ~0.9 GB on CPU).
_NET_CHUNK = 512


# ----------------------------------------------------------------------------------------------
# Networks: loaded once per device and process.

_NETS: dict[str, tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]] = {}
_NETS_LOCK = threading.Lock()


def _weights_dir() -> str:
    return os.path.join(os.path.dirname(facenet_pytorch.__file__), "data")


def load_nets(device: Union[str, torch.device] = "cpu"):
    """(pnet, rnet, onet) on ``device``, in eval mode, from the weights bundled with
    facenet-pytorch. Cached per device for the life of the process."""
    key = str(torch.device(device))
    with _NETS_LOCK:
        nets = _NETS.get(key)
        if nets is None:
            # pretrained=False: build the modules empty, then load the bundled state dicts
            # ourselves (local files only, weights_only=True: no pickle code, no download).
            from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

            folder = _weights_dir()
            built = []
            for cls, name in ((PNet, "pnet.pt"), (RNet, "rnet.pt"), (ONet, "onet.pt")):
                path = os.path.join(folder, name)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"MTCNN weights missing from facenet-pytorch: {path}")
                net = cls(pretrained=False)
                net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                net.eval().requires_grad_(False)
                built.append(net.to(key))
            nets = _NETS[key] = tuple(built)  # type: ignore[assignment]
    return nets


# ----------------------------------------------------------------------------------------------
# Box arithmetic (float32, same operation order as the reference so results agree bitwise).


def _pyramid(h: int, w: int, min_face_size: float, factor: float) -> list[float]:
    m = 12.0 / min_face_size
    side = min(h, w) * m
    scales = []
    scale = m
    while side >= 12:
        scales.append(scale)
        scale = scale * factor
        side = side * factor
    return scales


def _square(b: torch.Tensor) -> torch.Tensor:
    """Grow each (x1, y1, x2, y2) box to a square around its centre ('rerec')."""
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    side = torch.maximum(w, h)
    x1 = b[:, 0] + w * 0.5 - side * 0.5
    y1 = b[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _regress(b: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """R-Net/O-Net box regression (offsets relative to the +1 box size)."""
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    return torch.stack(
        [b[:, 0] + reg[:, 0] * w, b[:, 1] + reg[:, 1] * h, b[:, 2] + reg[:, 2] * w, b[:, 3] + reg[:, 3] * h],
        dim=1,
    )


def _nms_per_image(boxes: torch.Tensor, scores: torch.Tensor, img: torch.Tensor, iou: float) -> torch.Tensor:
    """IoU NMS run separately per image on the untouched coordinates (torchvision's offset
    trick would round non-integer coordinates). Returns kept indices, grouped by image."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    keeps = []
    for i in torch.unique(img).tolist():
        sel = torch.nonzero(img == i).squeeze(1)
        keeps.append(sel[nms(boxes[sel], scores[sel], iou)])
    return torch.cat(keeps)


def _nms_min_per_image(boxes: torch.Tensor, scores: torch.Tensor, img: torch.Tensor, thr: float) -> torch.Tensor:
    """Greedy NMS per image with overlap = intersection / smaller area (+1 pixel convention);
    a box is dropped when its overlap with a kept, higher-scoring box is > thr.

    All images are processed at once: boxes are laid out (images, max boxes per image) and the
    greedy pass loops over the rank within the image. Ties of equal score: the later box first.
    Returns kept indices, grouped by image, each group by descending score."""
    n = boxes.shape[0]
    dev = boxes.device
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=dev)
    order = torch.argsort(scores, stable=True).flip(0)  # descending, ties: later index first
    order = order[torch.argsort(img[order], stable=True)]  # grouped by image, stable
    g_img = img[order]
    _, group, counts = torch.unique_consecutive(g_img, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=dev) - starts[group]
    n_groups, kmax = int(counts.shape[0]), int(counts.max())

    pad = torch.zeros((n_groups, kmax, 4), dtype=boxes.dtype, device=dev)
    pad[group, rank] = boxes[order]
    valid = torch.zeros((n_groups, kmax), dtype=torch.bool, device=dev)
    valid[group, rank] = True

    x1, y1, x2, y2 = pad.unbind(2)
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    iw = torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :]) + 1
    ih = torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :]) + 1
    iw, ih = iw.clamp(min=0.0), ih.clamp(min=0.0)
    overlap = (iw * ih) / torch.minimum(area[:, :, None], area[:, None, :])
    over = overlap > thr

    keep = torch.zeros_like(valid)
    suppressed = ~valid
    for j in range(kmax):
        kj = ~suppressed[:, j]
        keep[:, j] = kj
        suppressed = suppressed | (kj[:, None] & over[:, j, :])
    return order[keep[group, rank]]


# ----------------------------------------------------------------------------------------------
# Crops: area resampling of many boxes at once from integral images.


def _integral(x: torch.Tensor) -> torch.Tensor:
    """Summed-area tables (N, H+1, W+1, 3) of uint8-valued frames (N, H, W, 3); exact integers."""
    n, h, w, c = x.shape
    dtype = torch.int32 if 255 * h * w < 2**31 else torch.int64
    s = torch.zeros((n, h + 1, w + 1, c), dtype=dtype, device=x.device)
    # In place: no frame-sized temporaries (a batch of 16 960x540 frames is 100 MB a copy).
    inner = s[:, 1:, 1:]
    inner.copy_(x)
    inner.cumsum_(1)
    inner.cumsum_(2)
    return s


def _crop_resample(
    sat: torch.Tensor, boxes: torch.Tensor, img: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop each box (truncated to integers and clipped to the frame) and area-resample it to
    size x size, like ``F.interpolate(crop, (size, size), mode='area')`` (adaptive average
    pooling windows), but for all boxes in one gather. Returns the normalised crops
    (K', 3, size, size) for the boxes with a non-empty crop, and that validity mask (K,)."""
    h, w = sat.shape[1] - 1, sat.shape[2] - 1
    t = boxes.trunc().to(torch.int64)
    x0 = t[:, 0].clamp(min=1) - 1
    y0 = t[:, 1].clamp(min=1) - 1
    x1 = t[:, 2].clamp(max=w)
    y1 = t[:, 3].clamp(max=h)
    valid = (x1 > x0) & (y1 > y0)
    x0, y0, x1, y1, img = x0[valid], y0[valid], x1[valid], y1[valid], img[valid]
    kh = (y1 - y0)[:, None]
    kw = (x1 - x0)[:, None]
    i = torch.arange(size, device=boxes.device)[None, :]
    r0 = y0[:, None] + (i * kh) // size  # window of output row i: [r0, r1)
    r1 = y0[:, None] + ((i + 1) * kh + size - 1) // size
    c0 = x0[:, None] + (i * kw) // size
    c1 = x0[:, None] + ((i + 1) * kw + size - 1) // size
    n = img[:, None, None]
    total = (
        sat[n, r1[:, :, None], c1[:, None, :]]
        - sat[n, r0[:, :, None], c1[:, None, :]]
        - sat[n, r1[:, :, None], c0[:, None, :]]
        + sat[n, r0[:, :, None], c0[:, None, :]]
    )  # (K', size, size, 3) exact window sums
    # sum / rows / cols, in that order: bitwise what adaptive average pooling computes
    rows = (r1 - r0).to(torch.float32)[:, :, None, None]
    cols = (c1 - c0).to(torch.float32)[:, None, :, None]
    mean = total.to(torch.float32) / rows / cols
    crops = mean.permute(0, 3, 1, 2)
    return (crops - 127.5) * 0.0078125, valid


def _run_chunked(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    outs = [net(x[i : i + _NET_CHUNK]) for i in range(0, x.shape[0], _NET_CHUNK)]
    return tuple(torch.cat(parts, 0) for parts in zip(*outs))


# ----------------------------------------------------------------------------------------------
# The cascade.


def _cascade(frames: torch.Tensor, nets, thresholds, factor: float, min_face_size: float):
    """frames: uint8 (N, H, W, 3) on the device. Returns (boxes (K,4), probs (K,),
    landmarks (K,5,2), image index (K,)), grouped by image, by descending prob within it."""
    pnet, rnet, onet = nets
    dev = frames.device
    n, h, w, _ = frames.shape
    x = frames.permute(0, 3, 1, 2).to(torch.float32)

    def nothing():
        return (
            torch.zeros((0, 4), device=dev),
            torch.zeros((0,), device=dev),
            torch.zeros((0, 5, 2), device=dev),
            torch.zeros((0,), dtype=torch.long, device=dev),
        )

    # Stage 1: P-Net over the pyramid.
    cand, cand_img = [], []
    for scale in _pyramid(h, w, min_face_size, factor):
        im = F.interpolate(x, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
        reg, prob = pnet((im - 127.5) * 0.0078125)
        face = prob[:, 1]
        hit = face >= thresholds[0]
        where = torch.nonzero(hit)  # (K, 3): image, row, col (row-major, like the reference)
        if where.shape[0] == 0:
            continue
        xy = where[:, 1:].flip(1).to(reg.dtype)  # cell (x, y)
        q1 = ((2 * xy + 1) / scale).floor()
        q2 = ((2 * xy + 12) / scale).floor()
        b = torch.cat([q1, q2, face[hit][:, None], reg.permute(0, 2, 3, 1)[hit]], dim=1)  # (K, 9)
        # Integer coordinates: torchvision's per-image coordinate offset is exact here.
        keep = batched_nms(b[:, :4], b[:, 4], where[:, 0], 0.5)
        cand.append(b[keep])
        cand_img.append(where[keep, 0])
    del x  # the float frames are done with: their memory goes to the crops' tables
    if not cand:
        return nothing()
    b = torch.cat(cand)
    img = torch.cat(cand_img)
    keep = batched_nms(b[:, :4], b[:, 4], img, 0.7)
    b, img = b[keep], img[keep]
    rw = b[:, 2] - b[:, 0]
    rh = b[:, 3] - b[:, 1]
    boxes = torch.stack(
        [b[:, 0] + b[:, 5] * rw, b[:, 1] + b[:, 6] * rh, b[:, 2] + b[:, 7] * rw, b[:, 3] + b[:, 8] * rh], 1
    )
    boxes = _square(boxes)

    # Stage 2: R-Net on 24x24 crops.
    sat = _integral(frames)
    crops, ok = _crop_resample(sat, boxes, img, 24)
    boxes, img = boxes[ok], img[ok]
    if boxes.shape[0] == 0:
        return nothing()
    reg, prob = _run_chunked(rnet, crops)
    score = prob[:, 1]
    passed = score > thresholds[1]
    boxes, score, reg, img = boxes[passed], score[passed], reg[passed], img[passed]
    keep = _nms_per_image(boxes, score, img, 0.7)
    boxes, reg, img = boxes[keep], reg[keep], img[keep]
    boxes = _square(_regress(boxes, reg))

    # Stage 3: O-Net on 48x48 crops.
    crops, ok = _crop_resample(sat, boxes, img, 48)
    boxes, img = boxes[ok], img[ok]
    if boxes.shape[0] == 0:
        return nothing()
    reg, marks, prob = _run_chunked(onet, crops)
    score = prob[:, 1]
    passed = score > thresholds[2]
    boxes, score, reg, marks, img = boxes[passed], score[passed], reg[passed], marks[passed], img[passed]
    bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    px = bw * marks[:, :5] + boxes[:, 0:1] - 1
    py = bh * marks[:, 5:] + boxes[:, 1:2] - 1
    points = torch.stack([px, py], dim=2)  # (K, 5, 2)
    boxes = _regress(boxes, reg)
    keep = _nms_min_per_image(boxes, score, img, 0.7)
    return boxes[keep], score[keep], points[keep], img[keep]


class FaceDetector:
    """Batched MTCNN. ``detect`` takes same-sized uint8 RGB frames and returns one
    ``Faces`` per frame, in input order.

    Thresholds, pyramid factor and minimum face size are the defaults of every ``detect`` call
    and can be overridden per call; ``batch_size`` frames go through the cascade together
    (bounds memory; results do not depend on it beyond float rounding; default 4 on CPU, 32 on
    CUDA). The networks are loaded once per device and process (``load_nets``)."""

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        factor: float = DEFAULT_FACTOR,
        min_face_size: float = DEFAULT_MIN_FACE_SIZE,
        device: Union[str, torch.device] = "cpu",
        batch_size: Optional[int] = None,
    ):
        self.thresholds = _check_thresholds(thresholds)
        self.factor = float(factor)
        self.min_face_size = float(min_face_size)
        self.device = torch.device(device)
        if batch_size is None:
            batch_size = DEFAULT_BATCH_SIZE.get(self.device.type, 4)
        self.batch_size = int(batch_size)
        if not 0 < self.factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if self.min_face_size <= 0:
            raise ValueError(f"min_face_size must be > 0, got {min_face_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.nets = load_nets(self.device)

    def detect(
        self,
        frames: Union[Sequence[np.ndarray], np.ndarray],
        thresholds: Optional[Sequence[float]] = None,
        factor: Optional[float] = None,
        min_face_size: Optional[float] = None,
        batch_size: Optional[int] = None,
    ) -> list[Faces]:
        thresholds = self.thresholds if thresholds is None else _check_thresholds(thresholds)
        factor = self.factor if factor is None else float(factor)
        min_face_size = self.min_face_size if min_face_size is None else float(min_face_size)
        batch_size = self.batch_size if batch_size is None else max(1, int(batch_size))
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")

        if isinstance(frames, np.ndarray):
            if frames.ndim != 4:
                raise ValueError(f"expected frames (N, H, W, 3), got shape {frames.shape}")
            seq: Sequence[np.ndarray] = frames
        else:
            seq = list(frames)
        if len(seq) == 0:
            return []
        shape = seq[0].shape
        for f in seq:
            if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
                raise ValueError(f"expected uint8 RGB frames (H, W, 3), got {f.dtype} {f.shape}")
            if f.shape != shape:
                raise ValueError(f"all frames must have the same size: {f.shape} != {shape}")

        out: list[Faces] = []
        with torch.inference_mode():
            for start in range(0, len(seq), batch_size):
                chunk = seq[start : start + batch_size]
                arr = chunk if isinstance(chunk, np.ndarray) else np.stack(chunk)
                t = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)
                boxes, probs, points, img = _cascade(t, self.nets, thresholds, factor, min_face_size)
                counts = torch.bincount(img, minlength=len(arr)).tolist()
                boxes = boxes.cpu().numpy().astype(np.float32, copy=False)
                probs = probs.cpu().numpy().astype(np.float32, copy=False)
                points = points.cpu().numpy().astype(np.float32, copy=False)
                pos = 0
                for c in counts:  # results are grouped by image, in image order
                    out.append(Faces(boxes[pos : pos + c], probs[pos : pos + c], points[pos : pos + c]))
                    pos += c
        return out

    def faces(self, frames: Sequence[np.ndarray], settings: DetectSettings) -> list[Faces]:
        """The :class:`~dfdc_cli.faces.detectors.Detector` interface: :meth:`detect` with ``settings``."""
        return self.detect(frames, thresholds=settings.thresholds, factor=settings.factor,
                           min_face_size=settings.min_face_size)


def make(device: str = "cpu", batch_size: Optional[int] = None) -> FaceDetector:
    """This module's detector for :func:`dfdc_cli.faces.detectors.load`."""
    return FaceDetector(device=device, batch_size=batch_size)


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, float, float]:
    t = tuple(float(v) for v in thresholds)
    if len(t) != 3:
        raise ValueError(f"thresholds must be three numbers (P-Net, R-Net, O-Net), got {thresholds}")
    return t  # type: ignore[return-value]
