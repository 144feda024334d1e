//! Multi-person pose as CenterNet does it: a person detector plus, per person, the offsets of
//! its joints from the centre (`hps`), refined by snapping to joint heatmap peaks (`hm_hp`,
//! `hp_offset`). The head composes a [`DetectionHead`] with one class.

use mustard_core::candle_core::{DType, Device, Tensor};
use mustard_core::candle_nn::ops::sigmoid;
use mustard_core::candle_nn::VarBuilder;
use mustard_core::heatmap::{draw_gaussian, topk_peaks};
use mustard_core::loss::{focal_loss, reg_l1};
use mustard_core::{Error, Result};

use crate::block::{
    gather, mask_absent, values_at, weighted_l1, HeadBlock, HeadInit, SharedHidden,
};
use crate::detection::{
    self, centre, DetectionBatch, DetectionConfig, DetectionHead, DetectionLoss, DetectionOutput,
    DetectionTargets,
};
use crate::{Detection, Keypoints, STRIDE};

/// Hyperparameters of pose estimation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PoseConfig {
    /// Joints per person.
    pub num_joints: usize,
    /// Hidden channels of each head block.
    pub head_conv: usize,
    /// Most persons per image in the targets.
    pub max_objects: usize,
    /// Peaks kept by decoding.
    pub top_k: usize,
    /// Joint-heatmap score below which a candidate is not used (and not snapped to).
    pub joint_threshold: f32,
}

impl PoseConfig {
    /// CenterNet's defaults for `num_joints` joints.
    pub fn new(num_joints: usize) -> Self {
        Self {
            num_joints,
            head_conv: 64,
            max_objects: 32,
            top_k: 100,
            joint_threshold: 0.1,
        }
    }

    fn detection(&self) -> DetectionConfig {
        DetectionConfig {
            head_conv: self.head_conv,
            max_objects: self.max_objects,
            top_k: self.top_k,
            ..DetectionConfig::new(1)
        }
    }
}

/// A person to detect, in input pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonLabel {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// `[x, y, v]` per joint (v = 0: not labelled).
    pub keypoints: Vec<[f32; 3]>,
}

/// The targets of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct PoseTargets {
    /// The person detector's targets (one class).
    pub det: DetectionTargets,
    /// `(K, 2J)` joint offsets from the integer centre.
    pub hps: Vec<f32>,
    /// `(K, 2J)` 1 per labelled coordinate.
    pub hps_mask: Vec<f32>,
    /// `(J, h, w)` joint heatmaps.
    pub hm_hp: Vec<f32>,
    /// `(K·J, 2)` sub-pixel joint offsets.
    pub hp_offset: Vec<f32>,
    /// `(K·J,)` flat joint positions.
    pub hp_ind: Vec<u32>,
    /// `(K·J,)` 1 per labelled joint.
    pub hp_mask: Vec<f32>,
}

/// Encodes the persons of one image of `input` size (SPEC §3, CenterNet's `multi_pose`).
pub fn encode(
    config: &PoseConfig,
    persons: &[PersonLabel],
    (ih, iw): (usize, usize),
) -> Result<PoseTargets> {
    let (oh, ow) = (ih / STRIDE, iw / STRIDE);
    let (k, j) = (config.max_objects, config.num_joints);
    let boxes: Vec<detection::BoxLabel> = persons
        .iter()
        .map(|p| detection::BoxLabel {
            bbox: p.bbox,
            class: 0,
            score: 1.0,
        })
        .collect();
    let mut det = detection::encode(&config.detection(), &boxes, (ih, iw))?;
    let mut t = PoseTargets {
        det: DetectionTargets {
            hm: Vec::new(),
            ..det.clone()
        },
        hps: vec![0.0; k * 2 * j],
        hps_mask: vec![0.0; k * 2 * j],
        hm_hp: vec![0.0; j * oh * ow],
        hp_offset: vec![0.0; k * j * 2],
        hp_ind: vec![0; k * j],
        hp_mask: vec![0.0; k * j],
    };
    for (i, person) in persons.iter().take(k).enumerate() {
        if person.keypoints.len() != j {
            return Err(Error::InvalidConfig {
                what: "pose targets",
                reason: format!(
                    "person {i} has {} joints, expected {j}",
                    person.keypoints.len()
                ),
            });
        }
        let Some(c) = centre(person.bbox, (oh, ow)) else {
            continue;
        };
        let labelled = person.keypoints.iter().filter(|p| p[2] > 0.0).count();
        if labelled == 0 {
            // As in the reference: still a person centre, but no size/offset regression.
            det.mask[i] = 0.0;
        }
        for (n, kp) in person.keypoints.iter().enumerate() {
            if kp[2] <= 0.0 {
                continue;
            }
            let (x, y) = (kp[0] / STRIDE as f32, kp[1] / STRIDE as f32);
            if !(x >= 0.0 && x < ow as f32 && y >= 0.0 && y < oh as f32) {
                continue;
            }
            let base = i * 2 * j + 2 * n;
            t.hps[base..base + 2].copy_from_slice(&[x - c.ct_int.0 as f32, y - c.ct_int.1 as f32]);
            t.hps_mask[base..base + 2].copy_from_slice(&[1.0, 1.0]);
            let (px, py) = (x.floor(), y.floor());
            let slot = i * j + n;
            t.hp_offset[2 * slot..2 * slot + 2].copy_from_slice(&[x - px, y - py]);
            t.hp_ind[slot] = (py as usize * ow + px as usize) as u32;
            t.hp_mask[slot] = 1.0;
            draw_gaussian(
                &mut t.hm_hp[n * oh * ow..(n + 1) * oh * ow],
                (oh, ow),
                (px as i64, py as i64),
                c.radius,
            )?;
        }
    }
    t.det = det;
    Ok(t)
}

