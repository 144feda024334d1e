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
    /// Every task, in a fixed order.
    pub const ALL: [Task; 5] = [
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
