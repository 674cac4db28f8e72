"""`deepfake eval`: honest measurement of members and the ensemble on labelled videos.

Labels come from a CSV (``filename,label`` with FAKE/REAL or 1/0) or DFDC ``metadata.json`` files;
videos are resolved relative to the CSV's / metadata's folder. The labelled videos go through the
same pipeline as `deepfake scan`; the figures are computed per member and for the ensemble, at
video level (what the competition scored) and at tube level (every face tube labelled with its
video's label).

Conventions (also written into the report):

- a video with no face, or that could not be read, keeps the prior p = 0.5 in every video-level
  figure, as the seed's submission did; it has no tubes, so it is absent at tube level;
- log loss clips p to [0.001, 0.999] (the seed's clip);
- at tube level a fake video's every tube counts as FAKE, although in DFDC only some faces of a fake
  video may have been swapped.
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from dfdc_cli.atomic import atomic_path, write_json, write_text
from dfdc_cli.errors import UserError
from dfdc_cli.evaluate import metrics as M
from dfdc_cli.scan.ensemble import PRIOR
from dfdc_cli.scan.inputs import index_items
from dfdc_cli.scan.results import VideoScan
from dfdc_cli.ui import warn

ENSEMBLE = "ensemble"


@dataclass
class Labelled:
    video: Path
    name: str
    label: int  # 1 FAKE, 0 REAL
    original: str = ""


# ----------------------------------------------------------------------------------------------
# Labels


def parse_label(value) -> int:
    s = str(value).strip().upper()
    if s in ("FAKE", "1", "1.0", "TRUE"):
        return 1
    if s in ("REAL", "0", "0.0", "FALSE"):
        return 0
    raise ValueError(f"label {value!r} is not FAKE/REAL or 1/0")


def labels_from_csv(path: str | Path) -> list[Labelled]:
    """``filename,label`` rows (a ``video`` or ``path`` column also works for the file); relative
    names resolve against the CSV's folder."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--val {path}: no such file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--val {path}: not a readable CSV ({exc})") from None
    cols = {c.strip().lower(): c for c in df.columns}
    fcol = next((cols[c] for c in ("filename", "file", "video", "path", "name") if c in cols), None)
    lcol = cols.get("label")
    if fcol is None or lcol is None:
        raise UserError(f"--val {path}: needs columns filename,label (has {', '.join(df.columns)})")
    ocol = cols.get("original")
    out = []
    for i, row in enumerate(df.to_dict("records")):
        name = str(row[fcol]).strip()
        if not name:
            continue
        try:
            y = parse_label(row[lcol])
        except ValueError as exc:
            raise UserError(f"--val {path}, row {i + 2}: {exc}") from None
        p = Path(name).expanduser()
        if not p.is_absolute():
            p = path.parent / p
        out.append(Labelled(p.absolute(), p.name, y, str(row[ocol]) if ocol else ""))
    return out