/// A batch of pose targets as tensors.
#[derive(Debug, Clone)]
pub struct PoseBatch {
    /// The person detector's targets.
    pub det: DetectionBatch,
    /// `(B, K, 2J)`.
    pub hps: Tensor,
    /// `(B, K, 2J)`.
    pub hps_mask: Tensor,
    /// `(B, J, h, w)`.
    pub hm_hp: Tensor,
    /// `(B, K·J, 2)`.
    pub hp_offset: Tensor,
    /// `(B, K·J)` u32.
    pub hp_ind: Tensor,
    /// `(B, K·J)`.
    pub hp_mask: Tensor,
}

impl PoseBatch {
    /// The same targets on `device` (a no-op on the device they are on).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.map(&|t| Ok(t.to_device(device)?))
    }

    /// Every tensor of the targets passed through `f`.
    pub fn map(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            hps: f(&self.hps)?,
            hps_mask: f(&self.hps_mask)?,
            hm_hp: f(&self.hm_hp)?,
            hp_offset: f(&self.hp_offset)?,
            hp_ind: f(&self.hp_ind)?,
            hp_mask: f(&self.hp_mask)?,
            det: self.det.map(f)?,
        })
    }
}

/// Stacks per-image targets.
pub fn collate(items: &[&PoseTargets], presence: &[bool], device: &Device) -> Result<PoseBatch> {
    let dets: Vec<&DetectionTargets> = items.iter().map(|t| &t.det).collect();
    let det = detection::collate(&dets, presence, device)?;
    let b = items.len();
    let (oh, ow) = items[0].det.size;
    let k = items[0].det.ind.len();
    let j = items[0].hm_hp.len() / (oh * ow);
    let cat = |f: &dyn Fn(&PoseTargets) -> &[f32]| {
        items
            .iter()
            .flat_map(|t| f(t).iter().copied())
            .collect::<Vec<f32>>()
    };
    Ok(PoseBatch {
        det,
        hps: Tensor::from_vec(cat(&|t| &t.hps), (b, k, 2 * j), device)?,
        hps_mask: Tensor::from_vec(cat(&|t| &t.hps_mask), (b, k, 2 * j), device)?,
        hm_hp: Tensor::from_vec(cat(&|t| &t.hm_hp), (b, j, oh, ow), device)?,
        hp_offset: Tensor::from_vec(cat(&|t| &t.hp_offset), (b, k * j, 2), device)?,
        hp_ind: Tensor::from_vec(
            items
                .iter()
                .flat_map(|t| t.hp_ind.iter().copied())
                .collect::<Vec<u32>>(),
            (b, k * j),
            device,
        )?,
        hp_mask: Tensor::from_vec(cat(&|t| &t.hp_mask), (b, k * j), device)?,
    })
}

/// The raw outputs of a [`PoseHead`].
#[derive(Debug, Clone)]
pub struct PoseOutput {
    /// The person detector's maps.
    pub det: DetectionOutput,
    /// `(B, 2J, h, w)` joint offsets from centres.
    pub hps: Tensor,
    /// `(B, J, h, w)` joint heatmap logits.
    pub hm_hp: Tensor,
    /// `(B, 2, h, w)` joint sub-pixel offsets.
    pub hp_offset: Tensor,
}

