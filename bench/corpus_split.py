"""The built-in model's person split on the public corpus (bench/train_builtin.sh).

``held-out MANIFEST``: the people a run must hold out, as a TOML list for ``--set data.val_groups=...``:
every person involved in a FAKE video of the manifest: its ``identity`` (for a Celeb-DF swap
``idA_idB_N``, the target A) and, for Celeb-DF, the donor B of the face. The trainer holds these out
with all their videos, plus ``data.val_fraction`` of the other people.

``eval-csv MANIFEST INDEX RUN OUT``: the validation CSV for `deepfake eval --val`: the manifest's FAKE
videos and the REAL videos whose tubes the run (its ``split.json``) held out."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd


def involved(manifest: str) -> list[str]:
    m = pd.read_csv(manifest, dtype=str).fillna("")
    fakes = m[m["label"].str.upper() == "FAKE"]
    people = set(fakes["identity"])
    for f in fakes["file"]:
        donor = re.search(r"celebdf__id\d+_id(\d+)_", f)
        if donor:
            people.add(f"celebdf_id{donor.group(1)}")
    return sorted(p for p in people if p)


def eval_rows(manifest: str, index: str, run: str) -> list[tuple[str, str]]:
    root = Path(manifest).resolve().parent
    m = pd.read_csv(manifest, dtype=str).fillna("")
    tubes = pd.read_csv(Path(index) / "tubes.csv", dtype=str).fillna("")
    held = set(json.loads((Path(run) / "split.json").read_text())["val_tubes"])
    reals = sorted(set(tubes.loc[tubes["tube_path"].isin(held), "video"]))
    fakes = [str(root / f) for f in m.loc[m["label"].str.upper() == "FAKE", "file"]]
    return [(f, "FAKE") for f in fakes] + [(r, "REAL") for r in reals]


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "held-out":
        print("[" + ", ".join(f'"{p}"' for p in involved(args[0])) + "]")
    elif cmd == "eval-csv":
        rows = eval_rows(*args[:3])
        pd.DataFrame(rows, columns=["filename", "label"]).to_csv(args[3], index=False)
        print(f"{args[3]}: {sum(lab == 'FAKE' for _f, lab in rows)} FAKE, {sum(lab == 'REAL' for _f, lab in rows)} REAL")
    else:
        sys.exit(f"unknown command {cmd!r}: held-out | eval-csv")
