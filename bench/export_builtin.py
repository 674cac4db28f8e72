"""Export a trained frame model as the package's built-in model (bench/train_builtin.sh, step 4).

    python bench/export_builtin.py BEST_PT MEMBER EVAL_METRICS_JSON OUT_DIR

Writes OUT_DIR/<member>.pt (fp16 state_dict, checked to load strictly) and OUT_DIR/builtin.json with
the video-level validation figures of `deepfake eval` (metrics.json: ROC AUC, log loss, AP, with
their bootstrap intervals) so that the package says how good the model it ships is."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import builtin  # noqa: E402


def main(best: str, member: str, metrics: str, out: str) -> None:
    m = json.loads(Path(metrics).read_text())
    fig = m["video"][member]
    keep = {k: fig.get(k) for k in ("roc_auc", "log_loss", "average_precision", "n", "n_fake", "n_real")}
    extra = {"validation": {"level": "video", **keep, "ci": fig.get("ci"), "counts": m.get("counts")}}
    path = builtin.export(best, member, out, extra=extra)
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB); video AUC {keep['roc_auc']}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
