#!/usr/bin/env bash
# Where the MuST student's detection goes (docs/STUDY.md, "Where the student loses detection"):
# on the teachers and pseudo-labels of a `mustard must` run, per seed,
#   - the detection teacher and the student on the detection test set (box AP);
#   - the pseudo-boxes against the true boxes of the unlabelled images, at each score threshold
#     (a store of the detection teacher alone with a floor of 0.05: recall and precision);
#   - the student retrained on the true labels of the same unlabelled images (every task; the
#     upper bound of what the teachers could give);
#   - a detection-only student on the same pseudo-boxes (what sharing the network costs);
#   - the student with its detection loss weighted 2 (the others as the run has them);
#   - the student retrained on every teacher's labels with the detection threshold at each of
#     $THRESHOLDS (the run's own is 0.3).
# Every model trains once: a rerun reuses what is there and prints the table again.
#
#   bash bench/must_detection.sh [RUNS] [must options...]     (default RUNS: runs-detection)
#
# MUSTARD (default target/release/mustard), SEEDS (default 3), THRESHOLDS (default "0.2 0.4 0.5").
set -euo pipefail

M=${MUSTARD:-target/release/mustard}
RUNS=${1:-runs-detection}
shift || true
SEEDS=${SEEDS:-3}
THRESHOLDS=${THRESHOLDS:-0.2 0.4 0.5}

"$M" must --runs "$RUNS" --seeds "$SEEDS" "$@" >&2
DATA=$RUNS/must/data
TRUTH=$DATA/unlabeled_truth.json

# shellcheck source=bench/must_common.sh
source "$(dirname "$0")/must_common.sh"

# Trains run $2 of seed folder $1 from the student's saved config with the remaining options,
# unless it is done (train continues an unfinished run of the same config).
student() {
    local root=$1 name=$2
    shift 2
    "$M" train --config "$root/student/config.toml" --runs "$root" --name "$name" "$@" >&2
}

echo "| seed | teacher | student | student on the truth | detection-only student | detection weighted 2 | $(for t in $THRESHOLDS; do printf 'student at %s | ' "$t"; done)"
echo "| --- | --- | --- | --- | --- | --- | $(for t in $THRESHOLDS; do printf -- '--- | '; done)"
for ((k = 0; k < SEEDS; k++)); do
    root=$(seed_root "$k")
    teachers_of "$root"
    student "$root" student-truth --data "$TRUTH" --pseudo "$root/labels" --real-labels
    student "$root" student-detection-only --tasks detection
    sed 's/^detection = 1\.0$/detection = 2.0/' "$root/student/config.toml" >"$root/student-detection-2.toml"
    "$M" train --config "$root/student-detection-2.toml" --runs "$root" --name student-detection-2 >&2
    row="| $k | $(ap "$root/teacher-detection") | $(ap "$root/student") | $(ap "$root/student-truth") | $(ap "$root/student-detection-only") | $(ap "$root/student-detection-2") | "
    for t in $THRESHOLDS; do
        "$M" pseudo-label "${teachers[@]}" --images "$DATA/unlabeled.json" --out "$root/labels-$t" \
            --det-threshold "$t" --pose-threshold 0.3 >&2
        student "$root" "student-$t" --pseudo "$root/labels-$t"
        row+="$(ap "$root/student-$t") | "
    done
    echo "$row"
    # The detection teacher's boxes down to 0.05, against the truth.
    "$M" pseudo-label --teacher "$root/teacher-detection" --images "$DATA/unlabeled.json" \
        --out "$root/labels-detection-0.05" --det-threshold 0.05 >&2
    echo
    echo "Seed $k, the detection teacher's boxes on the unlabelled images against the truth:"
    echo '```'
    "$M" data labels "$root/labels-detection-0.05" --truth "$TRUTH"
    echo '```'
done
