"""COCO evaluation side by side: mustard, hotcoco, ultrafast-pycocotools, faster-coco-eval and
pycocotools on the same generated files, whole process and evaluation alone, with peak memory.

    python bench/eval_compare.py [--dir DIR] [--images 5000,50000] [--types bbox,segm,keypoints]
                                 [--threads 2,1] [--runs 5] [--mustard PATH]

`cargo xtask bench --compare-only --compare eval` runs it in the benchmark's virtual environment
(`pip install hotcoco==1.3.0 ultrafast-pycocotools==0.1.14 faster-coco-eval pycocotools`).

For each set (kind x number of images) it writes `gt.json` and `results.json` under DIR once
(seeded numpy draws; rerunning reuses them), then runs every evaluator in a fresh process: the
fast ones (mustard, hotcoco, ultrafast-pycocotools) `--runs` times per thread count, interleaved
(one run of each in turn, so that a noisy minute hits all of them), the slow references
(faster-coco-eval, pycocotools) once, and on the large sets only with `--references-everywhere`.
Whole process = wall time of the child from its start to its exit (interpreter start and imports
included for the Python packages); evaluation alone = evaluate + accumulate + summarize as timed
inside the child; peak memory = the child's maximum resident set (`wait4`). Every evaluator's 12
(or 10) summary numbers must equal pycocotools' (or, where pycocotools did not run, each other's)
to the last bit: a difference is printed and makes the exit status non-zero.

Thread counts are set with RAYON_NUM_THREADS and OMP_NUM_THREADS (mustard, hotcoco and
ultrafast-pycocotools use rayon; faster-coco-eval and pycocotools one thread).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CATEGORIES = 80
WIDTH, HEIGHT = 640, 480
JOINTS = 17
SIGMAS = [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]

FAST = ["mustard", "hotcoco", "ultrafast-pycocotools"]
SLOW = ["faster-coco-eval", "pycocotools"]

# The child programs: each prints one JSON line {"load": s, "eval": s, "stats": [...]}.
PYTHON_CHILD = r"""
import contextlib, io, json, sys, time
name, gt_path, dt_path, iou_type = sys.argv[1:5]
t0 = time.perf_counter()
if name == "hotcoco":
    from hotcoco import COCO, COCOeval
elif name == "ultrafast-pycocotools":
    from ultrafast_pycocotools import COCO, COCOeval
elif name == "faster-coco-eval":
    from faster_coco_eval import COCO
    from faster_coco_eval import COCOeval_faster as COCOeval
else:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(gt_path)
    dt = gt.loadRes(dt_path)
    t1 = time.perf_counter()
    ev = COCOeval(gt, dt, iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    t2 = time.perf_counter()
print(json.dumps({"load": t1 - t0, "eval": t2 - t1, "stats": [float(s) for s in ev.stats]}))
"""


def rounded(a, step):
    return np.round(a / step) * step


def boxes(rng, n):
    """n boxes inside the image, [x, y, w, h], coordinates in hundredths."""
    w = rounded(rng.uniform(4, 300, n), 0.01)
    h = rounded(rng.uniform(4, 300, n), 0.01)
    x = rounded(rng.uniform(0, 1, n) * (WIDTH - w), 0.01)
    y = rounded(rng.uniform(0, 1, n) * (HEIGHT - h), 0.01)
    return np.stack([x, y, w, h], 1)


def jitter(rng, b):
    """Boxes moved and resized by up to a tenth of their size, kept at least 1 px."""
    d = rng.uniform(-0.1, 0.1, b.shape) * np.stack([b[:, 2], b[:, 3], b[:, 2], b[:, 3]], 1)
    out = rounded(b + d, 0.01)
    out[:, 2:] = np.maximum(out[:, 2:], 1.0)
    return out


def octagon(b, cut):
    """The box with its corners cut by `cut` of its sides: a polygon [x0, y0, x1, y1, ...]."""
    x, y, w, h = b
    cx, cy = cut * w, cut * h
    pts = [x + cx, y, x + w - cx, y, x + w, y + cy, x + w, y + h - cy,
           x + w - cx, y + h, x + cx, y + h, x, y + h - cy, x, y + cy]
    return [round(float(v), 2) for v in pts]


def polygon_area(p):
    xs, ys = np.array(p[0::2]), np.array(p[1::2])
    return float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def person_keypoints(rng, b):
    """17 joints inside box b: (x, y, v) with v in {0, 1, 2} (0 means unlabelled, x = y = 0)."""
    x, y, w, h = b
    xs = rounded(x + rng.uniform(0, 1, JOINTS) * w, 0.01)
    ys = rounded(y + rng.uniform(0, 1, JOINTS) * h, 0.01)
    v = rng.choice([0, 1, 2], JOINTS, p=[0.3, 0.2, 0.5])
    xs[v == 0] = 0
    ys[v == 0] = 0
    return np.stack([xs, ys, v], 1)


def generate(kind, images, seed):
    """Ground truth and results of one set, drawn with numpy from `seed`."""
    rng = np.random.default_rng(seed)
    imgs = [{"id": i, "width": WIDTH, "height": HEIGHT, "file_name": f"{i:012d}.jpg"}
            for i in range(1, images + 1)]
    if kind == "keypoints":
        cats = [{"id": 1, "name": "person", "supercategory": "person",
                 "keypoints": [f"joint{j}" for j in range(JOINTS)], "skeleton": []}]
    else:
        cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"}
                for c in range(1, CATEGORIES + 1)]
    anns, results = [], []
    if kind == "segm":
        from pycocotools import mask as mask_utils
    for image_id in range(1, images + 1):
        n_gt = int(rng.integers(0, 15 if kind != "keypoints" else 8))
        gt_boxes = boxes(rng, n_gt)
        gt_cats = rng.integers(1, CATEGORIES + 1, n_gt) if kind != "keypoints" else np.ones(n_gt, int)
        crowd = rng.uniform(0, 1, n_gt) < 0.01
        kept = rng.uniform(0, 1, n_gt) < 0.8
        n_fp = int(rng.integers(30, 70)) if kind != "keypoints" else int(rng.integers(5, 25))
        fp_boxes = boxes(rng, n_fp)
        dt_boxes = np.concatenate([jitter(rng, gt_boxes[kept]), fp_boxes])
        dt_cats = np.concatenate([
            np.where(rng.uniform(0, 1, kept.sum()) < 0.1,
                     rng.integers(1, CATEGORIES + 1, kept.sum()), gt_cats[kept]),
            rng.integers(1, CATEGORIES + 1, n_fp) if kind != "keypoints" else np.ones(n_fp, int)])
        if kind == "keypoints":
            dt_cats[:] = 1
        scores = np.concatenate([rng.integers(400, 1000, kept.sum()),
                                 rng.integers(0, 700, n_fp)]) / 1000.0
        gt_kp = [person_keypoints(rng, b) for b in gt_boxes] if kind == "keypoints" else None
        for g in range(n_gt):
            a = {"id": len(anns) + 1, "image_id": image_id, "category_id": int(gt_cats[g]),
                 "bbox": [float(v) for v in gt_boxes[g]], "iscrowd": int(crowd[g])}
            if kind == "segm":
                poly = octagon(gt_boxes[g], 0.2)
                a["segmentation"] = [poly]
                a["area"] = round(polygon_area(poly), 2)
            elif kind == "keypoints":
                k = gt_kp[g]
                a["keypoints"] = [float(v) if j % 3 != 2 else int(v) for j, v in enumerate(k.ravel())]
                a["num_keypoints"] = int((k[:, 2] > 0).sum())
                a["area"] = round(float(gt_boxes[g][2] * gt_boxes[g][3] * 0.6), 2)
            else:
                a["area"] = round(float(gt_boxes[g][2] * gt_boxes[g][3]), 2)
            anns.append(a)
        if kind == "segm":
            polys = [octagon(b, c) for b, c in zip(dt_boxes, rng.uniform(0.1, 0.3, len(dt_boxes)))]
            rles = mask_utils.frPyObjects(polys, HEIGHT, WIDTH) if polys else []
        matched_kp = [gt_kp[g] for g in np.flatnonzero(kept)] if kind == "keypoints" else None
        for d in range(len(dt_boxes)):
            r = {"image_id": image_id, "category_id": int(dt_cats[d]), "score": float(scores[d])}
            if kind == "segm":
                r["segmentation"] = {"size": [HEIGHT, WIDTH], "counts": rles[d]["counts"].decode()}
            elif kind == "keypoints":
                if d < len(matched_kp):
                    k = matched_kp[d].copy()
                    k[:, :2] = rounded(k[:, :2] + rng.normal(0, 4, (JOINTS, 2)), 0.01)
                else:
                    k = person_keypoints(rng, dt_boxes[d])
                k[:, 2] = 1
                r["keypoints"] = [float(v) for v in k.ravel()]
            else:
                r["bbox"] = [float(v) for v in dt_boxes[d]]
            results.append(r)
    return {"images": imgs, "categories": cats, "annotations": anns}, results


def ensure(root, kind, images):
    d = root / f"{kind}-{images}"
    if not (d / "results.json").is_file():
        d.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        gt, results = generate(kind, images, seed=20261206 + images)
        with open(d / "gt.json", "w") as f:
            json.dump(gt, f)
        with open(d / "results.json.tmp", "w") as f:
            json.dump(results, f)
        os.replace(d / "results.json.tmp", d / "results.json")
        print(f"# wrote {d}: {len(gt['annotations'])} annotations, {len(results)} results "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return d


def run_child(cmd, threads, timeout):
    """Runs cmd; returns (wall seconds, peak RSS MiB, parsed JSON line or None, stderr)."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return None, None, None, f"timed out after {timeout} s"
    wall = time.perf_counter() - start
    # The child is reaped by communicate(); its rusage is in RUSAGE_CHILDREN only as a maximum
    # over all children, so the peak is read from the child's own report where possible.
    line = next((l for l in out.decode().splitlines() if l.startswith("{")), None)
    if p.returncode != 0 or line is None:
        return wall, None, None, err.decode()[-2000:]
    rec = json.loads(line)
    return wall, rec.get("rss"), rec, err.decode()


def command(name, d, kind, mustard):
    gt, dt = str(d / "gt.json"), str(d / "results.json")
    if name == "mustard":
        return [mustard, gt, dt, kind]
    return [sys.executable, "-c", PYTHON_CHILD, name, gt, dt, kind]


def peak_wrapper(cmd):
    """cmd run under a tiny Python parent that reports the child's wall time (fork to exit) and
    peak RSS (wait4), so that the parent's own start is not counted."""
    code = ("import json, os, sys, time\n"
            "start = time.perf_counter()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.execvp(sys.argv[1], sys.argv[1:])\n"
            "_, status, ru = os.wait4(pid, 0)\n"
            "wall = time.perf_counter() - start\n"
            "print(json.dumps({'rss_child': ru.ru_maxrss / 1024, 'wall_child': wall}), file=sys.stderr)\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")
    return [sys.executable, "-c", code] + cmd


def timed(name, d, kind, mustard, threads, timeout):
    cmd = command(name, d, kind, mustard)
    wall, _, rec, err = run_child(peak_wrapper(cmd), threads, timeout)
    if rec is None:
        return {"error": err.strip().splitlines()[-1] if err.strip() else "failed"}
    rss = None
    for l in err.splitlines():
        if l.startswith("{") and "rss_child" in l:
            child = json.loads(l)
            rss, wall = child["rss_child"], child["wall_child"]
    return {"wall": wall, "eval": rec["eval"], "load": rec["load"], "rss": rss, "stats": rec["stats"]}


def fmt_runs(rs, key):
    vals = [r[key] for r in rs if key in r]
    if not vals:
        return "—"
    return f"{statistics.median(vals):.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/mustard-eval-compare")
    ap.add_argument("--images", default="5000,50000")
    ap.add_argument("--types", default="bbox,segm,keypoints")
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default=",".join(FAST + SLOW), help="evaluators to run")
    ap.add_argument("--references-everywhere", action="store_true",
                    help="also run faster-coco-eval and pycocotools on sets over 5,000 images")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--mustard", default="target/release/examples/coco_compare",
                    help="mustard's child program (cargo build --release -p mustard-eval --example coco_compare)")
    ap.add_argument("--json", help="also write every run here")
    args = ap.parse_args()
    root = Path(args.dir)
    only = args.only.split(",")
    sizes = [int(s) for s in args.images.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    all_runs = []
    bad = False
    print(f"| set | threads | evaluator | whole process, s (median of runs) | evaluation alone, s | "
          f"peak memory, MiB | runs | stats |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind in args.types.split(","):
        for images in sizes:
            d = ensure(root, kind, images)
            label = f"{kind}, {images:,} images"
            reference = None
            for t in threads:
                runs = {n: [] for n in only}
                for _ in range(args.runs):
                    for name in [n for n in FAST if n in only]:
                        runs[name].append(timed(name, d, kind, args.mustard, t, args.timeout))
                slow = [n for n in SLOW if n in only and (images <= 5000 or args.references_everywhere)]
                if t == threads[0]:
                    for name in slow:
                        runs[name].append(timed(name, d, kind, args.mustard, t, args.timeout))
                stats = {n: rs[0]["stats"] for n, rs in runs.items() if rs and "stats" in rs[0]}
                if reference is None:
                    reference = stats.get("pycocotools") or next(iter(stats.values()), None)
                for name in FAST + SLOW:
                    rs = runs.get(name) or []
                    if not rs:
                        continue
                    ok = [r for r in rs if "stats" in r]
                    if len(ok) < len(rs):
                        bad = True
                        print(f"# {name} on {label} failed: {[r.get('error') for r in rs if 'error' in r][0]}",
                              file=sys.stderr)
                    agree = "—"
                    if ok:
                        same = all(r["stats"] == reference for r in ok)
                        agree = "equal" if same else "DIFFER"
                        if not same:
                            bad = True
                            print(f"# {name} on {label}: {ok[0]['stats']} against {reference}", file=sys.stderr)
                    print(f"| {label} | {t} | {name} | {fmt_runs(ok, 'wall')} | {fmt_runs(ok, 'eval')} | "
                          f"{fmt_runs(ok, 'rss')} | {len(ok)} | {agree} |", flush=True)
                    for r in rs:
                        all_runs.append({"set": label, "threads": t, "evaluator": name, **r})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_runs, f, indent=1)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
