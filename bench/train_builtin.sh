#!/usr/bin/env bash
# Regenerate the built-in model (models/builtin/) from the public corpus, with the recipe and seed it
# shipped with (dfdc_cli/recipes/resnet18_160.toml, train.seed 0, split seed 0): extract, split by
# person, train on REAL videos with self-blended fakes, evaluate on the real fakes, export fp16.
#
#   bench/train_builtin.sh [CORPUS] [WORK]      (run from the repository root)
#
# CORPUS: the corpus folder (manifest.csv, real/, fake/) [../shared/data/corpus]
# WORK:   where tubes, the run and the report go [/tmp/deepfake-builtin]
# Budget on 2 CPU cores: extraction ~25 min, training ~45 min, evaluation ~10 min. A stopped run
# continues with `deepfake train --resume WORK/run`.
set -euo pipefail
CORPUS=$(cd "${1:-../shared/data/corpus}" && pwd)
WORK=${2:-/tmp/deepfake-builtin}
MEMBER=resnet18_160
mkdir -p "$WORK"

# 1. Face tubes of the REAL videos: up to 300 frames each, every face, the 2D crops of every frame.
deepfake extract "$CORPUS/real" --label REAL --preset train --with-2d --frames-2d 300 --out "$WORK/tubes"

# 2. Train: every person involved in a FAKE video (Celeb-DF targets and donors) and 15% of the others
#    are held out with all their videos; fakes are self-blended real frames only.
if [ -f "$WORK/run/last.pt" ]; then  # continue (or re-register) an earlier run
  deepfake train --resume "$WORK/run"
else
  HELD_OUT=$(python bench/corpus_split.py held-out "$CORPUS/manifest.csv")  # (fails the script if it fails)
  deepfake train --arch resnet18 --res 160 --index "$WORK/tubes" --fakes self-blended \
    --set data.groups_csv=\""$CORPUS/manifest.csv"\" \
    --set "data.val_groups=$HELD_OUT" \
    --run-dir "$WORK/run"
fi

# 3. Validate on the real fakes: the 14 FAKE videos against the REAL videos of the held-out people,
#    with the trained weights as scan would use them.
python bench/corpus_split.py eval-csv "$CORPUS/manifest.csv" "$WORK/tubes" "$WORK/run" "$WORK/val.csv"
deepfake eval --val "$WORK/val.csv" --members "$MEMBER" --bootstrap 1000 --out "$WORK/eval"

# 4. Export: half precision into the package, with the validation figures.
python bench/export_builtin.py "$WORK/run/best.pt" "$MEMBER" "$WORK/eval/metrics.json" models/builtin
