"""`deepfake scan`'s table fitted to the terminal: at 80 columns (rich's width when output is not a
terminal) with all eight members, video names, p(fake) and verdicts are whole; member scores are
columns when they fit, a compact second table when asked."""

from __future__ import annotations

import re

import pytest
from rich.console import Console

from dfdc_cli.commands import scan as C
from dfdc_cli.scan.results import FaceScore, VideoScan
from dfdc_cli.ui import middle_ellipsis
from dfdc_models.specs import MEMBERS

EIGHT = list(MEMBERS)
LONG = "holiday_2020_beach_party_with_the_whole_family_camera2_take7.mp4"  # 64 characters
FORTY = "interview_studio_b_2020-01-15_cam1_v.mp4"  # 40 characters: shown whole


def scans() -> list[VideoScan]:
    out = []
    for i, name in enumerate(["abofeumbvv.mp4", FORTY, LONG]):
        members = {m: round(0.05 + 0.11 * j + 0.01 * i, 4) for j, m in enumerate(EIGHT)}
        faces = [FaceScore(tube_id=0, first_frame=0, last_frame=99, n_frames=100, box=[0, 0, 50, 50],
                           mean_prob=0.99, members=members, p_fake=0.41)]
        p = 0.999 if i == 1 else 0.412 + i / 10
        out.append(VideoScan(video=f"/v/{name}", name=name, status="ok", n_faces=1, faces=faces,
                             members=members, p_fake=p, p_fake_raw=p, verdict="FAKE" if p >= 0.5 else "REAL"))
    out.append(VideoScan(video="/v/bqkdbcqjvb.mp4", name="bqkdbcqjvb.mp4", status="no_face",
                         reason="no face found", members={m: None for m in EIGHT}))
    out.append(VideoScan(video="/v/notes.mp4", name="notes.mp4", status="error",
                         reason="not a video: invalid data found when processing input", members={m: None for m in EIGHT}))
    return out


def render(*renderables, width: int) -> str:
    """The text the renderables print at ``width``, checked to fit it."""
    console = Console(width=width, record=True, color_system=None)
    for r in renderables:
        console.print(r)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    return text


def rows(text: str) -> dict[str, list[str]]:
    """Table rows by their first cell (cells are separated by two or more spaces)."""
    out = {}
    for line in text.splitlines():
        cells = [c for c in re.split(r" {2,}", line.strip()) if c]
        if cells and cells[0].endswith(".mp4"):
            out.setdefault(cells[0], cells)
    return out


def test_middle_ellipsis_keeps_start_and_extension():
    assert middle_ellipsis("abofeumbvv.mp4", 40) == "abofeumbvv.mp4"
    short = middle_ellipsis(LONG, 40)
    assert len(short) == 40 and short.startswith("holiday_2020_beach_party") and short.endswith("take7.mp4")
    assert "…" in short
    assert len(middle_ellipsis(LONG, 12)) == 12 and middle_ellipsis(LONG, 12).endswith(".mp4")


def test_eight_members_at_80_columns_names_pfake_and_verdicts_whole():
    results = scans()
    text = render(C.results_table(results, EIGHT, 0.5, width=80), width=80)
    r = rows(text)
    # names up to 40 characters whole; longer ones recognisable
    assert "abofeumbvv.mp4" in r and FORTY in r
    long_row = next(k for k in r if k.startswith("holiday_2020"))
    assert long_row == middle_ellipsis(LONG, 40) and long_row.endswith("take7.mp4")
    for res in results[:3]:
        cells = r[middle_ellipsis(res.name, 40)]
        assert cells[1:4] == ["1", f"{res.p_fake:.3f}", res.verdict]
    assert r["bqkdbcqjvb.mp4"][1:4] == ["0", "(0.500)", "NO FACE"]
    assert r["notes.mp4"][1:4] == ["0", "(0.500)", "ERROR"]
    assert "no face found" in text and "…" not in text.replace(long_row, "")
    # the note wraps rather than being cut: every word of the reason is there
    for word in "not a video: invalid data found when processing input".split():
        assert word in text
    # eight member columns do not fit at 80: they are left out of the main table ...
    assert "I3D" not in text and not C.table_layout(results, EIGHT, 80)[1]


