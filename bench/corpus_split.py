"""The built-in model's person split on the public corpora (bench/train_builtin.sh).

``manifest OUT MANIFEST...``: one manifest of several corpora (their ``file`` columns made absolute), as
``data.groups_csv`` and the commands below read it.

``held-out MANIFEST``: the people a run must hold out, as a TOML list for ``--set data.val_groups=...``:
every person involved in a FAKE video of the manifest: its ``identity`` (for a Celeb-DF swap
``idA_idB_N``, the target A) and, for Celeb-DF, the donor B of the face. The trainer holds these out
with all their videos, plus ``data.val_fraction`` of the other people.

``eval-csvs MANIFEST INDEX RUN OUTDIR``: the validation CSVs for `deepfake eval --val`, one per group
(README "Built-in model"): each group's FAKE videos against every REAL video whose tubes the run (its
``split.json``) held out, and the two halves ``tune`` / ``test`` of the held-out people.

The halves are fixed by a rule written down before any figure was seen: a person (a fake's
``identity``; a real video's person) is in ``test`` when the first hex digit of the SHA-1 of the id is
0-7, else in ``tune``. Only ``tune`` is used for choices (the calibration and the UNSURE band);
``test`` is reported on its own."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pandas as pd

# Fake groups by the manifests' `dataset` column (corpus/README.md, corpus2/README.md).
GROUPS: dict[str, tuple[str, ...]] = {
    "corpus_fakes": ("celebdf", "ffpp", "uadfv", "demo"),  # corpus 1's 14 face swaps
    "ghost": ("ghost_demo",),
    "wav2lip": ("wav2lip_demo",),
    "generated": ("vasa1_demo", "emo_demo", "edtalk_demo", "anitalker_demo", "musev_demo"),
}
SWAPS = ("corpus_fakes", "ghost")  # the face swaps the shipping bar is measured on


def half(identity: str) -> str:
    return "test" if hashlib.sha1(identity.encode()).hexdigest()[0] in "01234567" else "tune"


def merge(out: str, manifests: list[str]) -> None:
    frames = []
    for mf in manifests:
        root = Path(mf).resolve().parent
        m = pd.read_csv(mf, dtype=str).fillna("")
        m["file"] = [str(root / f) for f in m["file"]]
        m["corpus"] = root.name
        frames.append(m)
    table = pd.concat(frames, ignore_index=True)
    names = table["file"].map(lambda f: Path(f).name)
    if names.duplicated().any():
        sys.exit(f"two corpora share a file name: {names[names.duplicated()].iloc[0]}")
    table.to_csv(out, index=False)


def involved(manifest: str) -> list[str]:
    m = pd.read_csv(manifest, dtype=str).fillna("")
    fakes = m[m["label"].str.upper() == "FAKE"]
    people = set(fakes["identity"])
    for f in fakes["file"]:
        donor = re.search(r"celebdf__id\d+_id(\d+)_", f)
        if donor:
            people.add(f"celebdf_id{donor.group(1)}")
    return sorted(p for p in people if p)


def eval_tables(manifest: str, index: str, run: str) -> dict[str, pd.DataFrame]:
    root = Path(manifest).resolve().parent
    m = pd.read_csv(manifest, dtype=str).fillna("")
    m["path"] = [f if Path(f).is_absolute() else str(root / f) for f in m["file"]]
    person = dict(zip(m["file"].map(lambda f: Path(f).name), m["identity"]))
    tubes = pd.read_csv(Path(index) / "tubes.csv", dtype=str).fillna("")
    held = set(json.loads((Path(run) / "split.json").read_text())["val_tubes"])
    reals = sorted(set(tubes.loc[tubes["tube_path"].isin(held), "video"]))
    real_rows = pd.DataFrame({"filename": reals, "label": "REAL", "group": "real",
                              "identity": [person.get(Path(r).name, Path(r).name) for r in reals]})
    fakes = m[m["label"].str.upper() == "FAKE"]
    group_of = {d: g for g, ds in GROUPS.items() for d in ds}
    fake_rows = pd.DataFrame({"filename": fakes["path"], "label": "FAKE",
                              "group": fakes["dataset"].map(lambda d: group_of.get(d, "other")),
                              "identity": fakes["identity"]})
    both = pd.concat([fake_rows, real_rows], ignore_index=True)
    both["half"] = both["identity"].map(half)
    tables = {"all": both}
    for g in GROUPS:
        tables[g] = pd.concat([fake_rows[fake_rows["group"] == g], real_rows])
    tables["swaps"] = pd.concat([fake_rows[fake_rows["group"].isin(SWAPS)], real_rows])
    for h in ("tune", "test"):
        tables[h] = both[both["half"] == h]
        tables[f"swaps_{h}"] = both[(both["half"] == h) & both["group"].isin(("real",) + SWAPS)]
    return tables


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "manifest":
        merge(args[0], args[1:])
    elif cmd == "held-out":
        print("[" + ", ".join(f'"{p}"' for p in involved(args[0])) + "]")
    elif cmd == "eval-csvs":
        out = Path(args[3])
        out.mkdir(parents=True, exist_ok=True)
        for name, t in eval_tables(*args[:3]).items():
            t.to_csv(out / f"{name}.csv", index=False)
            print(f"{out / name}.csv: {(t['label'] == 'FAKE').sum()} FAKE, {(t['label'] == 'REAL').sum()} REAL")
    else:
        sys.exit(f"unknown command {cmd!r}: manifest | held-out | eval-csvs")
