"""`deepfake scan`: verdicts on videos from the ensemble (docs/method.md §5).

Pipeline, per chunk of videos:

1. face tubes extracted with the scan preset (first 100 frames, long side 480, thresholds
   0.8/0.8/0.9, at most 5 faces, the seed's fallbacks) and handed over in memory (3D: every frame
   of the tube, 256x256; 2D: the first 32 crops), as the seed scored them: no H.264 round trip.
   The scan cache (``paths.scan_tubes_dir()``) keeps each video's tube geometry, so a video seen
   before is only decoded and cropped again (or, fully scored, not even decoded). With ``--index``
   the tubes are decoded from the index's MP4s instead;
2. the tubes are grouped by length, so that tubes of several videos go through a member in one
   batch;
3. every member scores every tube: 3D members take the whole tube, centre-cropped to 224 (resized
   to 112 for the 112 members); the member's own ``predict`` applies its input scaling and the
   horizontal-flip TTA (3D) or the per-frame sigmoid median (2D);
4. per member: mean over the video's faces; video: weighted mean over members (equal weights by
   default), clipped to [0.001, 0.999].

A video with no face gets the prior 0.5 with status ``no_face`` and no verdict; a video that cannot
be read gets 0.5 with status ``error`` and the reason. Extraction of the next chunk runs in a
producer thread while the models score the current one; a bounded queue holds it back when the
models are slower, so a large folder's crops are never all in memory.

The arithmetic of steps 3-4 lives in small pure functions (:func:`mean_over_faces`,
:func:`combine_members`, :func:`aggregate_video`, :func:`verdict`) that the tests drive directly.
"""

from __future__ import annotations

import math
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from .errors import UserError
from .runtime import autocast, autocast_dtype, effective_precision, resolve_device
from .index import STATUS_ERROR, STATUS_NO_FACE, STATUS_OK

CLIP_LO, CLIP_HI = 0.001, 0.999
PRIOR = 0.5  # p(fake) of a video with no face or that failed (the seed's rule)
CROP_3D = 224  # 3D members see the centre 224x224 of the 256x256 tube (resized for the 112 members)
FRAMES_2D = 32  # the 2D member sees the first 32 frames of its crops

NO_MODEL_HELP = (
    "no trained model is registered. Get one with `deepfake train ...` (see `deepfake train --help`) "
    "or register a checkpoint with `deepfake models import FILE --as MEMBER`; "
    "`deepfake models list` shows what is registered."
)


# ----------------------------------------------------------------------------------------------
# Results


@dataclass
class FaceScore:
    """One face tube of a video and what each member said about it."""

    tube_id: int
    first_frame: int
    last_frame: int
    n_frames: int
    box: list[int]  # union box in source pixels: x1, y1, x2, y2
    mean_prob: float  # mean detection probability
    members: dict[str, float] = field(default_factory=dict)  # member -> p(fake) of this tube
    p_fake: Optional[float] = None  # weighted mean over members, clipped
    tube_path: str = ""  # the tube MP4 in the scan cache


@dataclass
class VideoScan:
    video: str  # path as given (absolute)
    name: str  # file name (the DFDC key)
    status: str  # ok | no_face | error
    reason: str = ""  # why there is no verdict (no_face / error), or notes
    n_faces: int = 0
    faces: list[FaceScore] = field(default_factory=list)
    members: dict[str, Optional[float]] = field(default_factory=dict)  # member -> mean over faces
    p_fake: float = PRIOR  # the ensemble, clipped; PRIOR when there is no verdict
    p_fake_raw: Optional[float] = None  # the ensemble before clipping
    verdict: Optional[str] = None  # FAKE | REAL | None (no verdict)
    extract_seconds: float = 0.0  # extraction wall time (~0 on a cache hit)
    cached_members: list[str] = field(default_factory=list)  # members whose scores came from the score cache
    label: str = ""  # FAKE | REAL when known (eval)

    @property
    def scanned(self) -> bool:
        return self.status in (STATUS_OK, STATUS_NO_FACE)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["label"]:
            d.pop("label")
        return d


# ----------------------------------------------------------------------------------------------
# Ensemble arithmetic (pure)


def clip_p(p: float) -> float:
    return float(min(max(p, CLIP_LO), CLIP_HI))


def mean_over_faces(scores: Sequence[float]) -> Optional[float]:
    """A member's video score: the mean of its p(fake) over the video's faces (None: no face)."""
    vals = [float(s) for s in scores if s is not None and not math.isnan(s)]
    return float(np.mean(vals)) if vals else None


def combine_members(
    member_scores: Mapping[str, Optional[float]], weights: Optional[Mapping[str, float]] = None
) -> Optional[float]:
    """Weighted mean over the members that gave a score (unclipped); None when none did.

    ``weights`` maps member -> weight (missing members weigh 1; weight 0 leaves a member out).
    """
    num = den = 0.0
    for m, s in member_scores.items():
        if s is None or math.isnan(s):
            continue
        w = 1.0 if weights is None else float(weights.get(m, 1.0))
        num += w * float(s)
        den += w
    return num / den if den > 0 else None


