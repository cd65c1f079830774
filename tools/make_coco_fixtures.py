"""Writes randomized COCO keypoint evaluation cases and pycocotools' answers.

For each case: `caseN_gt.json` (COCO person-keypoints ground truth),
`caseN_dt.json` (keypoint results) and an entry of `expected_stats.json`
holding the 10 numbers `COCOeval(iouType="keypoints").stats` prints.
mixq's Rust evaluator must reproduce every number (tests/cocoeval_parity.rs).

Usage: python tools/make_coco_fixtures.py tests/fixtures/coco
(tools/make_coco_fixtures.sh makes the venv with pinned pycocotools/numpy).
"""

import contextlib
import io
import json
import os
import sys

import numpy as np
import pycocotools
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

NUM_KPT = 17


def r2(x):
    return float(round(float(x), 2))


def r1(x):
    # predictions at 0.1 px keep the committed files small
    return float(round(float(x), 1))


def make_gt_person(rng, ann_id, image_id, w_img, h_img, size_range, zero_kpts=False):
    s = float(np.exp(rng.uniform(np.log(size_range[0]), np.log(size_range[1]))))
    bw = s * rng.uniform(0.4, 0.9)
    bh = s
    x = rng.uniform(-0.1 * bw, w_img - 0.9 * bw)
    y = rng.uniform(-0.1 * bh, h_img - 0.9 * bh)
    kpts = []
    vis = rng.choice([0, 1, 2], size=NUM_KPT, p=[0.2, 0.2, 0.6])
    if zero_kpts:
        vis[:] = 0
    for k in range(NUM_KPT):
        if vis[k] == 0:
            kpts += [0, 0, 0]
        else:
            kpts += [r1(x + rng.uniform(0, bw)), r1(y + rng.uniform(0, bh)), int(vis[k])]
    area = r2(bw * bh * rng.uniform(0.4, 0.8))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "keypoints": kpts,
        "num_keypoints": int(np.count_nonzero(vis)),
        "bbox": [r2(x), r2(y), r2(bw), r2(bh)],
        "area": area,
        "iscrowd": 0,
    }


def make_det(rng, gt, image_id, noise):
    """A prediction near a ground truth: visible keypoints jittered, the
    others placed somewhere in (or near) the box."""
    x, y, bw, bh = gt["bbox"]
    scale = np.sqrt(max(gt["area"], 1.0))
    kpts = []
    for k in range(NUM_KPT):
        gx, gy, v = gt["keypoints"][3 * k : 3 * k + 3]
        if v > 0:
            px = gx + rng.normal(0, noise * scale)
            py = gy + rng.normal(0, noise * scale)
        else:
            px = x + rng.uniform(-0.2, 1.2) * bw
            py = y + rng.uniform(-0.2, 1.2) * bh
        kpts += [r1(px), r1(py), r1(rng.uniform(0, 1))]
    return {"image_id": image_id, "category_id": 1, "keypoints": kpts, "score": r2(rng.uniform(0.05, 1.0))}


def make_random_det(rng, image_id, w_img, h_img, category_id=1):
    cx, cy = rng.uniform(0, w_img), rng.uniform(0, h_img)
    s = rng.uniform(10, 150)
    kpts = []
    for _ in range(NUM_KPT):
        kpts += [r1(cx + rng.uniform(-s, s) * 0.4), r1(cy + rng.uniform(-s, s) * 0.5), r1(rng.uniform(0, 1))]
    return {"image_id": image_id, "category_id": category_id, "keypoints": kpts, "score": r2(rng.uniform(0.05, 1.0))}


