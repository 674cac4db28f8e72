"""`deepfake scan`'s table fitted to the terminal: at 80 columns (rich's width when output is not a
terminal) with all eight members, video names, p(fake) and verdicts are whole; member scores are
columns when they fit, a compact second table when asked."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from dfdc_cli.commands import scan as C
from dfdc_cli.scanresult import FaceScore, VideoScan
from dfdc_cli.ui import middle_ellipsis
from models.specs import MEMBERS

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


def test_eval_table_uses_short_labels_where_whole_names_do_not_fit():
    from rich.console import Console

    from dfdc_cli.commands.evaluate import _needs_short_names, metrics_table

    fig = {"log_loss": 0.5, "roc_auc": 0.7, "average_precision": 0.6, "accuracy": 0.6,
           "balanced_accuracy": 0.6, "eer": 0.3, "n": 3, "n_fake": 2, "n_real": 1, "notes": []}
    level = {"r2plus1d_112": fig, "r2plus1d_cutmix_112": fig, "ensemble": fig}

    def render(width: int) -> str:
        con = Console(width=width, record=True, file=io.StringIO())
        con.print(metrics_table(level, "video level", _needs_short_names(level, width)))
        return con.export_text()

    narrow, wide = render(80), render(160)
    assert "R21D " in narrow and "R21D-CM" in narrow and "r2plus1" not in narrow  # no look-alike truncations
    assert "r2plus1d_cutmix_112" in wide and "R21D-CM" not in wide