def verdict(p: Optional[float], threshold: float = 0.5) -> Optional[str]:
    """FAKE when p >= threshold, REAL below; None without a score."""
    if p is None:
        return None
    return "FAKE" if p >= threshold else "REAL"


def aggregate_video(
    result: VideoScan,
    face_scores: Mapping[int, Mapping[str, float]],
    members: Sequence[str],
    weights: Optional[Mapping[str, float]] = None,
    threshold: float = 0.5,
) -> VideoScan:
    """Fill a video's per-member, per-face and ensemble figures from per-tube member scores.

    ``face_scores``: tube_id -> {member: p(fake)}; the faces listed in ``result.faces``. A video with
    status no_face/error (or whose faces got no score at all) keeps the prior and no verdict.
    """
    if result.status != STATUS_OK:
        result.members = {m: None for m in members}
        result.p_fake, result.p_fake_raw, result.verdict = PRIOR, None, None
        return result
    for face in result.faces:
        face.members = {m: float(face_scores[face.tube_id][m]) for m in members
                        if m in face_scores.get(face.tube_id, {})}
        p = combine_members(face.members, weights)
        face.p_fake = None if p is None else clip_p(p)
    result.n_faces = len(result.faces)
    result.members = {m: mean_over_faces([f.members[m] for f in result.faces if m in f.members])
                      for m in members}
    missing = [m for m, s in result.members.items() if s is None]
    raw = combine_members(result.members, weights)
    if raw is None:
        result.status = STATUS_ERROR
        result.reason = "no member could score any face tube"
        result.p_fake, result.p_fake_raw, result.verdict = PRIOR, None, None
        return result
    if missing:
        note = f"not scored by {', '.join(missing)}"
        result.reason = f"{result.reason}; {note}" if result.reason else note
    result.p_fake_raw = float(raw)
    result.p_fake = clip_p(raw)
    result.verdict = verdict(result.p_fake, threshold)
    return result


def parse_weights(text: Optional[str], members: Sequence[str]) -> dict[str, float]:
    """``"mc3_112=2,i3d_224=0.5"`` -> weights for ``members`` (unlisted members weigh 1)."""
    weights = {m: 1.0 for m in members}
    if not text:
        return weights
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise UserError(f"--weights: expected MEMBER=WEIGHT, got {part!r}")
        if name not in weights:
            raise UserError(f"--weights: {name!r} is not one of the members in use ({', '.join(members)})")
        try:
            w = float(value)
        except ValueError:
            raise UserError(f"--weights: {value!r} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise UserError(f"--weights: weight of {name} must be >= 0")
        weights[name] = w
    if sum(weights.values()) <= 0:
        raise UserError("--weights: at least one member needs a positive weight")
    return weights


# ----------------------------------------------------------------------------------------------
# Input preparation (torch; CPU or GPU)


def centre_crop(x, size: int):
    """Centre ``size`` x ``size`` window of the last two dims (no-op when already that small)."""
    h, w = x.shape[-2], x.shape[-1]
    if h <= size and w <= size:
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def prepare_3d(tubes, res: int):
    """uint8 tubes (B, T, 256, 256, 3) -> clips (B, 3, T, res, res) for a 3D member.

    Centre crop 224 (the seed's inference crop); for other resolutions the crop is resized by
    :func:`dfdc_cli.augment.resize_frames` (the resize training validates with) and handed over in
    float32, not rounded back to uint8: the seed resized the float crop and normalised it as it
    was. Otherwise the clip stays uint8. A member of resolution >= 256 takes the whole tube.
    """
    from .augment import resize_frames

    x = tubes.permute(0, 4, 1, 2, 3)  # B, 3, T, H, W
    if res < tubes.shape[2]:
        x = centre_crop(x, CROP_3D)
    if x.shape[-2:] == (res, res):
        return x.contiguous()
    return resize_frames(x.float(), res).contiguous()


def prepare_2d(frames, res: int = 256):
    """uint8 2D crops (B, N, 256, 256, 3) -> uint8 (B, 3, N, res, res) (the first 32 frames)."""
    import torch.nn.functional as F
    import torch

    x = frames[:, :FRAMES_2D].permute(0, 4, 1, 2, 3)
    if x.shape[-1] != res or x.shape[-2] != res:
        b, c, t, h, w = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).float()
        y = F.interpolate(y, size=(res, res), mode="bicubic", align_corners=False)
        x = y.round_().clamp_(0, 255).to(torch.uint8).reshape(b, t, c, res, res).permute(0, 2, 1, 3, 4)
    return x.contiguous()


# ----------------------------------------------------------------------------------------------
# Members


