//! Datasets of mustard.
//!
//! - [`coco`]: the COCO-format files (instances, person keypoints, polygons and RLE masks) with
//!   mustard's documented extensions for semantic label maps, depth maps, image-level labels
//!   and per-image task presence;
//! - [`Dataset`]: a COCO file plus its image folder, checked record by record
//!   ([`Dataset::check`]) and loaded into [`Sample`]s;
//! - [`augment`]: the CenterNet affine warp (random scale + crop), horizontal flip with the
//!   left/right joint swap and colour jitter, moving image, boxes, keypoints, label maps and
//!   depth together;
//! - [`synth`]: the procedurally drawn all-task scenes behind `mustard synth`;
//! - [`Loader`]: rayon-parallel decode → augment → caller-supplied target encoding, prefetching
//!   a bounded number of batches, deterministic for a seed.
//!
//! RLE masks use `mustard_eval::rle` (one implementation, equal to pycocotools' maskApi). The
//! crate never depends on the heads: target encoding is a [`BatchEncoder`] supplied by the
//! caller.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod augment;
pub mod coco;
mod dataset;
mod error;
pub mod folders;
pub mod imageio;
mod loader;
mod sample;
mod source;
pub mod synth;
mod task;

pub use dataset::{relative_name, walk_images, CheckDepth, CheckReport, Dataset, Problem};
pub use error::{Error, Result};
pub use loader::{BatchEncoder, Epoch, Loader, LoaderConfig, Share};
pub use sample::{Label, Object, Sample};
pub use source::{Source, Subset};
pub use task::{Task, TaskMap, TaskSet};
