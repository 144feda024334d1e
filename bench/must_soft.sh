#!/usr/bin/env bash
# Soft detection targets against the hard ones (docs/STUDY.md), on the teachers of a finished
# `bench/must_detection.sh` run, per seed: the student retrained with
#   - soft centres (the Gaussian peaks at the teacher's score, quality focal loss) on the run's
#     store (boxes >= 0.3) and on a store of every box >= $FLOOR;
#   - weighted centres (CenterNet's targets, each positive weighted by its score) on the run's
#     store.
# Every model trains once: a rerun reuses what is there and prints the table again.
#
#   bash bench/must_soft.sh [RUNS]        (default RUNS: runs-detection)
#
# MUSTARD (default target/release/mustard), SEEDS (default 3), FLOOR (default 0.1).
set -euo pipefail

M=${MUSTARD:-target/release/mustard}
RUNS=${1:-runs-detection}
SEEDS=${SEEDS:-3}
FLOOR=${FLOOR:-0.1}
DATA=$RUNS/must/data

# shellcheck source=bench/must_common.sh
source "$(dirname "$0")/must_common.sh"

# The student's config with centre_targets set to $2, as $1.
variant() {
    sed "s/^relative_depth = \(.*\)$/relative_depth = \1\ncentre_targets = \"$2\"/" "$root/student/config.toml" >"$1"
}

echo "| seed | teacher | student (hard, >= 0.3) | soft, >= 0.3 | soft, >= $FLOOR | weighted, >= 0.3 |"
echo "| --- | --- | --- | --- | --- | --- |"
for ((k = 0; k < SEEDS; k++)); do
    root=$(seed_root "$k")
    teachers_of "$root"
    "$M" pseudo-label "${teachers[@]}" --images "$DATA/unlabeled.json" --out "$root/labels-$FLOOR" \
        --det-threshold "$FLOOR" --pose-threshold 0.3 >&2
    variant "$root/student-soft.toml" soft
    variant "$root/student-weighted.toml" weighted
    "$M" train --config "$root/student-soft.toml" --runs "$root" --name student-soft-0.3 >&2
    "$M" train --config "$root/student-soft.toml" --runs "$root" --name "student-soft-$FLOOR" \
        --pseudo "$root/labels-$FLOOR" >&2
    "$M" train --config "$root/student-weighted.toml" --runs "$root" --name student-weighted-0.3 >&2
    echo "| $k | $(ap "$root/teacher-detection") | $(ap "$root/student") | $(ap "$root/student-soft-0.3") | $(ap "$root/student-soft-$FLOOR") | $(ap "$root/student-weighted-0.3") |"
done