@dataclass
class Member:
    """A loaded ensemble member as scan uses it: a name, its kind and resolution, and a scoring
    function taking a uint8 batch (B, 3, T, res, res) on the device and returning p(fake) (B,)."""

    name: str
    kind: str  # "3d" | "2d"
    res: int
    predict: Callable
    model_id: str = ""  # registry id / sha256 prefix, for the machine output
    module: object = None  # the torch module (device moves, channels_last)


def registered_members() -> list[str]:
    """Members with an active (registered) model, in the seed's order (then by name)."""
    from models import store

    return [m for m in store.members() if store.active(m) is not None]


def available_members() -> list[str]:
    """The members scan uses by default: the registered ones; when none is registered, the built-in
    model shipped with the package (if any). A registered model always takes precedence."""
    from models import builtin

    names = registered_members()
    if names:
        return names
    b = builtin.member()
    return [b] if b else []


def is_builtin(m: "Member") -> bool:
    return str(m.model_id).startswith("builtin-")


def load_member(name: str, device) -> Member:
    """Load a registered member's active model once, on ``device``, in eval mode."""
    import torch

    from models import store
    from models.specs import get_spec

    try:
        spec = get_spec(name)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    if store.active(spec.name) is None:
        from models import builtin

        if builtin.member() == spec.name:
            return member_from_model(builtin.load(device=device))
        raise UserError(f"member {spec.name!r} has no registered model. " + NO_MODEL_HELP)
    model = store.load(spec.name, device=device)
    if torch.device(device).type == "cuda" and spec.kind == "3d":
        try:  # cuDNN's fast 3D convolutions in fp16 want channels-last
            model = model.to(memory_format=torch.channels_last_3d)
        except RuntimeError:
            pass
    return member_from_model(model)


def member_from_model(model) -> Member:
    """Wrap a :class:`models.registry.MemberModel` (eval mode) for the scanner."""
    model.eval()
    return Member(name=model.spec.name, kind=model.spec.kind, res=model.spec.res, predict=model.predict,
                  model_id=getattr(model, "model_id", "") or "", module=model)


# ----------------------------------------------------------------------------------------------
# Tubes


@dataclass
class LoadedTube:
    """One face tube's pixels, ready for the members."""

    video_idx: int  # index into the chunk's video list
    tube_id: int
    frames: Optional[np.ndarray]  # uint8 (T, 256, 256, 3): the 3D input
    frames2d: Optional[np.ndarray]  # uint8 (N<=32, 256, 256, 3): the 2D input, or None


def read_tube(row: Mapping, need_3d: bool = True, need_2d: bool = False) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Decode a tube MP4 (and its 2D crops when asked and present)."""
    from .video import read_video

    f3 = read_video(row["tube_path"]) if need_3d else None
    f2 = None
    p2 = str(row.get("tube2d_path", "") or "")
    if need_2d and p2 and Path(p2).exists():
        f2 = read_video(p2, count=FRAMES_2D)
    return f3, f2


def batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by equal length (whole tubes are never padded or cut), in batches of at
    most ``batch_size``, longest groups first."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    out = []
    for n in sorted(groups, reverse=True):
        idx = groups[n]
        out.extend(idx[k : k + batch_size] for k in range(0, len(idx), batch_size))
    return out


# ----------------------------------------------------------------------------------------------
# The scanner


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The inputs of ``paths`` (:func:`dfdc_cli.inputs.walk`, extract's walker): files as given,
    folders searched recursively for video files (sorted). Missing paths and unreadable folders
    are kept (they become per-video errors: the extractor, given them again, says why)."""
    from .inputs import walk

    return [f.path for f in walk(paths)]


@dataclass
class Extracted:
    """What the extraction stage gives the scorer for one video: its record and tube rows."""

    video: str
    name: str
    status: str
    reason: str
    seconds: float
    tubes: list[dict]
    label: str = ""  # FAKE | REAL when the index knows it
    pixels: Optional[dict] = None  # tube id -> (3D frames, 2D crops or None), when extracted in memory
    key: str = ""  # score-cache key (video content + scan settings); "" -> keyed by the tube files


def _extracted(vrec, trecs) -> Extracted:
    """An extraction record (dataclass or dict) and its tube rows -> :class:`Extracted`."""
    v = asdict(vrec) if hasattr(vrec, "__dataclass_fields__") else dict(vrec)
    ts = [asdict(t) if hasattr(t, "__dataclass_fields__") else dict(t) for t in trecs]
    ts.sort(key=lambda r: int(r["tube_id"]))
    status = str(v.get("status") or STATUS_ERROR)
    if status == STATUS_OK and not ts:
        status = STATUS_NO_FACE
    reason = str(v.get("reason") or "")
    if status == STATUS_NO_FACE and not reason:
        reason = "no face found"
    name = str(v.get("name") or Path(str(v.get("video", ""))).name)
    return Extracted(str(v.get("video", "")), name, status, reason, float(v.get("seconds") or 0.0), ts,
                     str(v.get("label") or "").upper())


