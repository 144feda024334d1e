//! Anchor-free task heads of mustard ("Objects as Points", <https://arxiv.org/abs/1904.07850>;
//! MultiTask-CenterNet, <https://arxiv.org/abs/2108.05060>).
//!
//! This crate will hold one module per task (detection, pose, semantic segmentation, depth,
//! classification), each with its head, target encoding, loss and decoding. It depends only on
//! `mustard-core`, never on the backbone. Nothing is implemented yet.
#![warn(missing_docs)]
