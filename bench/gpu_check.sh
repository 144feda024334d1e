#!/usr/bin/env bash
# The GPU check: on a machine with one NVIDIA GPU (driver 580 or later), PyTorch and no Rust
# toolchain, runs what `cargo xtask cuda-build` bundled (target/gpu-check) and writes one
# Markdown summary:
#   (a) every custom op on CUDA against its CPU kernel, forward and backward (f64 and f32);
#   (b) 100 training steps of the MCN network (ResNet-18 + FPN, all five heads, 256 px, batch
#       16) on the GPU and on the CPU from the same weights and batches: both loss curves and
#       the largest relative difference;
#   (c) mustard against PyTorch eager on the same network and GPU (bench/mcn_speed.py):
#       forward at 1x3x512x512, a training step at 32x3x512x512; images/s and device memory;
#   (d) data-parallel training (mustard_dp, built with `nccl`, under the bundled Open MPI): the
#       five-head model for 20 steps in f64 on one process, under `mpirun -n 1`, and on two
#       processes (one GPU each through NCCL where the machine has two GPUs, else both on one
#       GPU with MUSTARD_SHARE_GPU=1, sums through the host): the largest weight difference;
#   (e) `mustard must --preset full --device cuda`, stopped when the time budget runs out.
#
#   bash target/gpu-check/gpu_check.sh target/gpu-check [OUT]
#
# GPU_CHECK_BUDGET_S (default 450) bounds the whole script: each stage is stopped when it runs
# out, and (e) gets what (a)-(d) leave.
set -uo pipefail

