"""`deepfake report`: a scan's report folder rebuilt from its --json output."""

from __future__ import annotations

from pathlib import Path

import typer

from dfdc_cli.runtime import DEVICE_HELP, resolve_device

HELP = """Write the report folder of a scan from its --json output (what `scan --report` writes).

An index ordered by p(fake) with thumbnails, and a page per video: each face's frame strip with
its boxes and p(fake) per member, the timeline of p(fake) over the video (per frame for frame
models, per tube for 3D members), Grad-CAM heatmaps beside the plain crops, and the technical
facts. The pictures are taken from the videos again (a video that moved gets its page without
them); the heatmaps need the members that judged, with the same model ids.
"""


def register(app: typer.Typer) -> None:
    @app.command("report", help=HELP)
    def report_cmd(
        scan_json: Path = typer.Argument(..., help="The --json output of `deepfake scan`.", show_default=False),
        out: Path = typer.Option(..., "--out", "-o", help="The report folder (new, empty, or an earlier report).",
                                 show_default=False),
        heatmaps: bool = typer.Option(True, "--heatmaps/--no-heatmaps", help="Grad-CAM maps (loads the members)."),
        device: str = typer.Option("cpu", "--device", help=DEVICE_HELP + " (for the heatmaps)."),
    ) -> None:
        from dfdc_cli.report.build import check_out, load_scan_json, write_report_with_progress
        from dfdc_cli.ui import err_console

        out = check_out(out)
        doc = load_scan_json(scan_json)
        write_report_with_progress(doc, out, members=None if heatmaps else {}, device=resolve_device(device))
        err_console.print(f"wrote {out / 'index.html'} ({len(doc['videos'])} videos)", highlight=False)