def test_member_scores_table_at_80_columns():
    results = scans()
    tables = C.member_scores_tables(results, EIGHT, width=80)
    assert len(tables) == 1
    text = render(*tables, width=80)
    header = next(line for line in text.splitlines() if line.startswith("video"))
    assert header.split()[1:] == ["I3D", "I3D-CM", "R3D34", "MC3", "MC3-224", "R21D", "R21D-CM", "SE2D"]
    r = rows(text)
    first = r["abofeumbvv.mp4"]
    assert first[1:] == [f"{results[0].members[m]:.3f}" for m in EIGHT]
    assert r["bqkdbcqjvb.mp4"][1:] == ["-"] * 8
    long_row = next(k for k in r if k.startswith("holi"))
    assert long_row.endswith(".mp4") and "…" in long_row


def test_narrow_terminal_splits_member_table():
    results = scans()
    tables = C.member_scores_tables(results, EIGHT, width=50)
    assert len(tables) == 2
    text = render(*tables, width=50)
    for m in EIGHT:
        assert MEMBERS[m].label in text.split()


@pytest.mark.parametrize("width", [200, 250])
def test_wide_terminal_shows_members_inline(width):
    results = scans()
    assert C.table_layout(results, EIGHT, width)[1]
    text = render(C.results_table(results, EIGHT, 0.5, width=width), width=width)
    r = rows(text)
    cells = r["abofeumbvv.mp4"]
    assert cells[2:10] == [f"{results[0].members[m]:.3f}" for m in EIGHT]
    assert cells[10:12] == [f"{results[0].p_fake:.3f}", results[0].verdict]
    assert FORTY in r and middle_ellipsis(LONG, 40) in r  # names are capped at 40 at any width
    # ... unless asked to keep them in a second table
    text = render(C.results_table(results, EIGHT, 0.5, width=width, inline_members=False), width=width)
    assert "I3D" not in text


def test_print_results_hint_and_second_table(monkeypatch, capsys):
    from dfdc_cli import ui

    monkeypatch.setattr(ui.console, "width", 80)
    results = scans()
    C.print_results(results, EIGHT, 0.5)
    out, err = capsys.readouterr()
    assert "I3D-CM" not in out and "--members-table" in err and "I3D-CM = i3d_cutmix_224" in err
    C.print_results(results, EIGHT, 0.5, members_table=True)
    out, err = capsys.readouterr()
    assert "p(fake) per member" in out and "I3D-CM" in out and "--members-table" not in err
    assert max(len(line) for line in out.splitlines()) <= 80


def eval_report(members, bootstrap: int) -> dict:
    """The metrics of ``members`` + the ensemble on 24 labelled videos, through eval's own arithmetic."""
    from dfdc_cli.evaluate.report import evaluate_results
    from dfdc_cli.scan.results import FaceScore, VideoScan
    from dfdc_cli.evaluate.report import Labelled
    from pathlib import Path

    import numpy as np

    rng = np.random.default_rng(0)
    results, items = [], []
    for i in range(24):
        label = i % 2
        scores = {m: round(float(np.clip(0.35 + 0.2 * label + rng.normal(0, 0.2), 0.01, 0.99)), 3) for m in members}
        p = sum(scores.values()) / len(scores)
        face = FaceScore(tube_id=0, first_frame=0, last_frame=99, n_frames=100, box=[0, 0, 50, 50],
                         mean_prob=0.99, members=scores, p_fake=p)
        results.append(VideoScan(video=f"/v/{i}.mp4", name=f"{i}.mp4", status="ok", n_faces=1, faces=[face],
                                 members=scores, p_fake=p, p_fake_raw=p, verdict="FAKE" if p >= 0.5 else "REAL"))
        items.append(Labelled(Path(f"/v/{i}.mp4"), f"{i}.mp4", label))
    return evaluate_results(results, items, members, bootstrap=bootstrap, seed=0)


def line_of(text: str, first: str) -> str:
    return next(ln.rstrip() for ln in text.splitlines() if ln.split()[:1] == [first])