/// The losses of one batch.
#[derive(Debug, Clone)]
pub struct PoseLoss {
    /// Weighted sum.
    pub total: Tensor,
    /// Person detection losses.
    pub det: DetectionLoss,
    /// L1 of the joint offsets.
    pub hps: Tensor,
    /// Focal loss of the joint heatmaps.
    pub hm_hp: Tensor,
    /// L1 of the joint sub-pixel offsets.
    pub hp_offset: Tensor,
}

/// The pose head: a one-class [`DetectionHead`] plus `hps`, `hm_hp` and `hp_offset` blocks.
#[derive(Debug, Clone)]
pub struct PoseHead {
    detect: DetectionHead,
    hps: HeadBlock,
    hm_hp: HeadBlock,
    hp_offset: HeadBlock,
    config: PoseConfig,
}

impl PoseHead {
    /// Builds (or loads) the head under `vb` (`hm`, `wh`, `reg`, `hps`, `hm_hp`, `hp_offset`).
    pub fn new(in_channels: usize, config: &PoseConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let (hc, j) = (config.head_conv, config.num_joints);
        Ok(Self {
            detect: DetectionHead::new(in_channels, &config.detection(), vb.clone())?,
            hps: HeadBlock::new(in_channels, hc, 2 * j, HeadInit::Regression, vb.pp("hps"))?,
            hm_hp: HeadBlock::new(in_channels, hc, j, HeadInit::HEATMAP, vb.pp("hm_hp"))?,
            hp_offset: HeadBlock::new(
                in_channels,
                hc,
                2,
                HeadInit::Regression,
                vb.pp("hp_offset"),
            )?,
            config: config.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PoseConfig {
        &self.config
    }

    /// A copy for inference ([`HeadBlock::for_inference`] for each block).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self {
            detect: self.detect.for_inference()?,
            hps: self.hps.for_inference()?,
            hm_hp: self.hm_hp.for_inference()?,
            hp_offset: self.hp_offset.for_inference()?,
            config: self.config.clone(),
        })
    }

    /// # Shapes
    /// `(B, in, h, w)` stride-4 features → maps of `(B, ·, h, w)`.
    pub fn forward(&self, x: &Tensor) -> Result<PoseOutput> {
        self.forward_shared(x, &SharedHidden::new(&self.blocks(), x)?)
    }

    /// [`PoseHead::forward`] with the hidden maps in `shared` ([`SharedHidden`]).
    pub fn forward_shared(&self, x: &Tensor, shared: &SharedHidden) -> Result<PoseOutput> {
        Ok(PoseOutput {
            det: self.detect.forward_shared(x, shared)?,
            hps: self.hps.forward_shared(x, shared)?,
            hm_hp: self.hm_hp.forward_shared(x, shared)?,
            hp_offset: self.hp_offset.forward_shared(x, shared)?,
        })
    }

    /// The head's blocks: the person detector's, then `hps`, `hm_hp`, `hp_offset`.
    pub fn blocks(&self) -> Vec<&HeadBlock> {
        let mut blocks = self.detect.blocks();
        blocks.extend([&self.hps, &self.hm_hp, &self.hp_offset]);
        blocks
    }

    /// Appends the head to `g` under `prefix`; returns the raw `hm`, `wh`, `reg`, `hps`,
    /// `hm_hp` and `hp_offset` maps.
    pub fn onnx(
        &self,
        g: &mut mustard_core::onnx::Graph,
        x: &str,
        prefix: &str,
    ) -> Result<[String; 6]> {
        let [hm, wh, reg] = self.detect.onnx(g, x, prefix)?;
        Ok([
            hm,
            wh,
            reg,
            self.hps.onnx(g, x, &format!("{prefix}.hps"))?,
            self.hm_hp.onnx(g, x, &format!("{prefix}.hm_hp"))?,
            self.hp_offset.onnx(g, x, &format!("{prefix}.hp_offset"))?,
        ])
    }

