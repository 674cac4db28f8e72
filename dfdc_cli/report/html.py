"""The HTML of a scan's report: the index page and a page per video (no JavaScript, no network), from
the scan's JSON document and the pictures :mod:`dfdc_cli.report.build` made."""

from __future__ import annotations

import html
import json
import math
from typing import Callable, Mapping, Optional, Sequence


SALIENCY_NOTE = ("A heatmap shows where the member's score is most sensitive (Grad-CAM, a saliency map); "
                 "it is not a mask of manipulated pixels, and a real face gets one too.")


def unsure_band(doc: Mapping, video: Optional[Mapping] = None) -> Optional[tuple[float, float]]:
    """The UNSURE band (low, high) a result carries, if any: ``unsure_band`` (what scan writes from
    the calibration recorded with the model) or ``unsure``, on the video or the scan, as [low, high]
    or {"low": .., "high": ..}."""
    for where in (video or {}, doc):
        if not isinstance(where, Mapping):
            continue
        band = where.get("unsure_band", where.get("unsure"))
        if band is None:
            continue
        try:
            lo, hi = (band.get("low"), band.get("high")) if isinstance(band, Mapping) else band
            lo, hi = float(lo), float(hi)
        except (TypeError, ValueError):
            continue
        if 0 <= lo < hi <= 1:
            return lo, hi
    return None


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;max-width:1200px}
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.FAKE{color:#b71c1c;font-weight:bold}.REAL{color:#1b5e20;font-weight:bold}.NOFACE{color:#8d6e00}.ERROR{color:#6a1b9a}
.UNSURE{color:#e65100;font-weight:bold}
img{image-rendering:auto}img.fit{max-width:100%;height:auto}img.thumb{max-width:128px;max-height:96px}.note{color:#555;font-size:90%}.heat{display:flex;flex-wrap:wrap;gap:8px 16px}.heat figure{margin:0;text-align:center;font-size:85%;width:min-content}.heat figure div{display:flex;gap:2px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}dt{font-weight:bold}dd{margin:0}
code{background:#f4f4f4;padding:0 3px}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(p) -> str:
    return "-" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{float(p):.3f}"


def _verdict_cell(v: Mapping) -> str:
    if v.get("verdict"):
        return f'<span class="{_e(v["verdict"])}">{_e(v["verdict"])}</span>'
    if v.get("status") == "no_face":
        return '<span class="NOFACE">NO FACE</span>'
    return '<span class="ERROR">ERROR</span>'


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def _facts(doc: Mapping, v: Mapping) -> str:
    rows = [
        ("tool", doc.get("tool", "")),
        ("judged by", doc.get("judged_by", "")),
        ("models", ", ".join(f"{m} ({(doc.get('models') or {}).get(m, '')}, weight "
                             f"{(doc.get('weights') or {}).get(m, 1.0):g})" for m in doc.get("members") or [])),
        ("threshold", f"FAKE at p(fake) >= {doc.get('threshold', 0.5):g}"
                      + (f"; UNSURE in [{unsure_band(doc, v)[0]:g}, {unsure_band(doc, v)[1]:g})" if unsure_band(doc, v) else "")),
        ("span", f"{v.get('span', doc.get('span', 'first'))} (up to {doc.get('max_windows', 1)} windows of "
                 f"{(doc.get('extraction') or {}).get('first_frames', 100)} frames; a video's p(fake) is its "
                 "highest window's)" if len(v.get("windows") or []) > 1 else v.get("span", doc.get("span", "first"))),
        ("frames read", ", ".join(f"{a}-{b}" for a, b in v.get("frames_read") or []) +
         (f" of {v['n_frames']}" if v.get("n_frames") else "") + (f" at {float(v['fps']):g} fps" if v.get("fps") else "")),
        ("extraction", ", ".join(f"{k}={_json_short(x)}" for k, x in (doc.get("extraction") or {}).items())),
        ("device", doc.get("device", "")),
        ("extraction time", f"{float(v.get('extract_seconds') or 0):.1f} s"),
        ("file", v.get("video", "")),
    ]
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(x)}</dd>" for k, x in rows) + "</dl>"


def _json_short(x) -> str:
    return json.dumps(x) if isinstance(x, (list, dict)) else str(x)


def _member_table(members: Sequence[str], faces: Sequence[Mapping], short: Callable[[str], str],
                  scale: Scale) -> str:
    head = "<tr><th>face</th><th>window</th><th>frames</th>" + "".join(
        f'<th class="num" title="{_e(m)}">{_e(short(m))}</th>' for m in members) + '<th class="num">p(fake)</th></tr>'
    rows = []
    for f in faces:
        scores = f.get("members") or {}
        rows.append(f"<tr><td>{_e(f['tube_id'])}</td><td>{int(f.get('window') or 0) + 1}</td>"
                    f"<td>{_e(f['first_frame'])}-{_e(f['last_frame'])}</td>" +
                    "".join(f'<td class="num">{_fmt(_scaled(scale, m, scores.get(m)))}</td>' for m in members) +
                    f'<td class="num"><b>{_fmt(f.get("p_fake"))}</b></td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"


# (member, raw scores) -> the scores on the verdict's scale (dfdc_cli.report.build.score_map)
Scale = Callable[[str, Sequence[float]], list[float]]


def _scaled(scale: Scale, member: str, p) -> Optional[float]:
    return None if p is None else scale(member, [float(p)])[0]


def _faces_line(v: Mapping) -> str:
    """"faces N", and the tubes behind it when the video was read in several windows."""
    faces = v.get("faces") or []
    n = int(v.get("n_faces", len(faces)) or 0)
    windows = {int(f.get("window") or 0) for f in faces}
    if len(faces) > n or len(windows) > 1:
        return f"faces {n} ({len(faces)} face tubes in {len(windows)} windows: tubes are not linked across windows)"
    return f"faces {n}"


def short_label(name: str) -> str:
    try:
        from dfdc_models.specs import get_spec

        return get_spec(name).short
    except KeyError:
        return name


def video_page(doc: Mapping, v: Mapping, assets: str, pictures: dict, notes: Sequence[str],
               scale: Optional[Scale] = None) -> str:
    """The HTML of one video's page (``assets``: its picture folder, relative to the page; ``scale``:
    member scores onto the verdict's scale, as the faces' and video's p(fake) are)."""
    scale = scale or (lambda m, ps: [float(p) for p in ps])
    calibrated = bool(doc.get("calibrated"))
    members = list(doc.get("members") or [])
    faces = v.get("faces") or []
    parts = ['<p><a href="../index.html">&larr; all videos</a></p>',
             f"<h1>{_e(v.get('name'))}</h1>",
             f"<p>{_verdict_cell(v)} &nbsp; p(fake) <b>{_fmt(v.get('p_fake')) if v.get('verdict') else '(' + _fmt(v.get('p_fake')) + ')'}</b>"
             f" &nbsp; {_e(_faces_line(v))}</p>"]
    if v.get("reason"):
        parts.append(f'<p class="note">{_e(v["reason"])}</p>')
    for n in notes:
        parts.append(f'<p class="note">{_e(n)}</p>')
    if pictures.get("timeline"):
        parts.append("<h2>Timeline</h2>"
                     f'<p><img class="fit" src="{_e(assets)}/{_e(pictures["timeline"])}" alt="p(fake) over time" width="900"></p>'
                     '<p class="note">Lines: each member\'s p(fake) of a face tube over the frames it spans; dots: a '
                     "frame model's p(fake) of single frames (every other one mirrored, as scored). Grey: the frames "
                     "read; dashed red: the verdict threshold" + ("; yellow: the UNSURE band." if unsure_band(doc, v) else ".") +
                     "</p>")
    if faces:
        parts.append("<h2>Faces</h2>" + _member_table(members, faces, short_label, scale) + (
            '<p class="note">Member columns: each member\'s p(fake) of the tube through the calibration its model '
            "records, on the verdict's scale as p(fake) is (the JSON keeps the raw scores).</p>" if calibrated else ""))
    for fi, f in enumerate(faces):
        parts.append(f"<h3>Face {_e(f['tube_id'])}: frames {_e(f['first_frame'])}-{_e(f['last_frame'])}, "
                     f"p(fake) {_fmt(f.get('p_fake'))}</h3>")
        strip = pictures.get("strips", {}).get(fi)
        if strip:
            parts.append(f'<p><img class="fit" src="{_e(assets)}/{_e(strip)}" alt="frames of face {_e(f["tube_id"])} with its box"></p>')
        heats = pictures.get("heat", {}).get(fi) or []
        if heats:
            # one figure per (member, frame): the crop and its map side by side; the figures wrap
            cells = "".join(
                f'<figure><div><img src="{_e(assets)}/{_e(h["plain"])}" alt="crop" width="{HEAT_SIZE}">'
                f'<img src="{_e(assets)}/{_e(h["heat"])}" alt="heatmap" width="{HEAT_SIZE}"></div><figcaption>'
                f'{_e(short_label(h["member"]))}, frame {h["frame"]}'
                + (f", p(fake) {_fmt(_scaled(scale, h['member'], h['p']))}" + (" calibrated" if calibrated else "")
                   if h.get("p") is not None else "") + "</figcaption></figure>" for h in heats)
            parts.append(f'<p class="note">{_e(SALIENCY_NOTE)}</p><div class="heat">{cells}</div>')
    parts.append("<h2>Technical facts</h2>" + _facts(doc, v))
    return _page(str(v.get("name", "video")), "\n".join(parts))


def index_page(doc: Mapping, rows: Sequence[tuple[Mapping, str, Optional[str]]]) -> str:
    """The index: (video, page, thumbnail) rows in the order given."""
    band = unsure_band(doc)
    head = ('<tr><th></th><th>video</th><th>verdict</th><th class="num">p(fake)</th><th class="num">faces</th>'
            "<th>note</th></tr>")
    body = []
    for v, page, thumb in rows:
        img = f'<a href="{_e(page)}"><img class="thumb" src="{_e(thumb)}" alt=""></a>' if thumb else ""
        p = _fmt(v.get("p_fake")) if v.get("verdict") else f"({_fmt(v.get('p_fake'))})"
        body.append(f'<tr><td>{img}</td><td><a href="{_e(page)}">{_e(v.get("name"))}</a></td>'
                    f'<td>{_verdict_cell(v)}</td><td class="num">{p}</td><td class="num">{_e(v.get("n_faces", 0))}</td>'
                    f'<td class="note">{_e(v.get("reason", ""))}</td></tr>')
    counts = {k: sum(1 for v, _, _ in rows if (v.get("verdict") or v.get("status")) == k)
              for k in ("FAKE", "UNSURE", "REAL", "no_face", "error")}
    summary = (f"{len(rows)} videos: {counts['FAKE']} FAKE, "
               + (f"{counts['UNSURE']} UNSURE, " if counts["UNSURE"] else "")
               + f"{counts['REAL']} REAL, {counts['no_face']} no face, "
               f"{counts['error']} failed. Verdict FAKE at p(fake) &gt;= {float(doc.get('threshold', 0.5)):g}"
               + (f"; UNSURE between {band[0]:g} and {band[1]:g}" if band else "") + ".")
    intro = (f"<h1>deepfake scan report</h1><p>{summary}</p><p class=\"note\">{_e(doc.get('judged_by', ''))}. "
             f"Ordered by p(fake), highest first; videos without a verdict last.</p>")
    return _page("deepfake scan report", intro + f"<table>{head}{''.join(body)}</table>")


HEAT_SIZE = 160