def eval_text(report, width: int) -> tuple[str, bool]:
    from dfdc_cli.commands.evaluate import metrics_tables

    tables, short = metrics_tables(report, width)
    return render(*tables, width=width), short


def test_eval_table_at_80_columns_puts_intervals_on_their_own_line():
    from dfdc_cli.commands.scan import member_label

    report = eval_report(EIGHT, bootstrap=50)
    text, short = eval_text(report, 80)
    lines = text.splitlines()
    assert "…" not in text  # nothing cut: no "resnet…", "[0.22…", "(81F/1…"
    assert short  # eight whole names and six intervals do not fit 80
    for level in ("video", "tube"):
        for name, fig in report[level].items():
            # each model is one line: its label, its six figures, its count ...
            row = next(re.split(r"\s+", ln.strip()) for ln in lines if ln.split()[:1] == [member_label(name)])
            assert row[1:] == [f"{fig[k]:.3f}" for k in ("log_loss", "roc_auc", "average_precision", "accuracy",
                                                       "balanced_accuracy", "eer")] + [str(fig["n"])]
    # ... and the line under it holds its intervals and its FAKE/REAL counts
    ens = report["video"]["ensemble"]
    at = next(i for i, ln in enumerate(lines) if ln.startswith("ensemble"))
    ci = lines[at + 1].split()
    assert ci[:2] == ["95%", "CI"] and ci[-1] == f"{ens['n_fake']}F/{ens['n_real']}R"
    assert ci[3] == f"{ens['ci']['roc_auc']['lo']:.2f}\u2013{ens['ci']['roc_auc']['hi']:.2f}"


def test_eval_table_keeps_whole_names_and_intervals_beside_the_figures_where_they_fit():
    report = eval_report(["r2plus1d_112", "r2plus1d_cutmix_112"], bootstrap=50)
    wide, short = eval_text(report, 200)
    assert not short and "r2plus1d_cutmix_112" in wide and "95% CI" not in wide
    auc = report["video"]["r2plus1d_112"]
    assert f"{auc['roc_auc']:.3f} [{auc['ci']['roc_auc']['lo']:.3f}, {auc['ci']['roc_auc']['hi']:.3f}]" in wide
    # narrower, the intervals move to a line of their own before names are shortened ...
    middle, short = eval_text(report, 100)
    assert not short and "r2plus1d_cutmix_112" in middle and "95% CI" in middle and "…" not in middle
    # ... and at 80 the names become short labels, not look-alike truncations (r2plus1…)
    narrow, short = eval_text(report, 80)
    assert short and "R21D-CM" in narrow and "r2plus1" not in narrow and "…" not in narrow
    # without intervals, a model and its counts to a line
    plain, short = eval_text(eval_report(["r2plus1d_112", "r2plus1d_cutmix_112"], bootstrap=0), 80)
    assert "95% CI" not in plain and "…" not in plain
    assert line_of(plain, "R21D-CM").endswith("  24 (12F/12R)")
    plain, short = eval_text(eval_report(["i3d_224"], bootstrap=0), 80)
    assert not short and line_of(plain, "i3d_224").endswith("  24 (12F/12R)")


def test_the_hint_for_left_out_member_scores_says_only_what_helps(monkeypatch, capsys):
    """At 80 columns eight members' scores are left out and the hint names their short labels; one
    member's score is the video's p(fake), so nothing is left out and there is no hint."""
    from dfdc_cli import ui
    from dfdc_cli.scan.ensemble import VerdictRule

    monkeypatch.setattr(ui.console, "width", 80)
    C.print_results(scans(), EIGHT, VerdictRule.single(0.5))
    err = capsys.readouterr().err
    assert "--members-table" in err and "MC3 = mc3_112" in err
    one = ["efficientnet_lite0_224"]  # its label is its whole name: no room beside the note at 80
    results = scans()
    for r in results:
        r.members = {"efficientnet_lite0_224": r.members["mc3_112"]}
    C.print_results(results, one, VerdictRule.single(0.5))
    out, err = capsys.readouterr()
    assert "--members-table" not in err and "abofeumbvv.mp4" in out
