#!/usr/bin/env bash
# The main job, from a fresh clone: set up, then restore every face of a real group photo (insightface's t1.jpg, six
# people) end to end: detect -> align -> restore -> paste back.
# No trained HonestFace weights exist offline, so this writes tiny RANDOM-weight models first: the restored faces are
# noise-like by design, but every stage runs for real. Put real weights in models/ (see `honestface check`) and run
#   .venv/bin/honestface restore YOUR.jpg --refs REF_DIR --out outputs/
# for real restorations.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --demo
OUT=outputs/demo
MODELS=.cache/demo-models
mkdir -p "$OUT"
.venv/bin/honestface check --models "$MODELS"
.venv/bin/honestface make-test-models "$MODELS"
PHOTO=$(.venv/bin/python -c "import insightface, os; print(os.path.join(os.path.dirname(insightface.__file__), 'data', 'images', 't1.jpg'))")
.venv/bin/honestface restore "$PHOTO" --blind --detector yunet --models "$MODELS" --out "$OUT"
echo "[demo] restored image(s) written to $OUT/"