def index_items(index_dir: str | Path) -> list[Extracted]:
    """The scorable units of a `deepfake extract` index, without extracting anything: one per
    source video (with its status, tubes and label), then one per self-blended copy (tubes named
    ``<stem>_sbi<seed>.mp4``: they share the real video's path but are FAKE items of their own)."""
    from .index import has_index, read_tubes, read_videos, resolve_index

    root = resolve_index(index_dir)
    if not has_index(root):
        raise UserError(f"--index {root}: no tube index there (videos.csv / tubes.csv); run `deepfake extract` first")
    try:
        videos = read_videos(root).to_dict("records")
        tubes = read_tubes(root).to_dict("records")
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds on a damaged table
        raise UserError(f"--index {root}: the index tables cannot be read ({exc})") from None
    groups: dict[tuple[str, str], list[dict]] = {}
    for t in tubes:
        groups.setdefault((str(t["video"]), str(t["name"])), []).append(t)
    out = []
    for v in videos:
        out.append(_extracted(v, groups.pop((str(v["video"]), str(v["name"])), [])))
    for (video, name), ts in groups.items():
        out.append(_extracted({"video": video, "name": name, "status": STATUS_OK, "label": ts[0].get("label", "")}, ts))
    return out


def select_items(items: Sequence[Extracted], paths: Sequence[Path], index_dir: str | Path) -> list[Extracted]:
    """The index items of the given video files (the real video's own item, not its self-blends);
    a file the index does not hold becomes an error item that says so."""
    by_key = {(e.video, e.name): e for e in items}
    out = []
    for p in paths:
        e = by_key.get((str(p), p.name))
        out.append(e if e is not None else Extracted(str(p), p.name, STATUS_ERROR, f"not in the index {index_dir}", 0.0, []))
    return out


def items_extractor(items: Sequence[Extracted]) -> Callable:
    """A :class:`Scanner` extractor handing over ready items (an index) in order."""

    def extractor(paths, device, workers, on_video) -> None:
        for i, e in enumerate(items):
            on_video(i, e)

    return extractor


def video_key(entry_name: str) -> str:
    """Score-cache key of a video scanned in memory: its store entry's name, i.e. its content's
    sha256 and the extraction settings' key (which include the extractor's version)."""
    import hashlib

    return hashlib.sha256(f"video:{entry_name}".encode()).hexdigest()[:32]


def stream_extract(paths: Sequence[Path], device: str, workers: Optional[int],
                   on_video: Callable[[int, Extracted], None], keep_tubes: bool = False,
                   need_pixels: Optional[Callable[[str, Sequence[int]], bool]] = None) -> None:
    """Face tubes of ``paths``, extracted with the scan preset, handed over in memory; calls
    ``on_video(i, extracted)`` as each video is done (in completion order, from this thread), so
    the models start on the first videos while the others are extracted.

    The tubes' pixels go straight to the members (:attr:`Extracted.pixels`): no H.264 round trip.
    What is kept in the scan cache (``paths.scan_tubes_dir()``) is each video's tube geometry and
    tracks, so a video seen before is only decoded and cropped again, not detected, and not even
    decoded when ``need_pixels(key, tube_ids)`` says every member's scores of it are cached.
    ``keep_tubes`` also writes the tube MP4s there (to look at them). The cache's index tables
    are kept up to date as the videos are done (:func:`dfdc_cli.extract.iter_extract`).

    ``paths`` are files (:func:`expand_paths`): the extractor's inputs are the same, one to one, so
    its input index is the position in ``paths``.
    """
    import contextlib

    from . import extract as X
    from .paths import scan_tubes_dir
    from .ui import warn

    def wants(_j: int, res: dict) -> bool:
        if need_pixels is None:
            return True
        return need_pixels(video_key(Path(res["entry"]).name), [int(t["tube_id"]) for t in res["tubes"]])

    run = X.iter_extract([str(p) for p in paths], scan_tubes_dir(), X.PRESETS["scan"], device=device,
                         workers=workers, progress=False, quiet=True,
                         mode=X.MEMORY_AND_FILES if keep_tubes else X.MEMORY, need_pixels=wants)
    handed = 0
    try:
        with contextlib.closing(run):
            for done in run:
                handed += 1
                e = _extracted(done.video, done.tubes)
                e.pixels = done.pixels
                e.key = video_key(done.video.key) if done.video.key else ""
                on_video(done.index, e)
    except OSError as exc:
        # Past the last video only the index merge is left; scan never reads that index (the
        # store entries are the cache), so a failure to write it costs no verdict.
        if handed < len(paths):
            raise
        warn(f"the scan cache's index was not updated: {exc}")


class _Stop(Exception):
    """Raised inside the extraction callback when the consumer has gone away."""


