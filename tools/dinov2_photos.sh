#!/usr/bin/env bash
# Real photos with clear licences for the DINOv2-S figures, from PyPI packages (pip download
# only, nothing else from the network):
#   calibration: 18 photos: 9 colour ones of scikit-image 0.26.0 (skimage/data: astronaut,
#     chelsea, coffee, motorcycle_left/right, rocket, hubble_deep_field, retina, ihc), 7 grey
#     ones of the same package (brick, grass, gravel, camera, coins, moon, clock_motion; read as
#     RGB), all public domain / CC0 / no known copyright restrictions (the docstrings of
#     skimage.data), and scikit-learn 1.5.2's china.jpg and flower.jpg (CC BY 2.0, Flickr users
#     danielbuechele and vultilion; sklearn/datasets/images/README.txt)
#   evaluation:  the 20 ImageNet validation JPEGs of foolbox 3.3.4 (foolbox/data/imagenet_*)
# into $MIXQ_DATA/photos/{calib,eval}/photos/ (ImageNet-style folders of one class), disjoint.
set -euo pipefail
cd "$(dirname "$0")/.."
export MIXQ_DATA=${MIXQ_DATA:-$PWD/target/data}
OUT="$MIXQ_DATA/photos"
TMP=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
  foolbox==3.3.4 scikit-image==0.26.0 scikit-learn==1.5.2 -d "$TMP"
mkdir -p "$OUT/calib/photos" "$OUT/eval/photos"
python3 - "$TMP" "$OUT" <<'PY'
import glob, os, sys, zipfile
tmp, out = sys.argv[1:3]
sk = zipfile.ZipFile(glob.glob(os.path.join(tmp, "scikit_image-*.whl"))[0])
for name in ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
             "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
             "brick.png", "grass.png", "gravel.png", "camera.png", "coins.png", "moon.png",
             "clock_motion.png"]:
    open(os.path.join(out, "calib/photos", name), "wb").write(sk.read("skimage/data/" + name))
sl = zipfile.ZipFile(glob.glob(os.path.join(tmp, "scikit_learn-*.whl"))[0])
for name in ["china.jpg", "flower.jpg"]:
    open(os.path.join(out, "calib/photos", name), "wb").write(sl.read("sklearn/datasets/images/" + name))
fb = zipfile.ZipFile(glob.glob(os.path.join(tmp, "foolbox-*.whl"))[0])
for name in fb.namelist():
    if name.startswith("foolbox/data/imagenet_"):
        open(os.path.join(out, "eval/photos", os.path.basename(name)), "wb").write(fb.read(name))
PY
rm -rf "$TMP"
echo "calibration: $(ls "$OUT/calib/photos" | wc -l) photos, evaluation: $(ls "$OUT/eval/photos" | wc -l) photos, in $OUT"
