//! What a model that ignores its input scores: the constant prediction fitted on a train split,
//! scored on a test split with the same metric code as the models. It is the floor a reported
//! number should be read against: box and keypoint AP 0 (no detection), the majority class's
//! mIoU and top-1, the median depth's δ < 1.25.

use mustard_data::{Dataset, Label, Source, Task};
use mustard_eval::{ConfusionMatrix, DepthAccumulator, DepthConfig};
use mustard_heads::segmentation::IGNORE;

use crate::Result;

/// The constant prediction's headline metric on `test`, fitted on `train` (each in its own
/// label space, which must be the same); `None` when `train` holds no label of `task`.
pub fn constant_baseline(task: Task, train: &Dataset, test: &Dataset) -> Result<Option<f64>> {
    constant_baseline_with(task, train, test, false)
}

/// [`constant_baseline`], leaving out images that cannot be read when `skip_bad` (else such an
/// image is an error naming it).
pub fn constant_baseline_with(
    task: Task,
    train: &Dataset,
    test: &Dataset,
    skip_bad: bool,
) -> Result<Option<f64>> {
    let load = |ds: &Dataset, i: usize| -> Result<Option<mustard_data::Sample>> {
        match ds.load(i) {
            Ok(s) => Ok(Some(s)),
            Err(e) if skip_bad && e.is_unreadable() => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    let class_of = |ds: &Dataset, i: usize| -> Result<Option<usize>> {
        Ok(load(ds, i)?.and_then(|s| class_of_sample(&s)))
    };
    let labelled = |ds: &Dataset| -> Vec<usize> {
        (0..ds.len())
            .filter(|&i| ds.tasks(i).contains(task))
            .collect()
    };
    Ok(match task {
        Task::Detection | Task::Pose => Some(0.0),
        Task::Segmentation => {
            let mut counts = vec![0u64; 256];
            for i in labelled(train) {
                if let Some(map) = load(train, i)?.and_then(|s| s.semantic) {
                    for &v in map.as_raw() {
                        counts[v as usize] += 1;
                    }
                }
            }
            counts[IGNORE as usize] = 0;
            let Some(majority) = argmax(&counts) else {
                return Ok(None);
            };
            let classes = Source::segmentation_classes(test).len().max(majority + 1);
            let mut confusion = ConfusionMatrix::with_ignore_index(classes, Some(IGNORE as u64));
            for i in labelled(test) {
                if let Some(map) = load(test, i)?.and_then(|s| s.semantic) {
                    // Labels outside the class list (other than "ignore") are left out, as
                    // evaluation maps them to "ignore".
                    let target: Vec<u32> = map
                        .as_raw()
                        .iter()
                        .map(|&v| {
                            if (v as usize) < classes {
                                u32::from(v)
                            } else {
                                u32::from(IGNORE)
                            }
                        })
                        .collect();
                    let pred = vec![majority as u32; target.len()];
                    confusion.update(&target, &pred)?;
                }
            }
            confusion.mean_iou()
        }
        Task::Depth => {
            let mut logs = Vec::new();
            for i in labelled(train) {
                if let Some(d) = load(train, i)?.and_then(|s| s.depth) {
                    logs.extend(d.as_raw().iter().filter(|&&v| v > 0.0).map(|v| v.ln()));
                }
            }
            if logs.is_empty() {
                return Ok(None);
            }
            logs.sort_by(f32::total_cmp);
            let median = logs[logs.len() / 2].exp();
            let mut acc = DepthAccumulator::new(DepthConfig::default());
            for i in labelled(test) {
                if let Some(d) = load(test, i)?.and_then(|s| s.depth) {
                    let target = d.into_raw();
                    if target.iter().all(|&v| v <= 0.0) {
                        continue;
                    }
                    acc.update(&vec![median; target.len()], &target)?;
                }
            }
            acc.mean().map(|m| m.delta1)
        }
        Task::Classification => {
            let mut counts: Vec<u64> = Vec::new();
            for i in labelled(train) {
                if let Some(c) = class_of(train, i)? {
                    if counts.len() <= c {
                        counts.resize(c + 1, 0);
                    }
                    counts[c] += 1;
                }
            }
            let Some(majority) = argmax(&counts) else {
                return Ok(None);
            };
            let (mut hits, mut total) = (0u64, 0u64);
            for i in labelled(test) {
                if let Some(c) = class_of(test, i)? {
                    total += 1;
                    hits += u64::from(c == majority);
                }
            }
            (total > 0).then(|| hits as f64 / total as f64)
        }
    })
}

/// The most frequent index (the first of equals); `None` when every count is 0.
fn argmax(counts: &[u64]) -> Option<usize> {
    let (i, &n) = counts
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))?;
    (n > 0).then_some(i)
}

fn class_of_sample(s: &mustard_data::Sample) -> Option<usize> {
    match &s.label {
        Some(Label::Class(c)) => Some(*c as usize),
        Some(Label::Soft(p)) => (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_majority_is_the_first_most_frequent() {
        assert_eq!(argmax(&[3, 5, 5, 1]), Some(1));
        assert_eq!(argmax(&[0, 0]), None);
        assert_eq!(argmax(&[]), None);
    }
}