BUNDLE=$(cd "${1:?usage: gpu_check.sh BUNDLE [OUT]}" && pwd)
OUT=${2:-$PWD/gpu-check-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$OUT" || exit 1
# The binaries travel gzipped; unpack them here.
BIN=$OUT/bin
mkdir -p "$BIN"
for name in mustard mcn_speed cuda_parity mustard_dp; do
    if [ $name = mustard_dp ] && [ ! -f "$BUNDLE/$name.gz" ] && [ ! -f "$BUNDLE/$name" ]; then
        continue # built only where MPI was installed; stage (d) says so
    fi
    if [ -f "$BUNDLE/$name.gz" ]; then
        gzip -dc "$BUNDLE/$name.gz" >"$BIN/$name" && chmod +x "$BIN/$name"
    elif [ -f "$BUNDLE/$name" ]; then
        cp "$BUNDLE/$name" "$BIN/$name"
    else
        echo "gpu_check: $BUNDLE has neither $name.gz nor $name (run cargo xtask cuda-build)" >&2
        exit 1
    fi
done
PY=${PYTHON:-python3}
export RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0
BUDGET=${GPU_CHECK_BUDGET_S:-450}
START=$(date +%s)
SUMMARY=$OUT/summary.md
elapsed() { echo $(($(date +%s) - START)); }
say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
# Runs a command for at most what is left of the budget (and at least 10 s).
budgeted() {
    local left=$((BUDGET - $(elapsed)))
    [ $left -lt 10 ] && left=10
    timeout "$left" "$@"
}

: >"$SUMMARY"
say "# mustard GPU check"
say ""
say "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
say "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
say "- PyTorch: $($PY -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -1)"
say "- bundle: $(ls "$BUNDLE" | tr '\n' ' ')"

# The CUDA libraries are loaded when a device opens: take those of the Python install.
LIBS=$($PY - <<'PYEOF'
import glob, os, site
dirs = []
roots = site.getsitepackages() + [site.getusersitepackages()]
for root in roots:
    for pattern in ("nvidia/*/lib", "nvidia/cu*/lib", "torch/lib"):
        for d in sorted(glob.glob(os.path.join(root, pattern))):
            if d not in dirs:
                dirs.append(d)
print(":".join(dirs))
PYEOF
)
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
if [ -n "$driver" ] && [ "${driver%%.*}" -lt 580 ]; then
    say ""
    say "**Stopped: driver $driver is older than 580**, which the build's PTX (CUDA 13.0) needs."
    say "Rebuild with \`cargo xtask cuda-build --toolkit DIR\` against a CUDA toolkit the driver supports."
    exit 1
fi

# (a) parity of every custom op
say ""
say "## (a) Custom ops on CUDA against the CPU kernels"
budgeted env MUSTARD_REQUIRE_CUDA=1 "$BIN/cuda_parity" --include-ignored --test-threads 1 --nocapture >a_parity.log 2>&1
a_status=$?
say ""
if [ $a_status -eq 0 ]; then say "Passed ($(elapsed) s)."; else say "**FAILED** (exit $a_status); the end of a_parity.log:"; fi
say '```'
grep -E -A1 "largest difference|panicked|test result|skipped" a_parity.log | grep -v '^--$' | tail -60 | tee -a "$SUMMARY"
printf '```\n' >>"$SUMMARY"

# (b) 100 training steps, CPU against GPU
say ""
say "## (b) 100 training steps on the GPU and on the CPU"
budgeted "$BIN/mcn_speed" --case steps --device cuda --iterations 100 --batch 16 --size 256 >b_steps.json 2>b_steps.err
b_status=$?
$PY - b_steps.json "$b_status" <<'PYEOF' | tee -a "$SUMMARY"
import json, sys
path, status = sys.argv[1], int(sys.argv[2])
if status != 0:
    print(f"\n**FAILED** (exit {status}); see b_steps.err")
    sys.exit()
r = json.loads(open(path).read().strip().splitlines()[-1])
# A loss that was not finite is written as null.
cpu = [float("nan") if v is None else v for v in r["cpu_loss"]]
gpu = [float("nan") if v is None else v for v in r["device_loss"]]
print(f"\nLargest relative difference of the total loss over {len(cpu)} steps: {r['largest_relative_difference']:.2e}\n")
print("| step | CPU loss | GPU loss | relative difference |\n| --- | --- | --- | --- |")
for i, (a, b) in enumerate(zip(cpu, gpu)):
    if i < 5 or (i + 1) % 10 == 0:
        print(f"| {i + 1} | {a:.6f} | {b:.6f} | {abs(a - b) / max(abs(a), 1e-12):.2e} |")
PYEOF
say "($(elapsed) s so far)"

# (c) throughput against PyTorch eager
say ""
say "## (c) mustard against PyTorch eager on this GPU"
say ""
say "| case | implementation | median ms | images/s | device memory MiB |"
say "| --- | --- | --- | --- | --- |"
bench_case() { # case batch size iterations warmup
    local case=$1 b=$2 s=$3 n=$4 w=$5
    for impl in mustard pytorch; do
        local log="c_${case}_${impl}.json"
        if [ $impl = mustard ]; then
            budgeted "$BIN/mcn_speed" --case "$case" --device cuda --batch "$b" --size "$s" --iterations "$n" --warmup "$w" >"$log" 2>"$log.err"
        else
            budgeted $PY "$BUNDLE/mcn_speed.py" --case "$case" --device cuda --batch "$b" --size "$s" --iterations "$n" --warmup "$w" --threads "$(nproc)" >"$log" 2>"$log.err"
        fi
        $PY - "$log" "$case ${b}x3x${s}x${s}" "$impl" <<'PYEOF' | tee -a "$SUMMARY"
import json, sys
path, case, impl = sys.argv[1:4]
try:
    r = json.loads(open(path).read().strip().splitlines()[-1])
    mem = r.get("device_memory_mib")
    mem = f"{mem:.0f}" if mem is not None else "–"
    print(f"| {case} | {impl} | {r['median_ms']:.1f} | {r['images_per_s']:.1f} | {mem} |")
except Exception:
    err = open(path + ".err").read().strip().splitlines()
    print(f"| {case} | {impl} | failed: {err[-1] if err else 'no output'} | | |")
PYEOF
    done
}
bench_case forward 1 512 20 3
bench_case train 32 512 5 2
say ""
say "mustard's device memory is the driver's total − free after each phase (its largest value);"
say "PyTorch's is torch.cuda.max_memory_allocated."
say "($(elapsed) s so far)"

# (d) data-parallel training against one process
say ""
say "## (d) Data-parallel training (mpirun; NCCL between GPUs)"
if [ ! -x "$BIN/mustard_dp" ] || [ ! -f "$BUNDLE/mpi/env.sh" ]; then
    say ""
    say "Not run: the bundle has no mustard_dp or no mpi/ (cargo xtask cuda-build builds them where MPI is installed)."
else
    (
        # shellcheck source=/dev/null
        source "$BUNDLE/mpi/env.sh"
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
        gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
        budgeted "$BIN/mustard_dp" synth --out d_data --images 64 --size 128 --seed 5 >d_dp.log 2>&1
        train() { # name, then the launcher's words (none: one process without a launcher)
            local name=$1
            shift
            budgeted "$@" "$BIN/mustard_dp" train --runs d_runs --name "$name" --data d_data/instances.json \
                --tasks detection,pose,segmentation,depth,classification --no-val --input-size 128 \
                --batch-size 8 --max-steps 20 --precision f64 --device cuda --workers 2 >>d_dp.log 2>&1
            local status=$?
            say "- $name: $([ $status -eq 0 ] && echo "trained" || echo "**FAILED** (exit $status)") ($(elapsed) s so far)"
        }
        say ""
        launch=(mpirun --bind-to none -x LD_LIBRARY_PATH -x PATH)
        train one
        train mpirun-1 "${launch[@]}" -n 1
        if [ "$gpus" -ge 2 ]; then
            two="two processes, one GPU each, NCCL"
            train two "${launch[@]}" -n 2
        else
            two="two processes sharing the one GPU, sums through the host (MUSTARD_SHARE_GPU=1)"
            export MUSTARD_SHARE_GPU=1
            train two "${launch[@]}" -x MUSTARD_SHARE_GPU -n 2
        fi
        say ""
        $PY - d_runs "$two" <<'PYEOF' | tee -a "$SUMMARY"
import json, struct, sys
from array import array
root, two = sys.argv[1], sys.argv[2]
def weights(name):
    path = f"{root}/{name}/weights/last.safetensors"
    try:
        raw = open(path, "rb").read()
    except OSError:
        return None
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    out = {}
    for k, v in header.items():
        if k == "__metadata__" or k.startswith(("optimizer.", "state.")):
            continue
        code = {"F64": "d", "F32": "f"}.get(v["dtype"])
        if code:
            a, b = v["data_offsets"]
            out[k] = array(code, data[a:b])
    return out
def largest(a, b):
    worst = 0.0
    for k, x in a.items():
        y = b[k]
        scale = max(max((abs(v) for v in x), default=0.0), 1e-300)
        worst = max(worst, max((abs(p - q) for p, q in zip(x, y)), default=0.0) / scale)
    return worst
one = weights("one")
print("| run | against one process | largest relative weight difference |\n| --- | --- | --- |")
for name, what, expected in [("mpirun-1", "mpirun -n 1", "0 (no collective runs)"), ("two", two, "≤ 1e-10 (order of sums)")]:
    other = weights(name)
    if one is None or other is None:
        print(f"| {what} | not trained | – |")
    else:
        print(f"| {what} | expected {expected} | {largest(one, other):.2e} |")
PYEOF
    )
    say "($(elapsed) s so far)"
fi

# (e) the full MuST pipeline, within what is left of the budget
say ""
say "## (e) mustard must --preset full --device cuda"
left=$((BUDGET - $(elapsed)))
if [ $left -lt 30 ]; then
    say "Not run: $left s of the budget left."
else
    t0=$(date +%s)
    timeout "$left" "$BIN/mustard" must --preset full --device cuda --runs d_must >d_must.log 2>&1
    d_status=$?
    took=$(($(date +%s) - t0))
    if [ $d_status -eq 0 ]; then
        say "Finished in $took s."
        say '```'
        head -20 d_must/must/report.md 2>/dev/null | tee -a "$SUMMARY"
        printf '```\n' >>"$SUMMARY"
    elif [ $d_status -eq 124 ]; then
        say "Stopped by the budget after $took s; where it was:"
        say '```'
        tr '\r' '\n' <d_must.log | grep -v '^\s*$' | tail -5 | tee -a "$SUMMARY"
        printf '```\n' >>"$SUMMARY"
    else
        say "**FAILED** (exit $d_status) after $took s:"
        say '```'
        tail -5 d_must.log | tee -a "$SUMMARY"
        printf '```\n' >>"$SUMMARY"
    fi
fi
say ""
say "Total: $(elapsed) s."
