"""A scan's report folder (`scan --report DIR`, `deepfake report scan.json --out DIR`): HTML and PNG
that open from disk, no network, no JavaScript.

Built from the scan's JSON document alone (:func:`dfdc_cli.scan.results.to_json`: per video, window,
face, member and frame), plus the videos themselves for the pictures:

- ``index.html``: one row per video, ordered by p(fake) (videos without a verdict last), with a
  thumbnail, verdict, p(fake), faces and the note;
- ``v/<n>-<name>.html`` per video: each face tube's frame strip with its boxes and its p(fake) per
  member; the timeline of p(fake) over the video (the frame models' per-frame scores, each
  member's per-tube score over the tube's span, the windows read, the verdict threshold and the
  UNSURE band when the result carries one); Grad-CAM maps (:mod:`dfdc_cli.report.saliency`) beside the
  plain crops for the highest-scoring frames of the frame models and the frames that weighed most
  for the 3D members; the technical facts (models and ids, extraction settings, frames read).

Pictures are thumbnails (strips 128 px high, crops at the member's resolution up to 160 px), so a
report stays small: the README gives MB per video. A video that is no longer where the scan
found it gets its page without pictures, saying so. Heatmaps need the members that judged: the
scanner's (``scan --report``) or those registered with the same model ids (``deepfake report``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from dfdc_cli.atomic import atomic_dir
from dfdc_cli.errors import UserError, VideoError
from dfdc_cli.faces.extract.crops import frame_2d, square_tube_frame, tube_square
from dfdc_cli.faces.index import TUBE_SIZE, Track
from dfdc_cli.faces.tubes import box_2d_crops
from dfdc_cli.report.html import HEAT_SIZE, index_page, short_label, unsure_band, video_page
from dfdc_cli.report.saliency import clip_cam, frame_cam, overlay, top_frames
from dfdc_cli.scan.members import load_member
from dfdc_cli.ui import progress, warn
from dfdc_models.calibration import Calibration

MARKER = ".deepfake-report"  # a folder holding it is a report this tool may replace
STRIP_FRAMES = 6
STRIP_HEIGHT = 128
THUMB_WIDTH = 192
HEAT_FRAMES = 3  # heatmaps per face and member


# ----------------------------------------------------------------------------------------------
# Inputs and the output folder


def check_out(path: str | Path) -> Path:
    """The report folder, checked before any work: a new or empty folder, or an earlier report
    (which is replaced); never a file or a folder holding anything else."""
    p = Path(path).expanduser().resolve()
    if p.exists() and not p.is_dir():
        raise UserError(f"--report {p}: is a file, not a folder")
    if p.is_dir() and any(p.iterdir()) and not (p / MARKER).is_file():
        raise UserError(f"--report {p}: the folder exists and is not a deepfake report; give a new folder")
    parent = p.parent
    if not parent.is_dir():
        raise UserError(f"--report {p}: its parent folder {parent} does not exist")
    return p


def load_scan_json(path: str | Path) -> dict:
    """A scan's ``--json`` document; a UserError naming the file when it is not one."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read ({exc})") from None
    except ValueError as exc:
        raise UserError(f"{p}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("videos"), list) or "members" not in doc:
        raise UserError(f"{p}: not the --json output of `deepfake scan` (no 'videos' and 'members')")
    return doc


def slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "video"
    return s[:60]


def ordered(videos: Sequence[Mapping]) -> list[int]:
    """Video indices by p(fake), highest first; videos without a verdict after them (no face, then
    errors), each group by name."""
    def key(i):
        v = videos[i]
        group = 0 if v.get("verdict") else (1 if v.get("status") == "no_face" else 2)
        return (group, -float(v.get("p_fake") or 0.0) if group == 0 else 0.0, str(v.get("name", "")))

    return sorted(range(len(videos)), key=key)


# ----------------------------------------------------------------------------------------------
# Pictures


def _png(path: Path, rgb: np.ndarray) -> None:
    """An RGB picture as a 256-colour PNG: a third of the full-colour file, and thumbnails do not
    need more (what keeps a report of many videos small)."""
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def _box_at(face: Mapping, frame: int) -> Optional[list[int]]:
    """The face's box at ``frame``: the nearest sampled one (every 10th frame)."""
    boxes = face.get("boxes") or []
    if not boxes:
        return list(face.get("box") or []) or None
    return list(min(boxes, key=lambda b: abs(int(b[0]) - frame))[1:5])


def strip_frames(face: Mapping, n: int = STRIP_FRAMES) -> list[int]:
    first, last = int(face["first_frame"]), int(face["last_frame"])
    if last <= first:
        return [first]
    return sorted({int(round(first + k * (last - first) / (n - 1))) for k in range(n)})


def _scaled_with_box(frames, i: int, box, height: int, colour=(255, 64, 64)) -> np.ndarray:
    w = max(2, int(round(frames.width * height / frames.height)))
    img = np.ascontiguousarray(frames.rgb_resized(i, w, height))
    if box:
        s = height / frames.height
        x1, y1, x2, y2 = (int(round(v * s)) for v in box)
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
    return img


def _crop_2d_box(face: Mapping, k: int) -> Optional[np.ndarray]:
    """The 2D crop box of tube frame ``k`` as extracted (from the track in the scan cache), or
    one like it from the sampled boxes when the track is gone."""
    tp = face.get("track_path") or ""
    if tp:
        try:
            boxes = box_2d_crops(Track.load(tp), n=k + 1)
            if len(boxes) > k:
                return boxes[k]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    b = _box_at(face, int(face["first_frame"]) + k)
    if not b:
        return None
    cx, cy, side = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, 1.2 * max(b[2] - b[0], b[3] - b[1])
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


class _Needs:
    """What a video's pictures need from its frames, gathered in one decode."""

    def __init__(self):
        self.strip: dict[int, list] = {}  # frame -> [(face idx, box)]
        self.thumb: Optional[tuple[int, Optional[list]]] = None
        self.crops_2d: dict[tuple[int, int], np.ndarray] = {}  # (face idx, k) -> crop box
        self.tubes_3d: dict[int, tuple[int, int, list]] = {}  # face idx -> (first, last, box)

    def last(self) -> int:
        frames = list(self.strip) + ([self.thumb[0]] if self.thumb else [])
        for (fi, k) in self.crops_2d:
            frames.append(self._first[fi] + k)
        frames += [t[1] for t in self.tubes_3d.values()]
        return max(frames, default=0)


def _decode_needed(path: str, needs: _Needs, faces: Sequence[Mapping]) -> dict:
    """One decode of the video up to the last frame needed: strip images, the thumbnail, 2D crops
    and 3D tubes, as extracted (:mod:`dfdc_cli.faces.extract.crops`)."""
    from dfdc_cli.faces.video import decode_iter

    needs._first = {fi: int(f["first_frame"]) for fi, f in enumerate(faces)}
    end = needs.last()
    got: dict = {"strip": {}, "thumb": None, "crops_2d": {}, "tubes_3d": {}}
    tubes = {fi: (np.empty((last - first + 1, TUBE_SIZE, TUBE_SIZE, 3), np.uint8), tube_square(box))
             for fi, (first, last, box) in needs.tubes_3d.items()}
    by_frame_2d: dict[int, list] = {}
    for (fi, k), box in needs.crops_2d.items():
        by_frame_2d.setdefault(needs._first[fi] + k, []).append((fi, k, box))
    frames = None
    for frames in decode_iter(path, max_frames=end + 1):
        i = len(frames) - 1
        if i in needs.strip:
            got["strip"][i] = _scaled_with_box(frames, i, None, STRIP_HEIGHT), frames.height
        if needs.thumb and i == needs.thumb[0]:
            got["thumb"] = _scaled_with_box(frames, i, needs.thumb[1], int(round(THUMB_WIDTH * frames.height / frames.width)))
        for fi, k, box in by_frame_2d.get(i, ()):
            got["crops_2d"][(fi, k)] = frame_2d(frames, i, box, TUBE_SIZE)
        for fi, (first, last, box) in needs.tubes_3d.items():
            if first <= i <= last:
                tubes[fi][0][i - first] = square_tube_frame(frames, i, tuple(int(v) for v in box), TUBE_SIZE, tubes[fi][1])
        frames.drop_before(i + 1)
    got["tubes_3d"] = {fi: t[0] for fi, t in tubes.items()}
    got["height"] = frames.height if frames is not None else 0
    return got


def _draw_strip(face_idx: int, face: Mapping, got: dict) -> Optional[np.ndarray]:
    tiles = []
    for i in strip_frames(face):
        if i not in got["strip"]:
            continue
        img, src_h = got["strip"][i]
        img = img.copy()
        b = _box_at(face, i)
        if b:
            s = STRIP_HEIGHT / src_h
            cv2.rectangle(img, (int(b[0] * s), int(b[1] * s)), (int(b[2] * s), int(b[3] * s)), (255, 64, 64), 2)
        cv2.putText(img, str(i), (4, STRIP_HEIGHT - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
        tiles.append(np.full((STRIP_HEIGHT, 3, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1) if tiles else None


def score_map(doc: Mapping) -> Callable[[str, Sequence[float]], list[float]]:
    """(member, raw scores) -> the scores on the scale of the verdict threshold and band: each
    member's recorded calibration applied when the scan applied them (``calibrated``), else as they
    are. A face's per-tube and per-frame figures in the JSON are raw; the threshold and band of a
    calibrated model are on the calibrated scale."""
    cals = {m: Calibration.from_dict(c) for m, c in (doc.get("calibrations") or {}).items() if c} \
        if doc.get("calibrated") else {}

    def apply(member: str, ps: Sequence[float]) -> list[float]:
        c = cals.get(member)
        return [float(c.apply(float(p))) if c is not None else float(p) for p in ps]

    return apply


def draw_timeline(path: Path, video: Mapping, members: Sequence[str], threshold: float,
                  band: Optional[tuple[float, float]], short: Callable[[str], str] = str,
                  scale: Optional[Callable[[str, Sequence[float]], list[float]]] = None,
                  calibrated: bool = False) -> None:
    """p(fake) over the video's frames: per face, the frame models' per-frame scores (dots and
    line) and each member's tube score over the tube's span (segment); the windows read (grey),
    the verdict threshold and the UNSURE band. ``scale`` (:func:`score_map`) puts the scores on the
    threshold's scale (calibrated models)."""
    scale = scale or (lambda _m, ps: [float(p) for p in ps])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faces = video.get("faces") or []
    n = int(video.get("n_frames") or 0)
    read = video.get("frames_read") or []
    end = max([n] + [int(r[1]) + 1 for r in read] + [int(f["last_frame"]) + 1 for f in faces] + [1])
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    try:
        for a, b in read:
            ax.axvspan(a, b + 1, color="#eeeeee", zorder=0, lw=0)
        if band:
            ax.axhspan(band[0], band[1], color="#ffd54f", alpha=0.35, zorder=1, lw=0, label="UNSURE")
        ax.axhline(threshold, color="#c62828", ls="--", lw=1.2, zorder=2, label=f"threshold {threshold:g}")
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        styles = ["-", (0, (4, 2)), (0, (1, 1)), (0, (6, 2, 1, 2)), (0, (3, 1, 1, 1))]
        for fi, f in enumerate(faces):
            c = colours[fi % len(colours)]
            first, last = int(f["first_frame"]), int(f["last_frame"])
            label = f"face {f['tube_id']}"
            for mi, (m, p) in enumerate(sorted((f.get("members") or {}).items())):
                (p,) = scale(m, [p])
                ax.plot([first, last + 1], [p, p], color=c, ls=styles[mi % len(styles)], lw=2.2, alpha=0.8,
                        zorder=3, label=f"{label} {short(m)} (tube)")
            for m, ps in sorted((f.get("frame_scores") or {}).items()):
                xs = np.arange(first, first + len(ps))
                ax.plot(xs, scale(m, ps), color=c, marker="o", ms=2.5, lw=0.8, alpha=0.9, zorder=4,
                        label=f"{label} {short(m)} (per frame)")
        ax.set_xlim(0, end)
        ax.set_ylim(0, 1)
        ax.set_xlabel("frame" + (f" ({float(video['fps']):g} fps; grey: frames read)" if video.get("fps") else
                                 " (grey: frames read)"))
        ax.set_ylabel("p(fake), calibrated" if calibrated else "p(fake)")
        handles, labels = ax.get_legend_handles_labels()
        if len(labels) > 10:
            handles, labels = handles[:10], labels[:10]
        ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Heatmaps


def _frames_to_explain(face: Mapping, member: str) -> list[int]:
    """A frame model's frames (indices into the face's 2D crops) that get a heatmap: its
    highest-scoring ones, or the first when it recorded no per-frame scores."""
    ps = (face.get("frame_scores") or {}).get(member) or []
    return [int(k) for k in np.argsort(-np.asarray(ps), kind="stable")[:HEAT_FRAMES]] if ps else [0]


def _heatmaps(fi: int, face: Mapping, got: dict, members: Mapping[str, object], folder: Path,
              stem: str) -> list[dict]:
    """Heatmap pairs (plain crop, map) of one face: the frame models' highest-scoring frames and
    the frames that weighed most for the 3D members. Returns [{member, frame, p, plain, heat}]."""
    def save(img: np.ndarray, name: str) -> str:
        img = cv2.resize(img, (HEAT_SIZE, HEAT_SIZE), interpolation=cv2.INTER_AREA) if img.shape[0] > HEAT_SIZE else img
        _png(folder / name, img)
        return name

    out = []
    for m, model in members.items():
        if m not in (face.get("members") or {}):
            continue
        if model.spec.kind == "2d":
            ps = (face.get("frame_scores") or {}).get(m) or []
            for k in _frames_to_explain(face, m):
                crop = got["crops_2d"].get((fi, k))
                if crop is None:
                    continue
                seen, cam = frame_cam(model, crop, flipped=(k % 2 == 0))
                name = f"{stem}-{m}-f{k}"
                out.append({"member": m, "frame": int(face["first_frame"]) + k,
                            "p": float(ps[k]) if k < len(ps) else None,
                            "plain": save(seen, f"{name}.png"), "heat": save(overlay(seen, cam), f"{name}-cam.png")})
        else:
            tube = got["tubes_3d"].get(fi)
            if tube is None:
                continue
            seen, cam = clip_cam(model, tube)
            for t in top_frames(cam, HEAT_FRAMES):
                name = f"{stem}-{m}-t{t}"
                out.append({"member": m, "frame": int(face["first_frame"]) + t, "p": None,
                            "plain": save(seen[t], f"{name}.png"), "heat": save(overlay(seen[t], cam[t]), f"{name}-cam.png")})
    return out


def load_report_members(doc: Mapping, device: str = "cpu") -> tuple[dict, list[str]]:
    """The members that judged the scan, loaded (registered or built-in) when their model id is
    still the one the scan used: ({name: MemberModel}, notes on those that are not)."""
    models, notes = {}, []
    for name in doc.get("members") or []:
        want = (doc.get("models") or {}).get(name, "")
        try:
            m = load_member(name, device)
        except UserError as exc:
            notes.append(f"{name}: no heatmaps ({exc})")
            continue
        if want and m.model_id != want:
            notes.append(f"{name}: no heatmaps (the scan used model {want}; {m.model_id or 'another'} is registered now)")
            continue
        if m.module is not None:
            models[name] = m.module
    return models, notes


# ----------------------------------------------------------------------------------------------
# Pages


# ----------------------------------------------------------------------------------------------
# The report


def _video_pictures(doc: Mapping, v: Mapping, folder: Path, members: Mapping[str, object], heatmaps: bool) -> tuple[dict, list[str]]:
    """Draw one video's pictures into ``folder``: (file names by role, notes)."""
    faces = v.get("faces") or []
    pics: dict = {"strips": {}, "heat": {}}
    notes: list[str] = []
    folder.mkdir(parents=True, exist_ok=True)
    if faces or v.get("frames_read"):
        draw_timeline(folder / "timeline.png", v, doc.get("members") or [], float(doc.get("threshold", 0.5)),
                      unsure_band(doc, v), short_label, score_map(doc), bool(doc.get("calibrated")))
        pics["timeline"] = "timeline.png"
    if v.get("status") == "error":
        return pics, notes
    needs = _Needs()
    for fi, f in enumerate(faces):
        for i in strip_frames(f):
            needs.strip.setdefault(i, []).append(fi)
    if faces:
        best = max(faces, key=lambda f: float(f.get("p_fake") or 0.0))
        mid = (int(best["first_frame"]) + int(best["last_frame"])) // 2
        needs.thumb = (mid, _box_at(best, mid))
    else:
        read = v.get("frames_read") or [[0, 0]]
        needs.thumb = ((int(read[0][0]) + int(read[0][1])) // 2, None)
    if heatmaps:
        for fi, f in enumerate(faces):
            for m, model in members.items():
                if m not in (f.get("members") or {}):
                    continue
                if model.spec.kind == "2d":
                    for k in _frames_to_explain(f, m):
                        box = _crop_2d_box(f, k)
                        if box is not None:
                            needs.crops_2d[(fi, k)] = box
                else:
                    needs.tubes_3d[fi] = (int(f["first_frame"]), int(f["last_frame"]), list(f["box"]))
    try:
        got = _decode_needed(str(v.get("video", "")), needs, faces)
    except VideoError as exc:
        notes.append(f"no pictures: the video cannot be read now ({exc})")
        return pics, notes
    if got["thumb"] is not None:
        _png(folder / "thumb.png", got["thumb"])
        pics["thumb"] = "thumb.png"
    for fi, f in enumerate(faces):
        strip = _draw_strip(fi, f, got)
        if strip is not None:
            _png(folder / f"strip-{fi}.png", strip)
            pics["strips"][fi] = f"strip-{fi}.png"
        if heatmaps and members:
            pics["heat"][fi] = _heatmaps(fi, f, got, members, folder, f"face{fi}")
    return pics, notes


def write_report(doc: Mapping, out: str | Path, members: Optional[Mapping[str, object]] = None,
                 heatmaps: bool = True, on_video: Optional[Callable[[str], None]] = None,
                 notes: Sequence[str] = ()) -> Path:
    """Write the report of a scan document into ``out`` (replaced as a whole when done: an earlier
    report there is never half-overwritten). ``members``: name -> MemberModel for the heatmaps
    (None: none). ``on_video(name)`` is called as each video is done. Returns ``out``."""
    out = check_out(out)
    videos = list(doc.get("videos") or [])
    with atomic_dir(out) as tmp:
        (tmp / MARKER).write_text("written by deepfake scan --report / deepfake report\n")
        (tmp / "v").mkdir()
        rows = []
        names = set()
        for n, i in enumerate(ordered(videos)):
            v = videos[i]
            base = f"{n + 1:03d}-{slug(str(v.get('name', 'video')))}"
            while base in names:
                base += "_"
            names.add(base)
            pics, vnotes = _video_pictures(doc, v, tmp / "v" / base, members or {}, heatmaps)
            (tmp / "v" / f"{base}.html").write_text(video_page(doc, v, base, pics, list(notes) + vnotes, score_map(doc)))
            rows.append((v, f"v/{base}.html", f"v/{base}/{pics['thumb']}" if pics.get("thumb") else None))
            if on_video is not None:
                on_video(str(v.get("name", "")))
        (tmp / "index.html").write_text(index_page(doc, rows))
    return out


def write_report_with_progress(doc: Mapping, out: str | Path, members: Optional[Mapping[str, object]] = None,
                               device: str = "cpu") -> Path:
    """:func:`write_report` under a progress bar; ``members`` None: the scan's members are loaded
    (those whose model id is unchanged) for the heatmaps."""
    notes: list[str] = []
    if members is None:
        members, notes = load_report_members(doc, device)
        for n in notes:
            warn(n)
    videos = doc.get("videos") or []
    with progress(transient=True) as bar:
        task = bar.add_task("report", total=len(videos), status="")
        return write_report(doc, out, members, on_video=lambda name: bar.update(task, advance=1, status=name),
                            notes=notes)
