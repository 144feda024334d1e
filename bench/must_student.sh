#!/usr/bin/env bash
# Student variants against the run's student (docs/STUDY.md), on the teachers and pseudo-labels
# of a finished `mustard must --seeds 3` run, per seed: the student retrained with its epochs,
# its detection loss weight and its FPN neck's channels set as each variant says. Prints, per
# seed and variant, the five metrics whose retention the study reports: box AP (detection),
# keypoint AP (pose), mIoU (segmentation), δ<1.25 (depth) and top-1 (classification), with the
# teachers' for reference. Every model trains once: a rerun reuses what is there.
#
#   bash bench/must_student.sh [RUNS]        (default RUNS: runs-detection)
#
# MUSTARD (default target/release/mustard), SEEDS (default 3), VARIANTS (default below: name,
# epochs, detection weight, neck channels and, optionally, classification weight (default 4),
# colon-separated; the study's were, one change at a
# time against the 34-epoch student of 2026-12-06, then together:
#   neck-64:34:1:64  epochs-50:50:1:32  epochs-50-det-2:50:2:32
# and, on top of that, epochs-66-det-2:66:2:32, epochs-50-det-3:50:3:32, epochs-66-det-3:66:3:32,
# epochs-50-det-3.5:50:3.5:32 and epochs-50-det-4:50:4:32, the presets' student since).
set -euo pipefail

M=${MUSTARD:-target/release/mustard}
RUNS=${1:-runs-detection}
SEEDS=${SEEDS:-3}
VARIANTS=${VARIANTS:-neck-64:34:1:64 epochs-50:50:1:32 epochs-50-det-2:50:2:32 epochs-66-det-2:66:2:32 epochs-50-det-3:50:3:32}
DATA=$RUNS/must/data

# shellcheck source=bench/must_common.sh
source "$(dirname "$0")/must_common.sh"

row() {
    local seed=$1 name=$2 det=$3 pose=$4 seg=$5 depth=$6 cls=$7
    echo "| $seed | $name | $(metric "$det" detection) | $(metric "$pose" pose) | $(metric "$seg" segmentation) | $(metric "$depth" depth) | $(metric "$cls" classification) |"
}

echo "| seed | model | box AP | keypoint AP | mIoU | δ<1.25 | top-1 |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for ((k = 0; k < SEEDS; k++)); do
    root=$(seed_root "$k")
    names=(student)
    for v in $VARIANTS; do
        IFS=: read -r name epochs det channels cls <<<"$v"
        [[ $det == *.* ]] || det=$det.0
        cls=${cls:-4}
        [[ $cls == *.* ]] || cls=$cls.0
        sed -e "s/^epochs = [0-9]*$/epochs = $epochs/" \
            -e "s/^detection = [0-9.]*$/detection = $det/" \
            -e "s/^classification = [0-9.]*$/classification = $cls/" \
            -e "s/^channels = [0-9]*$/channels = $channels/" \
            "$root/student/config.toml" >"$root/student-$name.toml"
        "$M" train --config "$root/student-$name.toml" --runs "$root" --name "student-$name" >&2
        names+=("student-$name")
    done
    row "$k" teachers "$root/teacher-detection" "$root/teacher-pose" "$root/teacher-segmentation" "$root/teacher-depth" "$root/teacher-classification"
    for s in "${names[@]}"; do
        row "$k" "$s" "$root/$s" "$root/$s" "$root/$s" "$root/$s" "$root/$s"
    done
done