    /// Detection losses + L1(hps) + focal(hm_hp) + L1(hp_offset), over the images marked present.
    pub fn loss(&self, out: &PoseOutput, t: &PoseBatch) -> Result<PoseLoss> {
        let presence = &t.det.presence;
        let det = self.detect.loss(&out.det, &t.det)?;
        let hps_mask = mask_absent(&t.hps_mask, presence)?;
        let hps = weighted_l1(&gather(&out.hps, &t.det.ind)?, &t.hps, &hps_mask)?;
        let hm_hp = focal_loss(&out.hm_hp, &t.hm_hp, Some(presence))?;
        let hp_offset = reg_l1(
            &out.hp_offset,
            &t.hp_ind,
            &mask_absent(&t.hp_mask, presence)?,
            &t.hp_offset,
        )?;
        let total = (((&det.total + &hps)? + &hm_hp)? + &hp_offset)?;
        Ok(PoseLoss {
            total,
            det,
            hps,
            hm_hp,
            hp_offset,
        })
    }

    /// The `top_k` best persons of each image with their joints, in input pixels (SPEC §5).
    pub fn decode(&self, out: &PoseOutput) -> Result<Vec<Vec<Detection<Keypoints>>>> {
        decode(out, self.config.top_k, self.config.joint_threshold)
    }

    /// Convolution FLOPs on an `h` x `w` stride-4 map.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        self.detect.flops(h, w)
            + self.hps.flops(h, w)
            + self.hm_hp.flops(h, w)
            + self.hp_offset.flops(h, w)
    }
}