def labels_from_metadata(path: str | Path) -> list[Labelled]:
    """DFDC ``metadata.json``: {file name: {"label": "FAKE"|"REAL", "original": ...}}; the videos
    sit beside it. A folder holding a metadata.json is accepted too."""
    path = Path(path)
    if path.is_dir():
        path = path / "metadata.json"
    if not path.is_file():
        raise UserError(f"--metadata {path}: no such file")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--metadata {path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise UserError(f"--metadata {path}: expected a JSON object of file name -> entry")
    out = []
    for name, entry in meta.items():
        if not isinstance(entry, dict) or "label" not in entry:
            raise UserError(f"--metadata {path}: entry {name!r} has no label")
        try:
            y = parse_label(entry["label"])
        except ValueError as exc:
            raise UserError(f"--metadata {path}, {name}: {exc}") from None
        out.append(Labelled((path.parent / name).absolute(), Path(name).name, y, str(entry.get("original") or "")))
    return out


def read_labels(val: Optional[Path], metadata: Sequence[Path]) -> list[Labelled]:
    """All labelled videos of --val and --metadata (first label wins on duplicates)."""
    items: list[Labelled] = []
    if val is not None:
        items += labels_from_csv(val)
    for m in metadata or []:
        items += labels_from_metadata(m)
    if not items:
        raise UserError("no labelled videos: give --val FILE.csv or --metadata metadata.json")
    seen, uniq = set(), []
    for it in items:
        k = str(it.video)
        if k not in seen:
            seen.add(k)
            uniq.append(it)
    return uniq


def gather_labels(val: Optional[Path], metadata: Sequence[Path]) -> tuple[list[Labelled], list[Labelled]]:
    """All labelled videos (first label wins on duplicates) -> (present, missing files)."""
    uniq = read_labels(val, metadata)
    present = [it for it in uniq if it.video.exists()]
    missing = [it for it in uniq if not it.video.exists()]
    if not present:
        raise UserError(f"none of the {len(uniq)} labelled videos exists (first: {uniq[0].video})")
    return present, missing


def match_index(items: Sequence, labels: Optional[Sequence[Labelled]]) -> tuple[list, list[Labelled], list[Labelled], int]:
    """Pair the items of an extract index (:func:`dfdc_cli.scan.inputs.index_items`) with labels.

    ``labels`` None: the index's own labels (from DFDC metadata or ``extract --label``; self-blended
    copies are FAKE). Otherwise each labelled video is found by its path, else by its file name
    when that name is unique in the index (DFDC names are). Returns (items, their labels,
    labelled videos the index does not hold, index items left without a label).
    """
    pairs: list[tuple] = []
    missing: list[Labelled] = []
    if labels is None:
        for e in items:
            if e.label in ("FAKE", "REAL"):
                pairs.append((e, Labelled(Path(e.video), e.name, parse_label(e.label))))
    else:
        by_path = {(str(e.video), e.name): e for e in items}
        by_name: dict[str, object] = {}
        for e in items:
            by_name[e.name] = None if e.name in by_name else e  # None: ambiguous
        for lab in labels:
            e = by_path.get((str(lab.video), lab.name)) or by_name.get(lab.name)
            if e is None:
                missing.append(lab)
            else:
                pairs.append((e, lab))
    unlabelled = len(items) - len({id(e) for e, _ in pairs})
    return [e for e, _ in pairs], [lab for _, lab in pairs], missing, unlabelled


@dataclass
class EvalSet:
    """What `deepfake eval` scores: the videos, their labels (aligned), and with ``--index`` the
    index items they are (None: the videos are extracted)."""

    videos: list[Path]
    labels: list[Labelled]
    items: Optional[list] = None
    missing: int = 0  # labelled videos left out (missing files, or not in the index)


def eval_set(val: Optional[Path], metadata: Sequence[Path], index: Optional[Path] = None) -> EvalSet:
    """The labelled videos of --val / --metadata, or of an extract index (its own labels unless
    --val / --metadata are given); warns about the videos left out."""
    if index is None:
        labels, missing = gather_labels(val, metadata)
        if missing:
            warn(f"{len(missing)} labelled videos are missing and left out (first: {missing[0].video})")
        return EvalSet([it.video for it in labels], labels, None, len(missing))

    given = read_labels(val, metadata) if (val is not None or metadata) else None
    found, labels, missing, unlabelled = match_index(index_items(index), given)
    if unlabelled:
        warn(f"{unlabelled} videos of the index have no label and are left out")
    if missing:
        warn(f"{len(missing)} labelled videos are not in the index and are left out "
             f"(first: {missing[0].video})")
    if not labels:
        raise UserError(f"--index {index}: no labelled video to evaluate")
    return EvalSet([Path(e.video) for e in found], labels, found, len(missing))


def label_results(results: Sequence[VideoScan], labels: Sequence[Labelled]) -> None:
    """Write each video's known label into its scan result (the report's scan.json carries it)."""
    for r, it in zip(results, labels):
        r.label = "FAKE" if it.label else "REAL"


def report_meta(scan_meta: Mapping, val: Optional[Path], metadata: Sequence[Path], index: Optional[Path],
                missing: int, bootstrap: int, seed: int) -> dict:
    """The report's ``meta``: the scanner's description, the label sources and the run's settings."""
    return {
        **dict(scan_meta),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "sources": [str(val)] * (val is not None) + [str(m) for m in (metadata or [])]
        + [f"index {index}"] * (index is not None),
        "missing": missing,
        "bootstrap": bootstrap,
        "seed": seed,
    }


# ----------------------------------------------------------------------------------------------
# Scores -> tables


def video_table(results: Sequence[VideoScan], labels: Sequence[int], members: Sequence[str]) -> dict:
    """Per-video arrays: y and, for each member and the ensemble, p (the prior where unscored)."""
    y = np.asarray(labels, dtype=np.float64)
    cols = {m: np.array([PRIOR if r.members.get(m) is None else r.members[m] for r in results], dtype=np.float64)
            for m in members}
    cols[ENSEMBLE] = np.array([r.p_fake for r in results], dtype=np.float64)
    return {"y": y, "p": cols}


def tube_table(results: Sequence[VideoScan], labels: Sequence[int], members: Sequence[str]) -> dict:
    """Per-tube arrays (every face of every scanned video, its video's label); a member that did
    not score a tube leaves it out of that member's figures."""
    rows = [(vi, f) for vi, r in enumerate(results) for f in r.faces]
    y = np.array([labels[vi] for vi, _ in rows], dtype=np.float64)
    group = np.array([vi for vi, _ in rows], dtype=np.int64)
    cols, masks = {}, {}
    for m in members:
        masks[m] = np.array([m in f.members for _, f in rows], dtype=bool)
        cols[m] = np.array([f.members.get(m, np.nan) for _, f in rows], dtype=np.float64)
    masks[ENSEMBLE] = np.array([f.p_fake is not None for _, f in rows], dtype=bool)
    cols[ENSEMBLE] = np.array([np.nan if f.p_fake is None else f.p_fake for _, f in rows], dtype=np.float64)
    return {"y": y, "p": cols, "mask": masks, "group": group}


def level_metrics(table: dict, names: Sequence[str], bootstrap: int = 0, seed: int = 0,
                  threshold: float = 0.5) -> dict:
    out = {}
    for n in names:
        p = table["p"][n]
        y = table["y"]
        groups = table.get("group")
        if "mask" in table:
            mk = table["mask"][n]
            p, y = p[mk], y[mk]
            groups = groups[mk] if groups is not None else None
        fig = M.binary_metrics(y, p, threshold)
        if bootstrap:
            fig["ci"] = M.bootstrap_ci(y, p, n=bootstrap, seed=seed, groups=groups)
        out[n] = fig
    return out


def evaluate_results(results: Sequence[VideoScan], items: Sequence[Labelled], members: Sequence[str],
                     bootstrap: int = 0, seed: int = 0, threshold: float = 0.5) -> dict:
    """Every figure of the report (no I/O)."""
    labels = [it.label for it in items]
    names = list(members) + [ENSEMBLE]
    vt = video_table(results, labels, members)
    tt = tube_table(results, labels, members)
    counts = {
        "videos": len(results),
        "fake": int(sum(labels)),
        "real": int(len(labels) - sum(labels)),
        "ok": sum(r.status == "ok" for r in results),
        "no_face": sum(r.status == "no_face" for r in results),
        "error": sum(r.status == "error" for r in results),
        "tubes": int(tt["y"].size),
    }
    return {
        "counts": counts,
        "video": level_metrics(vt, names, bootstrap, seed, threshold),
        "tube": level_metrics(tt, names, bootstrap, seed, threshold),
        "_tables": {"video": vt, "tube": tt},
    }


# ----------------------------------------------------------------------------------------------
# Report folder


def finite_or_none(v) -> Optional[float]:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def fmt(v, digits: int = 4) -> str:
    v = finite_or_none(v)
    return "n/a" if v is None else f"{v:.{digits}f}"


def fmt_ci(fig: Mapping, key: str, digits: int = 3) -> str:
    s = fmt(fig.get(key), digits)
    ci = fig.get("ci", {}).get(key)
    if ci and finite_or_none(ci.get("lo")) is not None:
        s += f" [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"
    return s


def columns() -> list[tuple[str, str]]:
    """The metric columns of every table: (metrics.json key, header), from :data:`metrics.METRICS`."""
    return [(name, m.label) for name, m in M.METRICS.items()]


def summary_rows(level: Mapping[str, Mapping]) -> list[list[str]]:
    rows = []
    for name, fig in level.items():
        rows.append([name] + [fmt_ci(fig, k) for k, _ in columns()]
                    + [f"{fig['n']} ({fig['n_fake']}F/{fig['n_real']}R)"])
    return rows


# Every file a report folder gets (dfdc_cli.commands.outputs checks them against the inputs before a run).
REPORT_FILES = ("metrics.json", "videos.csv", "tubes.csv", "scan.json", "roc.png", "calibration.png",
                "summary.md", "summary.html")


def write_report(out_dir: Path, results: Sequence[VideoScan], items: Sequence[Labelled], report: dict,
                 meta: Mapping) -> dict[str, Path]:
    """metrics.json, videos.csv, tubes.csv, roc.png, calibration.png, summary.md, summary.html,
    scan.json. Returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    members = list(meta["members"])
    paths: dict[str, Path] = {}

    # metrics.json
    doc = {"meta": dict(meta), "counts": report["counts"], "video": report["video"], "tube": report["tube"],
           "conventions": CONVENTIONS}
    paths["metrics"] = out_dir / "metrics.json"
    write_json(paths["metrics"], _jsonable(doc))

    # per-video CSV
    rows = []
    for r, it in zip(results, items):
        row = {"filename": r.name, "video": r.video, "label": "FAKE" if it.label else "REAL",
               "status": r.status, "reason": r.reason, "n_faces": r.n_faces}
        for m in members:
            row[m] = r.members.get(m)
        row["p_fake"] = r.p_fake
        row["verdict"] = r.verdict or ""
        row["correct"] = "" if r.verdict not in ("FAKE", "REAL") else int((r.verdict == "FAKE") == bool(it.label))
        row["log_loss"] = M.log_loss([it.label], [r.p_fake])
        rows.append(row)
    paths["videos"] = out_dir / "videos.csv"
    with atomic_path(paths["videos"]) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6f")

    trows = []
    for r, it in zip(results, items):
        for f in r.faces:
            row = {"filename": r.name, "tube_id": f.tube_id, "label": "FAKE" if it.label else "REAL",
                   "first_frame": f.first_frame, "last_frame": f.last_frame}
            for m in members:
                row[m] = f.members.get(m)
            row["p_fake"] = f.p_fake
            trows.append(row)
    paths["tubes"] = out_dir / "tubes.csv"
    cols = ["filename", "tube_id", "label", "first_frame", "last_frame"] + members + ["p_fake"]
    with atomic_path(paths["tubes"]) as tmp:
        pd.DataFrame(trows, columns=cols).to_csv(tmp, index=False, float_format="%.6f")

    paths["scan"] = out_dir / "scan.json"
    write_json(paths["scan"], _jsonable({**dict(meta), "videos": [
        {**r.to_dict(), "label": "FAKE" if it.label else "REAL"} for r, it in zip(results, items)]}))

    tables = report["_tables"]
    paths["roc"] = out_dir / "roc.png"
    plot_roc(paths["roc"], tables["video"], members, report["video"])
    paths["calibration"] = out_dir / "calibration.png"
    plot_calibration(paths["calibration"], tables["video"], members)

    md = summary_markdown(report, meta)
    paths["summary_md"] = out_dir / "summary.md"
    write_text(paths["summary_md"], md)
    paths["summary_html"] = out_dir / "summary.html"
    write_text(paths["summary_html"], summary_html(report, meta))
    return paths


CONVENTIONS = [
    "p(fake) per video: mean over faces per member, weighted mean over members, clipped to [0.001, 0.999]",
    "videos with no face or that failed keep the prior 0.5 at video level and have no tubes",
    "log loss clips p to [0.001, 0.999] (the seed's clip; Kaggle's scorer clipped at 1e-15)",
    "accuracy counts p >= 0.5 as FAKE (so the prior 0.5 of a video without a verdict counts as FAKE); "
    "EER is interpolated on the ROC curve",
    "tube level: every tube carries its video's label (in DFDC only some faces of a fake may be swapped)",
    "ROC AUC / EER are undefined (NaN, n/a) when only one class is present",
]


def _table_md(level: Mapping[str, Mapping]) -> str:
    head = ["model"] + [h for _, h in columns()] + ["n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary_rows(level):
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _notes(level: Mapping[str, Mapping]) -> list[str]:
    seen = []
    for fig in level.values():
        for n in fig.get("notes", []):
            if n not in seen:
                seen.append(n)
    return seen


def summary_markdown(report: dict, meta: Mapping) -> str:
    c = report["counts"]
    boot = meta.get("bootstrap") or 0
    lines = [
        "# deepfake eval",
        "",
        f"- date: {meta.get('date', '')}",
        f"- labels: {', '.join(meta.get('sources', []))}",
        f"- members: {', '.join(meta['members'])} (weights: "
        + ", ".join(f"{k}={v:g}" for k, v in meta.get("weights", {}).items()) + ")",
        f"- videos: {c['videos']} ({c['fake']} FAKE, {c['real']} REAL); scanned with faces {c['ok']}, "
        f"no face {c['no_face']}, failed {c['error']}; tubes {c['tubes']}",
        f"- missing files (left out): {meta.get('missing', 0)}",
    ]
    if boot:
        lines.append(f"- intervals: {int(0.95 * 100)}% percentile bootstrap, {boot} resamples, seed "
                     f"{meta.get('seed', 0)} (tube level resamples whole videos)")
    lines += ["", "## Video level", "", _table_md(report["video"]), ""]
    lines += ["## Tube level", "", _table_md(report["tube"]), ""]
    notes = _notes(report["video"]) + [n for n in _notes(report["tube"]) if n not in _notes(report["video"])]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Conventions", ""] + [f"- {n}" for n in CONVENTIONS] + [""]
    lines += ["![ROC](roc.png)", "", "![calibration](calibration.png)", ""]
    return "\n".join(lines)


def summary_html(report: dict, meta: Mapping) -> str:
    def table(level):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in ["model"] + [h for _, h in columns()] + ["n"])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in summary_rows(level))
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    c = report["counts"]
    notes = _notes(report["video"]) + _notes(report["tube"])
    items = "".join(f"<li>{html.escape(n)}</li>" for n in dict.fromkeys(notes + CONVENTIONS))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>deepfake eval</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}td:first-child{{text-align:left}}</style>
</head><body>
<h1>deepfake eval</h1>
<p>{html.escape(str(meta.get('date', '')))} &middot; members: {html.escape(', '.join(meta['members']))}
&middot; {c['videos']} videos ({c['fake']} FAKE, {c['real']} REAL; no face {c['no_face']}, failed {c['error']})
&middot; {c['tubes']} tubes</p>
<h2>Video level</h2>{table(report['video'])}
<h2>Tube level</h2>{table(report['tube'])}
<h2>Notes</h2><ul>{items}</ul>
<p><img src="roc.png" alt="ROC curves"> <img src="calibration.png" alt="calibration"></p>
</body></html>
"""


def reliability_axes(ax, xlabel: str, title: str) -> None:
    """The frame of a reliability diagram (eval's calibration plot, `models calibrate`'s fit plot):
    the diagonal, labels, limits with room for points at 0 and 1, the legend."""
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction FAKE")
    ax.set_title(title)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="upper left", fontsize=7)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (reports and calibration plots)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_roc(path: Path, table: dict, members: Sequence[str], level: Mapping[str, Mapping]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=100)
    y = table["y"]
    for name in list(members) + [ENSEMBLE]:
        fpr, tpr, _ = M.roc_curve(y, table["p"][name])
        if np.isnan(fpr).any() or np.isnan(tpr).any():
            continue
        lw, style = (2.5, "-") if name == ENSEMBLE else (1.2, "--")
        ax.plot(fpr, tpr, style, lw=lw, label=f"{name} (AUC {fmt(level[name]['roc_auc'], 3)})")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set_xlabel("false positive rate (REAL called FAKE)")
    ax.set_ylabel("true positive rate (FAKE called FAKE)")
    ax.set_title("ROC, video level")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center", va="center")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_calibration(path: Path, table: dict, members: Sequence[str], n_bins: int = 10) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=100)
    y = table["y"]
    for name in list(members) + [ENSEMBLE]:
        c = M.calibration_bins(y, table["p"][name], n_bins)
        if not c["count"]:
            continue
        if name == ENSEMBLE:
            ax.plot(c["mean_p"], c["frac_fake"], "o-", lw=2.5, label=f"{name} (ECE {fmt(c['ece'], 3)})")
        else:
            ax.plot(c["mean_p"], c["frac_fake"], ".--", lw=1, alpha=0.7, label=name)
    reliability_axes(ax, "mean predicted p(fake)", f"Calibration, video level ({n_bins} bins)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def default_out_dir() -> Path:
    return Path.cwd() / time.strftime("eval-%Y%m%d-%H%M%S")
