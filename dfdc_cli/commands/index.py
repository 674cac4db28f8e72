"""`deepfake index merge DIR`: join the parts that `--shard K/N` runs wrote into one folder."""

from __future__ import annotations

from pathlib import Path

import typer

from dfdc_cli.errors import UserError
from dfdc_cli.ui import console, warn

index_app = typer.Typer(help="The tube index of `deepfake extract` (and the outputs of sharded scans).",
                        no_args_is_help=True)


@index_app.command("merge")
def merge_cmd(
    folder: Path = typer.Argument(..., help="The folder the shards wrote into (--out of extract, or of scan's "
                                  "--json/--csv).", show_default=False),
) -> None:
    """Fold the shards' parts into one index (videos.csv, tubes.csv) and one file per scan output.

    Reading a folder with parts merges them anyway (train, scan --index and eval --index do); merging makes it
    one table again. Run it after the last shard has finished; merging twice is harmless.
    """
    from dfdc_cli.faces.index import merge_parts, table_paths
    from dfdc_cli.scale.shard import Merged, merge_outputs

    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    shards, n_videos, n_tubes = merge_parts(folder)
    by_n: dict[int, list[int]] = {}
    for k, n in shards:
        by_n.setdefault(n, []).append(k)
    videos_csv = table_paths(folder)[0]
    done = [*(Merged(videos_csv, n, ks, n_videos) for n, ks in sorted(by_n.items())), *merge_outputs(folder)]
    if not done:
        console.print(f"{folder}: no parts to merge (nothing written with --shard K/N here)", highlight=False)
        return
    for m in done:
        what = f"{n_videos} videos, {n_tubes} tubes" if m.target.name == "videos.csv" else f"{m.rows} videos"
        target = "videos.csv + tubes.csv" if m.target.name == "videos.csv" else m.target.name
        console.print(f"{folder / target}: {len(m.found)} of {m.n} parts merged ({what})", highlight=False)
        if m.missing:
            warn(f"{m.target.name}: no part from shard(s) {', '.join(map(str, m.missing))} of {m.n} "
                 "(still running, failed, or had no videos)")


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