/// Decodes raw outputs: regressed joints, each replaced by the nearest joint-heatmap peak unless
/// that peak lies outside the person box, scores below `threshold`, or is farther than
/// 0.3 · max(box side).
pub fn decode(
    out: &PoseOutput,
    k: usize,
    threshold: f32,
) -> Result<Vec<Vec<Detection<Keypoints>>>> {
    let people = detection::peaks(&out.det, k)?;
    let (b, j2, h, w) = out.hps.dims4()?;
    let j = j2 / 2;
    // Joint candidates: per image and joint, the top peaks of that joint's heatmap. Only the
    // regressed joints at the people's centres and the offsets at the candidates leave the
    // device.
    let heat = sigmoid(&out.hm_hp.to_dtype(DType::F32)?)?.reshape((b * j, 1, h, w))?;
    let kc = k.min(h * w);
    let candidates = topk_peaks(&heat, 3, kc)?;
    let centres: Vec<Vec<u32>> = people.iter().map(|p| p.positions.clone()).collect();
    let hps = values_at(&out.hps, &centres)?;
    let at_candidates: Vec<Vec<u32>> = (0..b)
        .map(|bi| {
            candidates[bi * j..(bi + 1) * j]
                .iter()
                .flat_map(|c| c.positions(w))
                .collect()
        })
        .collect();
    let off = values_at(&out.hp_offset, &at_candidates)?;
    let s = STRIDE as f32;
    let mut all = Vec::with_capacity(b);
    for (bi, p) in people.iter().enumerate() {
        let mut dets = Vec::with_capacity(p.scores.len());
        for d in 0..p.scores.len() {
            let [l, t, r, btm] = p.boxes[d].map(|v| v / s);
            let limit = (btm - t).max(r - l) * 0.3;
            let mut joints = Vec::with_capacity(j);
            for n in 0..j {
                let rx = p.xs[d] + hps[bi][2 * n][d];
                let ry = p.ys[d] + hps[bi][2 * n + 1][d];
                let cand = &candidates[bi * j + n];
                let mut best: Option<(f32, f32, f32, f32)> = None;
                for c in 0..cand.len() {
                    let score = cand.scores[c];
                    // Candidates below the threshold sit far away, as in the reference.
                    let (cx, cy) = if score > threshold {
                        (
                            cand.xs[c] as f32 + off[bi][0][n * kc + c],
                            cand.ys[c] as f32 + off[bi][1][n * kc + c],
                        )
                    } else {
                        (-10000.0, -10000.0)
                    };
                    let dist = ((rx - cx).powi(2) + (ry - cy).powi(2)).sqrt();
                    if best.is_none_or(|b| dist < b.0) {
                        best = Some((dist, cx, cy, if score > threshold { score } else { -1.0 }));
                    }
                }
                let joint = match best {
                    Some((dist, cx, cy, score))
                        if !(cx < l
                            || cx > r
                            || cy < t
                            || cy > btm
                            || score < threshold
                            || dist > limit) =>
                    {
                        [cx * s, cy * s, score]
                    }
                    _ => [rx * s, ry * s, 0.0],
                };
                joints.push(joint);
            }
            dets.push(Detection {
                bbox: p.boxes[d],
                score: p.scores[d],
                class: 0,
                payload: joints,
            });
        }
        all.push(dets);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person() -> PersonLabel {
        // A 32x48 person at (16, 8) in a 64x64 input; joint 0 visible, joint 1 unlabelled,
        // joint 2 outside the map.
        PersonLabel {
            bbox: [16.0, 8.0, 48.0, 56.0],
            keypoints: vec![[30.0, 20.0, 2.0], [0.0, 0.0, 0.0], [70.0, 10.0, 1.0]],
        }
    }

    #[test]
    fn encoding_follows_the_reference() {
        let cfg = PoseConfig {
            max_objects: 2,
            ..PoseConfig::new(3)
        };
        let t = encode(&cfg, &[person()], (64, 64)).unwrap();
        // Output 16x16: box (4, 2)–(12, 14), centre (8, 8), index 136.
        assert_eq!(t.det.ind, [136, 0]);
        assert_eq!(t.det.mask, [1.0, 0.0]);
        // Joint 0 at (7.5, 5) → offset from (8, 8) = (−0.5, −3); floor (7, 5) → index 87.
        assert_eq!(&t.hps[..6], &[-0.5, -3.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&t.hps_mask[..6], &[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&t.hp_ind[..3], &[87, 0, 0]);
        assert_eq!(&t.hp_offset[..2], &[0.5, 0.0]);
        assert_eq!(&t.hp_mask[..3], &[1.0, 0.0, 0.0]);
        assert_eq!(t.hm_hp[87], 1.0);
        assert!(t.hm_hp[256..].iter().all(|&v| v == 0.0));
        let mut blind = person();
        blind.keypoints.iter_mut().for_each(|k| k[2] = 0.0);
        let t = encode(&cfg, &[blind], (64, 64)).unwrap();
        assert_eq!(
            t.det.mask,
            [0.0, 0.0],
            "a person without labelled joints trains no box size"
        );
        assert_eq!(t.det.hm[136], 1.0);
        let err = encode(
            &cfg,
            &[PersonLabel {
                keypoints: vec![],
                ..person()
            }],
            (64, 64),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pose targets: person 0 has 0 joints, expected 3"
        );
    }

    #[test]
    fn decoding_snaps_joints_to_nearby_peaks_only() {
        let dev = Device::Cpu;
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let (h, w, j) = (8usize, 8usize, 2usize);
        let mut hm = vec![logit(0.001); h * w];
        hm[3 * w + 3] = logit(0.9); // person at (3, 3)
        let mut wh = vec![0f32; 2 * h * w];
        (wh[3 * w + 3], wh[h * w + 3 * w + 3]) = (4.0, 4.0); // box (1, 1)–(5, 5)
        let mut hps = vec![0f32; 2 * j * h * w];
        let at = 3 * w + 3;
        (hps[at], hps[h * w + at]) = (0.8, -0.9); // joint 0 regressed to (3.8, 2.1)
        (hps[2 * h * w + at], hps[3 * h * w + at]) = (1.0, 1.0); // joint 1 regressed to (4, 4)
        let mut hm_hp = vec![logit(0.001); j * h * w];
        hm_hp[2 * w + 4] = logit(0.6); // a joint-0 peak at (4, 2): snapped
        hm_hp[h * w + 7 * w + 7] = logit(0.6); // a joint-1 peak at (7, 7): outside the box
        let mut hp_offset = vec![0f32; 2 * h * w];
        (hp_offset[2 * w + 4], hp_offset[h * w + 2 * w + 4]) = (0.25, 0.5);
        let t = |v: Vec<f32>, c: usize| Tensor::from_vec(v, (1, c, h, w), &dev).unwrap();
        let out = PoseOutput {
            det: DetectionOutput {
                hm: t(hm, 1),
                wh: t(wh, 2),
                reg: t(vec![0.0; 2 * h * w], 2),
            },
            hps: t(hps, 2 * j),
            hm_hp: t(hm_hp, j),
            hp_offset: t(hp_offset, 2),
        };
        let people = decode(&out, 2, 0.1).unwrap();
        let best = &people[0][0];
        assert_eq!(best.bbox, [4.0, 4.0, 20.0, 20.0]);
        let [x0, y0, s0] = best.payload[0];
        assert_eq!(
            (x0, y0),
            (4.25 * 4.0, 2.5 * 4.0),
            "joint 0 snapped to the peak plus its offset"
        );
        assert!((s0 - 0.6).abs() < 1e-6);
        assert_eq!(
            best.payload[1],
            [16.0, 16.0, 0.0],
            "joint 1 keeps its regressed position"
        );
    }
}
