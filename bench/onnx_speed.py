"""Times ONNX Runtime (CPU) on a `mustard export` file, for the side-by-side comparison with
`mustard bench` (same input size, same threads).

usage: python bench/onnx_speed.py MODEL.onnx [--threads N] [--iterations K] [--warmup W]

Prints one line: `ONNX Runtime <version>: <median> ms per forward (min <min>, <K> runs, <N>
threads, input <shape>)`. Inputs are random normal values (the graph's timing does not depend
on them). Needs onnxruntime and numpy.
"""

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = a.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(a.model, options, providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    x = np.random.RandomState(0).randn(*shape).astype(np.float32)
    times = []
    for i in range(a.warmup + a.iterations):
        t = time.perf_counter()
        session.run(None, {"images": x})
        if i >= a.warmup:
            times.append((time.perf_counter() - t) * 1e3)
    print(
        f"ONNX Runtime {ort.__version__}: {statistics.median(times):.1f} ms per forward "
        f"(min {min(times):.1f}, {len(times)} runs, {a.threads} threads, input {shape})"
    )


if __name__ == "__main__":
    main()
