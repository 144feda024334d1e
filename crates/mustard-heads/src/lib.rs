//! Anchor-free task heads of mustard ("Objects as Points", <https://arxiv.org/abs/1904.07850>;
//! MultiTask-CenterNet, <https://arxiv.org/abs/2108.05060>).
//!
//! One module per task, each with its head, target encoding (SPEC §3), loss (SPEC §4, with
//! per-image presence masks) and decoding (SPEC §5):
//!
//! | module | head outputs (stride 4 unless said) | loss | decodes to |
//! | --- | --- | --- | --- |
//! | [`detection`] | `hm` C, `wh` 2, `reg` 2 | focal + 0.1·L1 + L1 | [`Detection`] |
//! | [`pose`] | a [`detection::DetectionHead`] for persons + `hps` 2K, `hm_hp` K, `hp_offset` 2 | detection + L1 + focal + L1 | [`Detection`] with [`Keypoints`] |
//! | [`segmentation`] | C logits, upsampled x4 | cross-entropy, ignore 255 | class map |
//! | [`depth`] | log-depth, upsampled x4 | L1 on log-depth, or scale-and-shift-invariant L1 | depth map |
//! | [`classification`] | Linear on pooled C5 | cross-entropy / soft cross-entropy | class scores |
//!
//! Every head is built from the same [`HeadBlock`] (3x3 conv → ReLU → 1x1 conv). The crate
//! depends only on `mustard-core`: target encoders take plain labels ([`BoxLabel`],
//! [`PersonLabel`]), not dataset types.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod block;
pub mod classification;
pub mod depth;
pub mod detection;
pub mod pose;
mod prediction;
pub mod segmentation;

pub use block::{gather, HeadBlock, HeadInit, SharedHidden};
pub use detection::BoxLabel;
pub use pose::PersonLabel;
pub use prediction::{Detection, Keypoints};

/// Output stride of every dense head.
pub const STRIDE: usize = 4;

/// The result type of the heads (errors come from the core crate).
pub type Result<T> = mustard_core::Result<T>;
