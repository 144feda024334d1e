//! Metrics of mustard, equal to the references.
//!
//! This crate will hold COCO box, keypoint and segmentation AP equal to pycocotools, mIoU,
//! depth and classification metrics. It is pure Rust and depends on nothing of ours. Nothing is
//! implemented yet.
#![warn(missing_docs)]
