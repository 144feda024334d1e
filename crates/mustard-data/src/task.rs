use std::fmt;

/// The tasks a dataset can label.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Boxes with classes.
    Detection,
    /// Person boxes with keypoints.
    Pose,
    /// Per-pixel classes.
    Segmentation,
    /// Per-pixel depth.
    Depth,
    /// One class per image.
    Classification,
}

impl Task {
    /// How many tasks there are.
    pub const COUNT: usize = 5;

    /// Every task, in a fixed order.
    pub const ALL: [Task; Task::COUNT] = [
        Task::Detection,
        Task::Pose,
        Task::Segmentation,
        Task::Depth,
        Task::Classification,
    ];

    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Task::Detection => "detection",
            Task::Pose => "pose",
            Task::Segmentation => "segmentation",
            Task::Depth => "depth",
            Task::Classification => "classification",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Task {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown task {s:?}: expected one of detection, pose, segmentation, depth, classification"))
    }
}

/// Which tasks an image carries labels for (the per-image presence flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TaskSet(u8);

impl TaskSet {
    /// No task.
    pub const EMPTY: TaskSet = TaskSet(0);

    /// Every task.
    pub fn all() -> Self {
        Task::ALL.into_iter().collect()
    }

    /// Whether `task` is labelled.
    pub fn contains(self, task: Task) -> bool {
        self.0 & task.bit() != 0
    }

    /// Adds `task`.
    pub fn insert(&mut self, task: Task) {
        self.0 |= task.bit();
    }

    /// Removes `task`.
    pub fn remove(&mut self, task: Task) {
        self.0 &= !task.bit();
    }

    /// The tasks present, in [`Task::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Task> {
        Task::ALL.into_iter().filter(move |t| self.contains(*t))
    }

    /// Whether no task is labelled.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The tasks of both sets.
    pub fn intersection(self, other: TaskSet) -> TaskSet {
        TaskSet(self.0 & other.0)
    }
}

impl FromIterator<Task> for TaskSet {
    fn from_iter<I: IntoIterator<Item = Task>>(iter: I) -> Self {
        let mut set = TaskSet::EMPTY;
        for t in iter {
            set.insert(t);
        }
        set
    }
}

impl fmt::Display for TaskSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Task::name).collect();
        f.write_str(&names.join(","))
    }
}

/// One value per task, for any subset of tasks: per-task heads, losses, weights, metrics and
/// headline numbers. Iteration follows [`Task::ALL`], so sums over tasks (the total loss, a
/// mean of metrics) are always taken in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskMap<T>([Option<T>; Task::COUNT]);

impl<T> Default for TaskMap<T> {
    fn default() -> Self {
        TaskMap(std::array::from_fn(|_| None))
    }
}

impl<T> TaskMap<T> {
    /// No task.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `task`.
    pub fn get(&self, task: Task) -> Option<&T> {
        self.0[task as usize].as_ref()
    }

    /// The value of `task`, mutably.
    pub fn get_mut(&mut self, task: Task) -> Option<&mut T> {
        self.0[task as usize].as_mut()
    }

    /// Sets the value of `task`, returning the previous one.
    pub fn insert(&mut self, task: Task, value: T) -> Option<T> {
        self.0[task as usize].replace(value)
    }

    /// Removes the value of `task`.
    pub fn remove(&mut self, task: Task) -> Option<T> {
        self.0[task as usize].take()
    }

    /// Whether `task` has a value.
    pub fn contains(&self, task: Task) -> bool {
        self.0[task as usize].is_some()
    }

    /// The tasks with a value, in [`Task::ALL`] order.
    pub fn tasks(&self) -> TaskSet {
        self.iter().map(|(t, _)| t).collect()
    }

    /// Number of tasks with a value.
    pub fn len(&self) -> usize {
        self.0.iter().filter(|v| v.is_some()).count()
    }

    /// Whether no task has a value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(task, value)` in [`Task::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Task, &T)> {
        Task::ALL
            .into_iter()
            .zip(&self.0)
            .filter_map(|(t, v)| v.as_ref().map(|v| (t, v)))
    }

    /// The values in [`Task::ALL`] order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter().flatten()
    }

    /// A map of the same tasks with `f` applied to every value.
    pub fn map<U>(&self, mut f: impl FnMut(Task, &T) -> U) -> TaskMap<U> {
        self.iter().map(|(t, v)| (t, f(t, v))).collect()
    }

    /// Like [`TaskMap::map`], stopping at the first error.
    pub fn try_map<U, E>(
        &self,
        mut f: impl FnMut(Task, &T) -> Result<U, E>,
    ) -> Result<TaskMap<U>, E> {
        self.iter().map(|(t, v)| Ok((t, f(t, v)?))).collect()
    }
}

impl<T> FromIterator<(Task, T)> for TaskMap<T> {
    fn from_iter<I: IntoIterator<Item = (Task, T)>>(iter: I) -> Self {
        let mut map = TaskMap::default();
        for (t, v) in iter {
            map.insert(t, v);
        }
        map
    }
}

impl<T> IntoIterator for TaskMap<T> {
    type Item = (Task, T);
    type IntoIter = std::iter::FilterMap<
        std::iter::Zip<
            std::array::IntoIter<Task, { Task::COUNT }>,
            std::array::IntoIter<Option<T>, { Task::COUNT }>,
        >,
        fn((Task, Option<T>)) -> Option<(Task, T)>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        Task::ALL
            .into_iter()
            .zip(self.0)
            .filter_map(|(t, v)| v.map(|v| (t, v)))
    }
}

impl<'a, T> IntoIterator for &'a TaskMap<T> {
    type Item = (Task, &'a T);
    type IntoIter = std::iter::FilterMap<
        std::iter::Zip<
            std::array::IntoIter<Task, { Task::COUNT }>,
            std::slice::Iter<'a, Option<T>>,
        >,
        fn((Task, &'a Option<T>)) -> Option<(Task, &'a T)>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        Task::ALL
            .into_iter()
            .zip(self.0.iter())
            .filter_map(|(t, v)| v.as_ref().map(|v| (t, v)))
    }
}

/// A table keyed by task name (`detection = 1.0`), in [`Task::ALL`] order.
impl<T: serde::Serialize> serde::Serialize for TaskMap<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.len()))?;
        for (t, v) in self.iter() {
            map.serialize_entry(t.name(), v)?;
        }
        map.end()
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for TaskMap<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = std::collections::BTreeMap::<Task, T>::deserialize(d)?;
        Ok(entries.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_map_iterates_in_task_order_and_round_trips_as_a_table() {
        let map: TaskMap<f64> = [(Task::Depth, 0.5), (Task::Detection, 2.0)]
            .into_iter()
            .collect();
        assert_eq!(
            map.iter().collect::<Vec<_>>(),
            [(Task::Detection, &2.0), (Task::Depth, &0.5)]
        );
        assert_eq!(map.tasks().to_string(), "detection,depth");
        assert_eq!(map.get(Task::Pose), None);
        let json = serde_json::to_string(&map).unwrap();
        assert_eq!(json, r#"{"detection":2.0,"depth":0.5}"#);
        assert_eq!(serde_json::from_str::<TaskMap<f64>>(&json).unwrap(), map);
        let err = serde_json::from_str::<TaskMap<f64>>(r#"{"detektion":1.0}"#).unwrap_err();
        assert!(
            err.to_string().starts_with("unknown variant `detektion`"),
            "{err}"
        );
    }
}
