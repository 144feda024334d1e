//! Pseudo-labelling for MuST ("Multi-Task Self-Training for Learning General Representations",
//! <https://arxiv.org/abs/2108.11353>).
//!
//! This crate will turn teacher outputs into pseudo-labels (soft classes, thresholded boxes and
//! keypoints, segmentation with an ignore mask, relative depth) and store them in fixed-size,
//! atomically written, resumable shards. Nothing is implemented yet.
#![warn(missing_docs)]