class Scanner:
    """Loads the members once and scans videos in chunks, extraction overlapping the models.

    ``members`` may be names (loaded from the registry) or ready :class:`Member` objects (tests,
    benchmarks). ``extractor`` replaces :func:`stream_extract` (an existing index, tests): it is
    called as ``extractor(paths, device, workers, on_video)`` and calls ``on_video(i, Extracted)``
    per video.

    ``keep_tubes``: the default extractor also writes the tube MP4s into the scan cache (the
    members score the pixels in memory either way).

    ``score_dir``: a :class:`~dfdc_cli.scorecache.ScoreCache` root. Member scores found there are
    reused (unless ``reuse_scores`` is False) and new ones stored, so an interrupted scan resumes
    where it stopped and registering one more member costs only that member's work. Members
    without a model id (ready objects in tests) are never cached.
    """

    def __init__(
        self,
        members: Optional[Sequence] = None,
        weights: Optional[Mapping[str, float]] = None,
        threshold: float = 0.5,
        device: Optional[str] = None,
        workers: Optional[int] = None,
        batch_size: int = 8,
        chunk_size: Optional[int] = None,
        precision: str = "auto",
        extractor: Optional[Callable] = None,
        score_dir: Optional[str | Path] = None,
        reuse_scores: bool = True,
        keep_tubes: bool = False,
    ):
        import functools

        import torch

        self.device = resolve_device(device)
        self.threshold = float(threshold)
        self.workers = workers
        self.batch_size = max(1, int(batch_size))
        on_gpu = self.device.startswith("cuda")
        self.chunk_size = chunk_size or (16 if on_gpu else 4)
        self.extractor = extractor or functools.partial(stream_extract, keep_tubes=keep_tubes,
                                                        need_pixels=self._needs_pixels)
        precision = effective_precision(self.device, precision)
        self.amp_dtype = autocast_dtype(self.device, precision)
        self.score_cache = None
        if score_dir is not None:
            from .scorecache import ScoreCache, numeric_mode

            self.score_cache = ScoreCache(score_dir, numeric_mode(self.device, precision))
        self.reuse_scores = bool(reuse_scores)
        if on_gpu:
            torch.backends.cudnn.benchmark = True
        if members is None:
            names = available_members()
            if not names:
                raise UserError(NO_MODEL_HELP)
            members = names
        loaded = []
        for m in members:
            loaded.append(m if isinstance(m, Member) else load_member(str(m), self.device))
        if not loaded:
            raise UserError(NO_MODEL_HELP)
        self.members: list[Member] = loaded
        self.names = [m.name for m in loaded]
        if len(set(self.names)) != len(self.names):
            raise UserError("a member is listed twice")
        self.weights = dict(weights) if weights else {m: 1.0 for m in self.names}

    # -- scoring ------------------------------------------------------------------------------
    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def score_tubes(self, tubes: Sequence[LoadedTube], on_device: Optional[dict] = None,
                    need: Optional[Sequence[set[str]]] = None) -> list[dict[str, float]]:
        """p(fake) of every member for every tube: one dict per tube (member -> p).

        Tubes of equal length are batched together; each group's pixels go to the device once and
        serve every member that needs them. ``need`` (optional): per tube, the members to run
        (the others' scores came from the score cache). ``on_device`` (optional) caches the
        device tensors between calls (the benchmark's models-only ceiling).
        """
        import torch

        out: list[dict[str, float]] = [dict() for _ in tubes]
        group_memo: dict[tuple, list[list[int]]] = {}

        def groups_for(m: Member) -> list[list[int]]:
            def pixels(t: LoadedTube):
                return t.frames if m.kind == "3d" else t.frames2d

            idx = tuple(i for i, t in enumerate(tubes)
                        if pixels(t) is not None and (need is None or m.name in need[i]))
            key = (m.kind, idx)
            if key not in group_memo:  # members of a kind needing the same tubes share the batches
                lengths = [pixels(tubes[i]).shape[0] for i in idx]
                group_memo[key] = [[idx[j] for j in g] for g in batches_by_length(lengths, self.batch_size)]
            return group_memo[key]

        cache = on_device if on_device is not None else {}
        non_blocking = self.device.startswith("cuda")

        def to_device(kind: str, g: list[int]):
            key = (kind, tuple(g))
            if key not in cache:
                arr = np.stack([tubes[i].frames if kind == "3d" else tubes[i].frames2d for i in g])
                t = torch.from_numpy(arr)
                if non_blocking:
                    t = t.pin_memory()
                cache[key] = t.to(self.device, non_blocking=non_blocking)
            return cache[key]

        def run(m: Member, x) -> None:
            x = prepare_3d(x, m.res) if m.kind == "3d" else prepare_2d(x, m.res)
            if m.kind == "3d" and x.is_cuda:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            p = torch.as_tensor(m.predict(x)).float().reshape(-1).cpu().numpy()
            if p.shape[0] != x.shape[0]:
                raise RuntimeError(f"{m.name}: predict returned {p.shape[0]} scores for {x.shape[0]} clips")
            return p

        def run_split(m: Member, x, g: list[int]) -> None:
            """Score a batch; out of device memory, halve it (a single tube that does not fit is
            left unscored by this member, and the video says so)."""
            try:
                p = run(m, x)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if len(g) == 1:
                    from .ui import warn

                    warn(f"{m.name}: a tube of {x.shape[1]} frames does not fit in device memory; skipped")
                    return
                h = len(g) // 2
                run_split(m, x[:h], g[:h])
                run_split(m, x[h:], g[h:])
                return
            for i, v in zip(g, p):
                out[i][m.name] = float(v)

        with torch.inference_mode(), self._autocast():
            for m in self.members:
                for g in groups_for(m):
                    run_split(m, to_device(m.kind, g), g)
        return out

    # -- the pipeline ---------------------------------------------------------------------------
    def load_tubes(self, extracted: Sequence[Extracted]) -> tuple[list[LoadedTube], list[str]]:
        """Decode the tubes of a chunk (threads). Returns the tubes and, per video, an error
        message ('' when fine) for tubes that could not be read."""
        futures = self._submit_tubes(extracted)
        return self._collect_tubes(extracted, futures)

    def _pool(self) -> ThreadPoolExecutor:
        if getattr(self, "_decode_pool", None) is None:
            self._decode_pool = ThreadPoolExecutor(max(1, min(8, self.workers or 4)), thread_name_prefix="tube-read")
        return self._decode_pool

    def _submit_tubes(self, extracted: Sequence[Extracted], cached: Optional[Sequence[Mapping]] = None) -> list:
        """Start reading the tubes of the videos that some member still has to score."""

        def work(vi, row, need_3d, need_2d):
            try:
                f3, f2 = read_tube(row, need_3d, need_2d)
                return LoadedTube(vi, int(row["tube_id"]), f3, f2), ""
            except Exception as exc:  # noqa: BLE001 - recorded per video
                return None, f"tube {row.get('tube_id')}: {exc}"

        from concurrent.futures import Future

        def ready(vi, row, need_3d, need_2d) -> Future:
            """A tube extracted in memory: its pixels, as they are."""
            f: Future = Future()
            tid = int(row["tube_id"])
            px = e.pixels.get(tid) if e.pixels is not None else None
            if px is None:
                f.set_result((None, f"tube {tid}: its pixels were not handed over"))
            else:
                f.set_result((LoadedTube(vi, tid, px[0] if need_3d else None, px[1] if need_2d else None), ""))
            return f

        futures = []
        for vi, e in enumerate(extracted):
            if e.status != STATUS_OK:
                continue
            todo = [m for m in self.members if cached is None or m.name not in cached[vi]]
            if not todo:
                continue
            need_3d = any(m.kind == "3d" for m in todo)
            need_2d = any(m.kind == "2d" for m in todo)
            for row in e.tubes:
                if e.pixels is not None or not row.get("tube_path"):
                    futures.append((vi, ready(vi, row, need_3d, need_2d)))
                else:
                    futures.append((vi, self._pool().submit(work, vi, row, need_3d, need_2d)))
            e.pixels = None  # the LoadedTubes hold them now; freed with the chunk
        return futures

    # -- the score cache ------------------------------------------------------------------------
    @staticmethod
    def _tube_files(e: Extracted) -> list[str]:
        if e.key:  # scanned in memory: the entry names the video
            return [e.video]
        return [str(p) for r in e.tubes for p in (r.get("tube_path"), r.get("tube2d_path")) if p]

    def _cache_keys(self, extracted: Sequence[Extracted]) -> list[Optional[str]]:
        """Per video: its key in the score cache. In memory: the video's content and the scan
        settings (:func:`video_key`); tubes read from files (an extract index): those files."""
        from .scorecache import tube_set_key

        if self.score_cache is None:
            return [None] * len(extracted)
        return [(e.key or tube_set_key(self._tube_files(e))) if e.status == STATUS_OK and e.tubes else None
                for e in extracted]

    def _needs_pixels(self, key: str, tube_ids: Sequence[int]) -> bool:
        """Whether some member still has to score this video (the extractor skips decoding it
        otherwise). Called from the extraction thread."""
        from .scorecache import member_key

        if self.score_cache is None or not self.reuse_scores:
            return True
        stored = self.score_cache.get(key)
        ids = {int(t) for t in tube_ids}
        return any(not m.model_id or set(stored.get(member_key(m.name, m.model_id)) or ()) != ids
                   for m in self.members)

    def _cached_scores(self, extracted: Sequence[Extracted], keys: Sequence[Optional[str]]) -> list[dict]:
        """Per video: member -> {tube id: p} for the members the score cache already has in full."""
        from .scorecache import member_key

        out: list[dict] = [dict() for _ in extracted]
        if self.score_cache is None or not self.reuse_scores:
            return out
        for vi, (e, key) in enumerate(zip(extracted, keys)):
            if key is None:
                continue
            stored = self.score_cache.get(key)
            ids = {int(r["tube_id"]) for r in e.tubes}
            for m in self.members:
                got = stored.get(member_key(m.name, m.model_id)) if m.model_id else None
                if got is not None and set(got) == ids:
                    out[vi][m.name] = got
        self._flush_cache_warnings()
        return out

    def _store_scores(self, extracted: Sequence[Extracted], keys: Sequence[Optional[str]], cached: Sequence[Mapping],
                      tubes: Sequence[LoadedTube], errors: Sequence[str], scores: Sequence[Mapping[str, float]]) -> None:
        """Store each member's scores of each video whose every tube it scored."""
        from .scorecache import member_key

        if self.score_cache is None:
            return
        per_video: list[dict[int, Mapping[str, float]]] = [dict() for _ in extracted]
        for t, sc in zip(tubes, scores):
            per_video[t.video_idx][t.tube_id] = sc
        for vi, (e, key) in enumerate(zip(extracted, keys)):
            if key is None or errors[vi]:
                continue
            ids = {int(r["tube_id"]) for r in e.tubes}
            new = {}
            for m in self.members:
                if not m.model_id or m.name in cached[vi]:
                    continue
                got = {tid: sc[m.name] for tid, sc in per_video[vi].items() if m.name in sc}
                if set(got) == ids:
                    new[member_key(m.name, m.model_id)] = got
            if not new:
                continue
            try:
                self.score_cache.put(key, new, self._tube_files(e))
            except OSError as exc:
                from .ui import warn

                warn(f"score cache not written ({exc}); scores of this run will not be reused")
                self.score_cache = None
                return

    def _flush_cache_warnings(self) -> None:
        if self.score_cache is not None and self.score_cache.warnings:
            from .ui import warn

            for w in self.score_cache.warnings:
                warn(w)
            self.score_cache.warnings.clear()

    @staticmethod
    def _collect_tubes(extracted: Sequence[Extracted], futures: list) -> tuple[list[LoadedTube], list[str]]:
        errors = [""] * len(extracted)
        tubes: list[LoadedTube] = []
        for vi, fut in futures:
            tube, err = fut.result()
            if tube is not None:
                tubes.append(tube)
            elif not errors[vi]:
                errors[vi] = err
        return tubes, errors

    def _results_for(self, extracted: Sequence[Extracted], tubes: Sequence[LoadedTube],
                     errors: Sequence[str], scores: Sequence[Mapping[str, float]],
                     cached: Optional[Sequence[Mapping]] = None) -> list[VideoScan]:
        per_video: list[dict[int, dict[str, float]]] = [dict() for _ in extracted]
        for t, s in zip(tubes, scores):
            per_video[t.video_idx][t.tube_id] = dict(s)
        for vi, from_cache in enumerate(cached or []):
            for m, tube_scores in from_cache.items():
                for tid, p in tube_scores.items():
                    per_video[vi].setdefault(int(tid), {})[m] = float(p)
        out = []
        for vi, e in enumerate(extracted):
            r = VideoScan(video=e.video, name=e.name, status=e.status, reason=e.reason, extract_seconds=e.seconds,
                          cached_members=[m for m in self.names if cached and m in cached[vi]])
            if e.status == STATUS_OK:
                for row in e.tubes:
                    if int(row["tube_id"]) not in per_video[vi]:
                        continue
                    r.faces.append(FaceScore(
                        tube_id=int(row["tube_id"]), first_frame=int(row["first_frame"]),
                        last_frame=int(row["last_frame"]), n_frames=int(row["n_frames"]),
                        box=[int(row[k]) for k in ("x1", "y1", "x2", "y2")],
                        mean_prob=float(row.get("mean_prob", float("nan"))),
                        tube_path=str(row.get("tube_path", "")),
                    ))
                if not r.faces:
                    r.status = STATUS_ERROR
                    r.reason = errors[vi] or "no face tube could be read"
                elif errors[vi]:
                    r.reason = f"skipped {errors[vi]}"
            aggregate_video(r, per_video[vi], self.names, self.weights, self.threshold)
            out.append(r)
        return out

    def scan_iter(self, paths: Sequence[str | Path]) -> Iterator[VideoScan]:
        """Scan videos; yields one :class:`VideoScan` per path, in the given order.

        A producer thread runs the extraction (worker processes, one pool for the run) and hands
        over each video as it is done; the models score the videos ready so far in one chunk
        (up to ``chunk_size`` videos, tubes batched across them) while extraction goes on
        meanwhile (and, with --index, the tubes of the next chunk are read from disk).
        """
        paths = [Path(p) for p in paths]
        n = len(paths)
        if n == 0:
            return
        # Bounded: videos extracted in memory carry their tubes' pixels (up to ~100 MB each), so
        # the extraction waits for the models rather than piling a large folder's crops up.
        q: queue.Queue = queue.Queue(maxsize=max(2, self.chunk_size))
        stop = threading.Event()
        DONE = object()

        def on_video(i: int, e: Extracted) -> None:
            while True:
                if stop.is_set():
                    raise _Stop()
                try:
                    q.put((i, e), timeout=0.2)
                    return
                except queue.Full:
                    continue

        def produce():
            try:
                self.extractor(paths, self.device, self.workers, on_video)
            except _Stop:
                pass
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                put_last(("error", exc))
            finally:
                put_last(DONE)

        def put_last(item) -> None:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue

        th = threading.Thread(target=produce, name="scan-extract", daemon=True)
        th.start()
        finished = False

        def take(block: bool) -> list[tuple[int, Extracted]]:
            nonlocal finished
            items: list = []
            while len(items) < self.chunk_size and not finished:
                try:
                    item = q.get(block=block and not items)
                except queue.Empty:
                    break
                if item is DONE:
                    finished = True
                    break
                if item[0] == "error":
                    raise item[1]
                items.append(item)
            return items

        def start(items):
            ex = [e for _, e in items]
            keys = self._cache_keys(ex)
            cached = self._cached_scores(ex, keys)
            return items, keys, cached, self._submit_tubes(ex, cached)

        results: list[Optional[VideoScan]] = [None] * n
        emitted = 0
        try:
            cur = start(take(block=True))
            while cur[0]:
                nxt_items = take(block=False)
                nxt = start(nxt_items) if nxt_items else None
                items, keys, cached, futures = cur
                ex = [e for _, e in items]
                tubes, errors = self._collect_tubes(ex, futures)
                need = [{m.name for m in self.members if m.name not in cached[t.video_idx]} for t in tubes]
                scores = self.score_tubes(tubes, need=need)
                self._store_scores(ex, keys, cached, tubes, errors, scores)
                for (i, _), r in zip(items, self._results_for(ex, tubes, errors, scores, cached)):
                    if r.video == "" or not r.video:
                        r.video = str(paths[i])
                    results[i] = r
                while emitted < n and results[emitted] is not None:
                    yield results[emitted]
                    emitted += 1
                cur = nxt if nxt is not None else start(take(block=True))
            for i in range(emitted, n):  # anything the extractor never reported
                r = results[i] or VideoScan(video=str(paths[i]), name=paths[i].name, status=STATUS_ERROR,
                                            reason="extraction gave no result")
                if results[i] is None:
                    aggregate_video(r, {}, self.names, self.weights, self.threshold)
                yield r
        finally:
            stop.set()

    def scan(self, paths: Sequence[str | Path], on_result: Optional[Callable[[VideoScan], None]] = None) -> list[VideoScan]:
        out = []
        for r in self.scan_iter(paths):
            out.append(r)
            if on_result is not None:
                on_result(r)
        return out

    def judged_by(self) -> str:
        """One line on which model(s) gave the verdicts; the built-in one points to its model card."""
        from models import builtin

        parts = []
        for m in self.members:
            if is_builtin(m):
                parts.append(f"the built-in model {m.name} ({m.model_id}), a baseline trained here on public "
                             f"real videos with self-blended fakes; model card: {builtin.CARD}")
            else:
                parts.append(f"{m.name} ({m.model_id or 'unregistered'})")
        return "judged by " + "; ".join(parts)

    def describe(self) -> dict:
        from models import builtin

        out = {
            "members": self.names,
            "weights": {m: self.weights.get(m, 1.0) for m in self.names},
            "models": {m.name: m.model_id for m in self.members},
            "threshold": self.threshold,
            "clip": [CLIP_LO, CLIP_HI],
            "prior": PRIOR,
            "device": self.device,
            "judged_by": self.judged_by(),
            "builtin": any(is_builtin(m) for m in self.members),
        }
        if out["builtin"]:
            out["model_card"] = builtin.CARD
        return out


# ----------------------------------------------------------------------------------------------
# Machine output


def to_json(results: Sequence[VideoScan], meta: Mapping) -> dict:
    from . import __version__

    return {"tool": f"deepfake {__version__}", **dict(meta), "videos": [r.to_dict() for r in results]}


def submission_rows(results: Sequence[VideoScan]) -> list[tuple[str, float]]:
    """DFDC submission: (filename, p(fake)); the prior 0.5 for videos without a verdict."""
    return [(r.name, float(r.p_fake)) for r in results]


def write_submission(path: str | Path, results: Sequence[VideoScan]) -> None:
    from .atomic import write_text

    lines = ["filename,label"] + [f"{n},{p:.6f}" for n, p in submission_rows(results)]
    write_text(path, "\n".join(lines) + "\n")
