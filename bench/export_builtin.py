"""Export a trained frame model as the package's built-in model (bench/train_builtin.sh, step 4).

    python bench/export_builtin.py BEST_PT MEMBER EVAL_METRICS_JSON OUT_DIR [--calibration CAL_JSON]
                                   [--groups GROUPS_JSON]

Writes OUT_DIR/<member>.pt (fp16 state_dict, checked to load strictly) and OUT_DIR/builtin.json with
the video-level validation figures of `deepfake eval` (metrics.json: ROC AUC, log loss, AP, with
their bootstrap intervals) so that the package says how good the model it ships is.

When the eval report beside metrics.json holds a calibration of MEMBER (`deepfake eval --calibrate`,
or `deepfake models calibrate REPORT`: calibration.json), it is carried into builtin.json, so that the
shipped model gives calibrated p(fake) and its UNSURE band (fitted on the registered fp32 weights;
the fp16 copy's scores differ from them by ~1e-3). Fit it on videos held out from training and from
the choices made (the lead's validation set), not on the ones the model was selected on. ``--calibration`` names that
file when it is not beside the metrics (bench/train_builtin.sh fits it on the tune half), and
``--groups`` adds the per-group figures of bench/builtin_groups.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfdc_models import builtin  # noqa: E402


def main(best: str, member: str, metrics: str, out: str, calibration: str = "", groups: str = "") -> None:
    m = json.loads(Path(metrics).read_text())
    fig = m["video"][member]
    keep = {k: fig.get(k) for k in ("roc_auc", "log_loss", "average_precision", "n", "n_fake", "n_real")}
    extra = {"validation": {"level": "video", **keep, "ci": fig.get("ci"), "counts": m.get("counts")}}
    if groups:
        extra["validation"]["groups"] = json.loads(Path(groups).read_text())
    cal_file = Path(calibration) if calibration else Path(metrics).parent / "calibration.json"
    cal = json.loads(cal_file.read_text()).get("members", {}).get(member) if cal_file.is_file() else None
    if cal is not None:
        extra["calibration"] = cal["calibration"]
    path = builtin.export(best, member, out, extra=extra)
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB); video AUC {keep['roc_auc']}"
          + (f"; calibration ({cal['calibration']['method']}) from {cal_file}" if cal else "; not calibrated"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    for name in ("best", "member", "metrics", "out"):
        ap.add_argument(name)
    ap.add_argument("--calibration", default="")
    ap.add_argument("--groups", default="")
    a = ap.parse_args()
    main(a.best, a.member, a.metrics, a.out, a.calibration, a.groups)