def make_case(seed, opts):
    rng = np.random.default_rng(seed)
    w_img, h_img = 640, 480
    n_images = opts.get("n_images", 13)
    images, anns, dets = [], [], []
    ann_id = opts.get("first_ann_id", 1)
    size_range = opts.get("size_range", (15, 400))
    for i in range(n_images):
        image_id = 100 + 7 * i if opts.get("sparse_ids") else i + 1
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w_img, "height": h_img})
        kind = rng.uniform()
        n_gt = 0 if kind < 0.12 else int(rng.integers(1, 6))
        gts = []
        for _ in range(n_gt):
            zero = rng.uniform() < 0.12
            g = make_gt_person(rng, ann_id, image_id, w_img, h_img, size_range, zero_kpts=zero)
            if opts.get("inconsistent_num_keypoints") and rng.uniform() < 0.15:
                g["num_keypoints"] = 0  # the field, not the keypoints, decides `ignore`
            ann_id += 1
            gts.append(g)
        if rng.uniform() < opts.get("crowd_prob", 0.25):
            bw, bh = rng.uniform(80, 300), rng.uniform(60, 200)
            bx, by = rng.uniform(0, w_img - bw), rng.uniform(0, h_img - bh)
            gts.append({
                "id": ann_id, "image_id": image_id, "category_id": 1,
                "keypoints": [0] * (3 * NUM_KPT), "num_keypoints": 0,
                "bbox": [r2(bx), r2(by), r2(bw), r2(bh)], "area": r2(bw * bh * 0.5),
                "iscrowd": 1, "segmentation": {"counts": [], "size": [h_img, w_img]},
            })
            ann_id += 1
            # predictions inside the crowd region
            for _ in range(int(rng.integers(1, 4))):
                kpts = []
                for _ in range(NUM_KPT):
                    kpts += [r1(bx + rng.uniform(-0.5, 1.5) * bw), r1(by + rng.uniform(-0.5, 1.5) * bh), 1.0]
                dets.append({"image_id": image_id, "category_id": 1, "keypoints": kpts, "score": r2(rng.uniform(0, 1))})
        anns += gts
        no_dets = rng.uniform() < 0.1
        if no_dets:
            continue
        for g in gts:
            if g["iscrowd"]:
                continue
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
                dets.append(make_det(rng, g, image_id, noise=float(rng.choice([0.01, 0.03, 0.08, 0.3]))))
        for _ in range(int(rng.integers(0, 4))):
            dets.append(make_random_det(rng, image_id, w_img, h_img))
        if opts.get("many_dets") and i % 6 == 0:
            for _ in range(25):
                if gts and rng.uniform() < 0.5:
                    g = gts[int(rng.integers(0, len(gts)))]
                    if not g["iscrowd"]:
                        dets.append(make_det(rng, g, image_id, noise=0.08))
                        continue
                dets.append(make_random_det(rng, image_id, w_img, h_img))
        if opts.get("extra_category") and rng.uniform() < 0.5:
            dets.append(make_random_det(rng, image_id, w_img, h_img, category_id=2))
    for a in opts.get("boundary_areas", []):
        # areas exactly on the medium/large bounds (ranges are inclusive)
        g = make_gt_person(rng, ann_id, images[0]["id"], w_img, h_img, (40, 120))
        g["area"] = a
        ann_id += 1
        anns.append(g)
        dets.append(make_det(rng, g, images[0]["id"], noise=0.05))
    if opts.get("id_zero"):
        # pycocotools stores a match as the gt id, so a gt with id 0 never counts as matched
        g = make_gt_person(rng, 0, images[0]["id"], w_img, h_img, (60, 90))
        g["keypoints"][2] = 2
        g["num_keypoints"] = sum(1 for v in g["keypoints"][2::3] if v > 0)
        anns.append(g)
        dets.append(make_det(rng, g, images[0]["id"], noise=0.01))
        dets[-1]["score"] = 0.99
    if opts.get("det_bbox"):
        for d in dets:
            xs, ys = d["keypoints"][0::3], d["keypoints"][1::3]
            d["bbox"] = [min(xs), min(ys), r2(rng.uniform(0.5, 1.2) * (max(xs) - min(xs))), r2(rng.uniform(0.5, 1.2) * (max(ys) - min(ys)))]
    order = rng.permutation(len(dets))
    dets = [dets[i] for i in order]
    cats = [{"id": 1, "name": "person", "supercategory": "person",
             "keypoints": ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                           "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                           "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"],
             "skeleton": [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
                          [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]}]
    if opts.get("extra_category"):
        cats.append({"id": 2, "name": "other", "supercategory": "other"})
    return {"images": images, "annotations": anns, "categories": cats}, dets


CASES = [
    (1, {}),
    (2, {"many_dets": True, "n_images": 12}),
    (3, {"extra_category": True, "sparse_ids": True}),
    (4, {"det_bbox": True, "inconsistent_num_keypoints": True}),
    (5, {"id_zero": True, "boundary_areas": [1024.0, 9216.0, 1023.99, 9216.01]}),
    (6, {"size_range": (8, 30), "n_images": 10}),
    (7, {"many_dets": True, "crowd_prob": 0.6, "n_images": 14}),
    (8, {"size_range": (60, 300), "n_images": 12}),
]


def evaluate(gt_path, dt_path):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        dt = gt.loadRes(dt_path)
        e = COCOeval(gt, dt, "keypoints")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [float(x) for x in e.stats]


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    expected = {"pycocotools": pycocotools.__version__ if hasattr(pycocotools, "__version__") else "see requirements",
                "numpy": np.__version__, "cases": {}}
    for seed, opts in CASES:
        gt, dets = make_case(seed, opts)
        name = f"case{seed}"
        gt_path = os.path.join(out_dir, f"{name}_gt.json")
        dt_path = os.path.join(out_dir, f"{name}_dt.json")
        with open(gt_path, "w") as f:
            json.dump(gt, f, separators=(",", ":"))
        with open(dt_path, "w") as f:
            json.dump(dets, f, separators=(",", ":"))
        stats = evaluate(gt_path, dt_path)
        expected["cases"][name] = {"options": opts, "stats": stats}
        print(name, len(gt["annotations"]), "gt", len(dets), "dt", " ".join(f"{s:.4f}" for s in stats))
    with open(os.path.join(out_dir, "expected_stats.json"), "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/coco")
