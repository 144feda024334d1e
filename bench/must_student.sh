#!/usr/bin/env bash
# Student variants against the run's student (docs/STUDY.md), on the teachers and pseudo-labels
# of a finished `mustard must --seeds 3` run, one change at a time, per seed: the student
# retrained with
#   - its FPN neck twice as wide (64 channels instead of 32);
#   - 50 epochs instead of 34 (1.5x the steps);
#   - 50 epochs with the detection loss weighted 2 (the two changes that helped detection
#     alone, together).
# Prints, per seed and variant, the four metrics whose retention the study reports: box AP
# (detection), mIoU (segmentation), δ<1.25 (depth) and top-1 (classification), with the
# teachers' for reference. Every model trains once: a rerun reuses what is there.
#
#   bash bench/must_student.sh [RUNS]        (default RUNS: runs-detection)
#
# MUSTARD (default target/release/mustard), SEEDS (default 3), EPOCHS (default 50), NECK
# (default 64).
set -euo pipefail

M=${MUSTARD:-target/release/mustard}
RUNS=${1:-runs-detection}
SEEDS=${SEEDS:-3}
EPOCHS=${EPOCHS:-50}
NECK=${NECK:-64}
DATA=$RUNS/must/data

# shellcheck source=bench/must_common.sh
source "$(dirname "$0")/must_common.sh"

row() {
    local seed=$1 name=$2 det=$3 seg=$4 depth=$5 cls=$6
    echo "| $seed | $name | $(metric "$det" detection) | $(metric "$seg" segmentation) | $(metric "$depth" depth) | $(metric "$cls" classification) |"
}

echo "| seed | model | box AP | mIoU | δ<1.25 | top-1 |"
echo "| --- | --- | --- | --- | --- | --- |"
for ((k = 0; k < SEEDS; k++)); do
    root=$(seed_root "$k")
    sed "s/^channels = 32$/channels = $NECK/" "$root/student/config.toml" >"$root/student-neck-$NECK.toml"
    sed "s/^epochs = 34$/epochs = $EPOCHS/" "$root/student/config.toml" >"$root/student-epochs-$EPOCHS.toml"
    "$M" train --config "$root/student-neck-$NECK.toml" --runs "$root" --name "student-neck-$NECK" >&2
    sed "s/^detection = 1.0$/detection = 2.0/" "$root/student-epochs-$EPOCHS.toml" >"$root/student-epochs-$EPOCHS-det-2.toml"
    "$M" train --config "$root/student-epochs-$EPOCHS.toml" --runs "$root" --name "student-epochs-$EPOCHS" >&2
    "$M" train --config "$root/student-epochs-$EPOCHS-det-2.toml" --runs "$root" --name "student-epochs-$EPOCHS-det-2" >&2
    row "$k" teachers "$root/teacher-detection" "$root/teacher-segmentation" "$root/teacher-depth" "$root/teacher-classification"
    for s in student "student-neck-$NECK" "student-epochs-$EPOCHS" "student-epochs-$EPOCHS-det-2"; do
        row "$k" "$s" "$root/$s" "$root/$s" "$root/$s" "$root/$s"
    done
done
