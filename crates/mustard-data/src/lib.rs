//! Datasets of mustard.
//!
//! This crate will hold COCO-format reading and writing (instances, keypoints, semantic masks,
//! depth, image labels, per-task presence flags), the synthetic all-task scenes of
//! `mustard synth`, augmentation that moves image, boxes, masks, keypoints and depth together,
//! and a parallel prefetching loader whose target encoding is supplied by the caller. It depends
//! only on `mustard-core`, never on the heads. Nothing is implemented yet.
#![warn(missing_docs)]
