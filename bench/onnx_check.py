"""Checks a `mustard export` ONNX file with ONNX Runtime and the ONNX checker.

usage: python bench/onnx_check.py MODEL.onnx [REFERENCE.safetensors]

Runs the ONNX checker (with shape inference), loads the model in ONNX Runtime (CPU), and when
a reference file from `mustard export --reference N` is given (default: beside the model),
runs its `images` through the model in batches the graph accepts and compares every output
with mustard's: the largest absolute difference relative to the output's largest magnitude
(at least 1) must be at most 1e-4. Prints one line per output; exits 1 when any differs.
Needs: onnx, onnxruntime, numpy (`cargo xtask onnx-check` installs them in a virtual
environment).
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

TOLERANCE = 1e-4


def read_safetensors(path):
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype="<f4").reshape(info["shape"])
    return out


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    model_path = Path(sys.argv[1])
    reference = Path(sys.argv[2]) if len(sys.argv) > 2 else model_path.with_suffix(".reference.safetensors")
    model = onnx.load(str(model_path))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    print(f"{model_path}: ONNX checker passed (opset {model.opset_import[0].version}, ir {model.ir_version}), "
          f"metadata {sorted(meta)}")
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    print(f"ONNX Runtime {ort.__version__} loads it: inputs {[(i.name, i.shape) for i in session.get_inputs()]}")
    if not reference.exists():
        print(f"no reference file {reference}: outputs not compared")
        return 0
    ref = read_safetensors(reference)
    images = ref["images"]
    batch = session.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) else len(images)
    names = [o.name for o in session.get_outputs()]
    got = {n: [] for n in names}
    for i in range(0, len(images), step):
        for n, v in zip(names, session.run(None, {"images": images[i : i + step]})):
            got[n].append(v)
    failed = 0
    for n in names:
        a = np.concatenate(got[n])
        b = ref[n]
        scale = max(1.0, float(np.abs(b).max()))
        worst = float(np.abs(a - b).max())
        ok = a.shape == b.shape and worst <= TOLERANCE * scale
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {n:<24} shape {list(a.shape)}  max |diff| {worst:.2e}  (scale {scale:.2f})")
    print(f"{len(names) - failed} of {len(names)} outputs equal mustard's within {TOLERANCE:g} on {len(images)} images")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
