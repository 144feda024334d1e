"""Times pycocotools on the synthetic COCO-val-sized box problem of mustard-eval's bench.

Writes the problem as `gt.json` and `results.json` into the directory given as the first
argument (default /tmp/mustard-eval-speed), then times pycocotools' `evaluate()` and
`accumulate()` on them and prints the summary. Time mustard on the same files with

    cargo run --release -p mustard-eval --example coco_speed -- /tmp/mustard-eval-speed

The generator is the one of crates/mustard-eval/benches/synthetic/mod.rs: the same LCG drawn in
the same order, every coordinate a multiple of 1/4, so both give bit-identical problems.
"""
import contextlib
import io
import json
import sys
import time
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IMAGES, CATEGORIES, DETECTIONS_PER_IMAGE = 5000, 80, 100
MASK = (1 << 64) - 1


class Lcg:
    """Knuth's MMIX LCG; draws use the high 31 bits."""

    def __init__(self, seed):
        self.state = seed

    def below(self, n):
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) & MASK
        return (self.state >> 33) % n

    def quarter(self, offset, n):
        return (offset + self.below(n)) / 4.0

    def jitter(self):
        return (self.below(41) - 20.0) / 4.0


def problem():
    rng = Lcg(20261127)
    images = [{"id": i, "width": 640, "height": 480} for i in range(1, IMAGES + 1)]
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, CATEGORIES + 1)]
    annotations, results = [], []
    for image_id in range(1, IMAGES + 1):
        boxes = []
        for _ in range(rng.below(15)):
            category = 1 + rng.below(CATEGORIES)
            w = rng.quarter(16, 1200)
            h = rng.quarter(16, 1200)
            x = rng.quarter(0, 2400)
            y = rng.quarter(0, 1800)
            crowd = 1 if rng.below(100) == 0 else 0
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd})
            boxes.append((category, [x, y, w, h]))
        count = 0
        for category, (x, y, w, h) in boxes:
            if rng.below(5) == 0:
                continue
            dx, dy, dw, dh = rng.jitter(), rng.jitter(), rng.jitter(), rng.jitter()
            if rng.below(10) == 0:
                category = 1 + rng.below(CATEGORIES)
            score = (400 + rng.below(600)) / 1000.0
            results.append({"image_id": image_id, "category_id": category,
                            "bbox": [x + dx, y + dy, max(w + dw, 1.0), max(h + dh, 1.0)], "score": score})
            count += 1
        while count < DETECTIONS_PER_IMAGE:
            category = 1 + rng.below(CATEGORIES)
            w = rng.quarter(16, 800)
            h = rng.quarter(16, 800)
            x = rng.quarter(0, 2400)
            y = rng.quarter(0, 1800)
            score = rng.below(700) / 1000.0
            results.append({"image_id": image_id, "category_id": category, "bbox": [x, y, w, h], "score": score})
            count += 1
    return {"images": images, "categories": categories, "annotations": annotations}, results


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/mustard-eval-speed")
    out.mkdir(parents=True, exist_ok=True)
    gt, results = problem()
    with open(out / "gt.json", "w") as f:
        json.dump(gt, f)
    with open(out / "results.json", "w") as f:
        json.dump(results, f)
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} ground-truth boxes, {len(results)} detections")

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(out / "gt.json"))
        coco_dt = coco_gt.loadRes(str(out / "results.json"))
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        ev.evaluate()
        mid = time.perf_counter()
        ev.accumulate()
        end = time.perf_counter()
    ev.summarize()
    print("stats", [float(s) for s in ev.stats])
    print(f"pycocotools: evaluate {mid - start:.2f} s, accumulate {end - mid:.2f} s, total {end - start:.2f} s")


if __name__ == "__main__":
    main()
