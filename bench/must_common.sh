# What the MuST study scripts (bench/must_detection.sh, must_soft.sh, must_student.sh) share;
# sourced, with M (the mustard binary) and DATA (the run's data folder) set.

# The metric of checkpoint $1 on task $2's test set (default detection): box AP, keypoint AP,
# mIoU, δ<1.25 or top-1.
metric() {
    local out task=${2:-detection}
    out=$("$M" eval --checkpoint "$1" --data "$DATA/test_$task.json" --no-plots)
    case $task in
    detection) sed -n 's/.*(AP) @\[ IoU=0.50:0.95 | area=   all | maxDets=100 \] = //p' <<<"$out" ;;
    pose) sed -n 's/.*(AP) @\[ IoU=0.50:0.95 | area=   all | maxDets= 20 \] = //p' <<<"$out" ;;
    segmentation) sed -n 's/^segmentation: mIoU \([0-9.]*\),.*/\1/p' <<<"$out" ;;
    depth) sed -n 's/.*δ<1.25 \([0-9.]*\),.*/\1/p' <<<"$out" ;;
    classification) sed -n 's/^classification: top-1 \([0-9.]*\),.*/\1/p' <<<"$out" ;;
    esac
}

# Box AP (IoU 0.50:0.95) of checkpoint $1 on the detection test set.
ap() {
    metric "$1" detection
}

# The folder of seed $1 of the run under $RUNS (seed 0 at its top).
seed_root() {
    if [ "$1" -gt 0 ]; then echo "$RUNS/must/seed$1"; else echo "$RUNS/must"; fi
}

# Sets `teachers` to the --teacher options of every task's teacher in folder $1.
teachers_of() {
    teachers=()
    for task in detection pose segmentation depth classification; do
        teachers+=(--teacher "$1/teacher-$task")
    done
}
