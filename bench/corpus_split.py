"""Print the people a built-in model run must hold out, as a TOML list for `--set data.val_groups=...`.

Every person involved in a FAKE video of the corpus manifest: its ``identity`` (for a Celeb-DF swap
``idA_idB_N``, the target A) and, for Celeb-DF, the donor B of the face. The trainer holds these out with
all their videos, plus ``data.val_fraction`` of the other people (bench/train_builtin.sh)."""

from __future__ import annotations

import re
import sys

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


if __name__ == "__main__":
    print("[" + ", ".join(f'"{p}"' for p in involved(sys.argv[1])) + "]")
