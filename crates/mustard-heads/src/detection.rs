//! Object detection as centre points: a class heatmap, box sizes and sub-pixel offsets.

use mustard_core::candle_core::{DType, Device, Tensor};
use mustard_core::candle_nn::ops::sigmoid;
use mustard_core::candle_nn::VarBuilder;
use mustard_core::heatmap::{draw_gaussian_peak, object_radius, topk_peaks};
use mustard_core::loss::{focal_loss, quality_focal_loss, reg_l1, weighted_focal_loss};
use mustard_core::{Error, Result};

use crate::block::{mask_absent, values_at, HeadBlock, HeadInit, SharedHidden};
use crate::{Detection, STRIDE};

/// Hyperparameters of detection.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DetectionConfig {
    /// Number of classes.
    pub num_classes: usize,
    /// Hidden channels of each head block.
    pub head_conv: usize,
    /// Most objects per image in the targets.
    pub max_objects: usize,
    /// Weight of the size loss.
    pub wh_weight: f64,
    /// Weight of the offset loss.
    pub off_weight: f64,
    /// Peaks kept by decoding.
    pub top_k: usize,
    /// How a label's score (a teacher's confidence; 1 for a real label) enters the targets.
    pub centre_targets: CentreTargets,
}

/// How the heatmap targets use each label's score (1 for a real label).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CentreTargets {
    /// CenterNet's: every centre a positive of 1, the score ignored.
    #[default]
    Hard,
    /// The Gaussian peaks at the score, trained with the quality focal loss (GFL); sizes and
    /// offsets weighted by the score.
    Soft,
    /// CenterNet's Gaussian and focal loss, each centre's positive term weighted by its score
    /// (and the loss divided by the sum of the scores); sizes and offsets weighted likewise.
    Weighted,
}

impl DetectionConfig {
    /// CenterNet's defaults for `num_classes` classes.
    pub fn new(num_classes: usize) -> Self {
        Self {
            num_classes,
            head_conv: 64,
            max_objects: 128,
            wh_weight: 0.1,
            off_weight: 1.0,
            top_k: 100,
            centre_targets: CentreTargets::Hard,
        }
    }
}

/// A box to detect, in input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxLabel {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Class index.
    pub class: usize,
    /// Confidence: 1 for a real label, the teacher's score for a pseudo-label (used by soft
    /// targets).
    pub score: f32,
}

/// The targets of one image, on the CPU (built in loader workers).
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionTargets {
    /// `(C, h, w)` Gaussian heatmaps.
    pub hm: Vec<f32>,
    /// `(K,)` flat centre positions.
    pub ind: Vec<u32>,
    /// `(K,)` flat positions of the centres in the whole `(C, h, w)` heatmap.
    pub hm_ind: Vec<u32>,
    /// `(K,)` 1 for real objects (the label's score with soft or weighted targets).
    pub mask: Vec<f32>,
    /// `(K, 2)` box sizes in output pixels.
    pub wh: Vec<f32>,
    /// `(K, 2)` centre offsets.
    pub reg: Vec<f32>,
    /// Output map size `(h, w)`.
    pub size: (usize, usize),
}

/// One object's place in the output map, shared with pose targets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Centre {
    pub ct: (f32, f32),
    pub ct_int: (i64, i64),
    pub wh: (f32, f32),
    pub radius: usize,
}

/// SPEC §3: the box in output pixels, clipped; None for an empty box.
pub(crate) fn centre(bbox: [f32; 4], (oh, ow): (usize, usize)) -> Option<Centre> {
    let s = STRIDE as f32;
    let x1 = (bbox[0] / s).clamp(0.0, ow as f32 - 1.0);
    let x2 = (bbox[2] / s).clamp(0.0, ow as f32 - 1.0);
    let y1 = (bbox[1] / s).clamp(0.0, oh as f32 - 1.0);
    let y2 = (bbox[3] / s).clamp(0.0, oh as f32 - 1.0);
    let (w, h) = (x2 - x1, y2 - y1);
    if !(w > 0.0 && h > 0.0) {
        return None;
    }
    let ct = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
    Some(Centre {
        ct,
        ct_int: (ct.0.floor() as i64, ct.1.floor() as i64),
        wh: (w, h),
        radius: object_radius(h as f64, w as f64),
    })
}

/// Encodes the boxes of one image of `input` size `(H, W)` (SPEC §3).
pub fn encode(
    config: &DetectionConfig,
    labels: &[BoxLabel],
    (ih, iw): (usize, usize),
) -> Result<DetectionTargets> {
    let (oh, ow) = (ih / STRIDE, iw / STRIDE);
    let k = config.max_objects;
    let mut t = DetectionTargets {
        hm: vec![0.0; config.num_classes * oh * ow],
        ind: vec![0; k],
        hm_ind: vec![0; k],
        mask: vec![0.0; k],
        wh: vec![0.0; 2 * k],
        reg: vec![0.0; 2 * k],
        size: (oh, ow),
    };
    for (i, label) in labels.iter().take(k).enumerate() {
        if label.class >= config.num_classes {
            return Err(Error::InvalidConfig {
                what: "detection targets",
                reason: format!(
                    "class {} is not below the {} classes",
                    label.class, config.num_classes
                ),
            });
        }
        let Some(c) = centre(label.bbox, (oh, ow)) else {
            continue;
        };
        let plane = &mut t.hm[label.class * oh * ow..(label.class + 1) * oh * ow];
        let score = label.score.clamp(0.0, 1.0);
        let (peak, weight) = match config.centre_targets {
            CentreTargets::Hard => (1.0, 1.0),
            CentreTargets::Soft => (score, score),
            CentreTargets::Weighted => (1.0, score),
        };
        draw_gaussian_peak(plane, (oh, ow), c.ct_int, c.radius, peak)?;
        t.ind[i] = (c.ct_int.1 as usize * ow + c.ct_int.0 as usize) as u32;
        t.hm_ind[i] = (label.class * oh * ow) as u32 + t.ind[i];
        t.mask[i] = weight;
        t.wh[2 * i..2 * i + 2].copy_from_slice(&[c.wh.0, c.wh.1]);
        t.reg[2 * i..2 * i + 2]
            .copy_from_slice(&[c.ct.0 - c.ct_int.0 as f32, c.ct.1 - c.ct_int.1 as f32]);
    }
    Ok(t)
}

/// A batch of detection targets as tensors.
#[derive(Debug, Clone)]
pub struct DetectionBatch {
    /// `(B, C, h, w)`.
    pub hm: Tensor,
    /// `(B, K)` u32.
    pub ind: Tensor,
    /// `(B, K)` u32: the centres' flat positions in the `(C, h, w)` heatmap.
    pub hm_ind: Tensor,
    /// `(B, K)`.
    pub mask: Tensor,
    /// `(B, K, 2)`.
    pub wh: Tensor,
    /// `(B, K, 2)`.
    pub reg: Tensor,
    /// `(B,)`: 1 where the image carries detection labels.
    pub presence: Tensor,
}

impl DetectionBatch {
    /// The same targets on `device` (a no-op on the device they are on).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.map(&|t| Ok(t.to_device(device)?))
    }

    /// Every tensor of the targets passed through `f`.
    pub fn map(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            hm: f(&self.hm)?,
            ind: f(&self.ind)?,
            hm_ind: f(&self.hm_ind)?,
            mask: f(&self.mask)?,
            wh: f(&self.wh)?,
            reg: f(&self.reg)?,
            presence: f(&self.presence)?,
        })
    }
}

/// Stacks per-image targets (borrowed: they are copied once, into the tensors); `presence[i]` says whether image `i` is labelled for the task.
pub fn collate(
    items: &[&DetectionTargets],
    presence: &[bool],
    device: &Device,
) -> Result<DetectionBatch> {
    let b = items.len();
    let first = items.first().ok_or_else(|| Error::InvalidConfig {
        what: "detection collate",
        reason: "an empty batch".into(),
    })?;
    let (oh, ow) = first.size;
    let c = first.hm.len() / (oh * ow);
    let k = first.ind.len();
    if items
        .iter()
        .any(|t| t.size != first.size || t.ind.len() != k || t.hm.len() != first.hm.len())
        || presence.len() != b
    {
        return Err(Error::InvalidConfig {
            what: "detection collate",
            reason: "targets of different sizes in one batch".into(),
        });
    }
    let cat = |f: &dyn Fn(&DetectionTargets) -> &[f32]| {
        items
            .iter()
            .flat_map(|t| f(t).iter().copied())
            .collect::<Vec<f32>>()
    };
    Ok(DetectionBatch {
        hm: Tensor::from_vec(cat(&|t| &t.hm), (b, c, oh, ow), device)?,
        ind: Tensor::from_vec(
            items
                .iter()
                .flat_map(|t| t.ind.iter().copied())
                .collect::<Vec<u32>>(),
            (b, k),
            device,
        )?,
        hm_ind: Tensor::from_vec(
            items
                .iter()
                .flat_map(|t| t.hm_ind.iter().copied())
                .collect::<Vec<u32>>(),
            (b, k),
            device,
        )?,
        mask: Tensor::from_vec(cat(&|t| &t.mask), (b, k), device)?,
        wh: Tensor::from_vec(cat(&|t| &t.wh), (b, k, 2), device)?,
        reg: Tensor::from_vec(cat(&|t| &t.reg), (b, k, 2), device)?,
        presence: Tensor::from_vec(
            presence
                .iter()
                .map(|&p| f32::from(u8::from(p)))
                .collect::<Vec<f32>>(),
            b,
            device,
        )?,
    })
}

/// The raw outputs of a [`DetectionHead`].
#[derive(Debug, Clone)]
pub struct DetectionOutput {
    /// `(B, C, h, w)` heatmap logits.
    pub hm: Tensor,
    /// `(B, 2, h, w)` sizes.
    pub wh: Tensor,
    /// `(B, 2, h, w)` offsets.
    pub reg: Tensor,
}

/// The losses of one batch.
#[derive(Debug, Clone)]
pub struct DetectionLoss {
    /// Weighted sum.
    pub total: Tensor,
    /// Focal loss of the heatmap.
    pub hm: Tensor,
    /// L1 of the sizes.
    pub wh: Tensor,
    /// L1 of the offsets.
    pub reg: Tensor,
}

/// The detection head: `hm`, `wh` and `reg` blocks on the stride-4 map.
#[derive(Debug, Clone)]
pub struct DetectionHead {
    hm: HeadBlock,
    wh: HeadBlock,
    reg: HeadBlock,
    config: DetectionConfig,
}

impl DetectionHead {
    /// Builds (or loads) the head under `vb` (`hm.*`, `wh.*`, `reg.*`).
    pub fn new(in_channels: usize, config: &DetectionConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let hc = config.head_conv;
        Ok(Self {
            hm: HeadBlock::new(
                in_channels,
                hc,
                config.num_classes,
                HeadInit::HEATMAP,
                vb.pp("hm"),
            )?,
            wh: HeadBlock::new(in_channels, hc, 2, HeadInit::Regression, vb.pp("wh"))?,
            reg: HeadBlock::new(in_channels, hc, 2, HeadInit::Regression, vb.pp("reg"))?,
            config: config.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DetectionConfig {
        &self.config
    }

    /// A copy for inference ([`HeadBlock::for_inference`] for each block).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self {
            hm: self.hm.for_inference()?,
            wh: self.wh.for_inference()?,
            reg: self.reg.for_inference()?,
            config: self.config.clone(),
        })
    }

    /// # Shapes
    /// `(B, in, h, w)` stride-4 features → maps of `(B, ·, h, w)`.
    pub fn forward(&self, x: &Tensor) -> Result<DetectionOutput> {
        self.forward_shared(x, &SharedHidden::new(&self.blocks(), x)?)
    }

    /// [`DetectionHead::forward`] with the hidden maps in `shared` ([`SharedHidden`]).
    pub fn forward_shared(&self, x: &Tensor, shared: &SharedHidden) -> Result<DetectionOutput> {
        Ok(DetectionOutput {
            hm: self.hm.forward_shared(x, shared)?,
            wh: self.wh.forward_shared(x, shared)?,
            reg: self.reg.forward_shared(x, shared)?,
        })
    }

    /// The head's blocks: `hm`, `wh`, `reg`.
    pub fn blocks(&self) -> Vec<&HeadBlock> {
        vec![&self.hm, &self.wh, &self.reg]
    }

    /// Appends the head to `g` under `prefix`; returns the raw `hm`, `wh` and `reg` maps.
    pub fn onnx(
        &self,
        g: &mut mustard_core::onnx::Graph,
        x: &str,
        prefix: &str,
    ) -> Result<[String; 3]> {
        Ok([
            self.hm.onnx(g, x, &format!("{prefix}.hm"))?,
            self.wh.onnx(g, x, &format!("{prefix}.wh"))?,
            self.reg.onnx(g, x, &format!("{prefix}.reg"))?,
        ])
    }

    /// Focal + `wh_weight`·L1(wh) + `off_weight`·L1(reg), over the images marked present.
    pub fn loss(&self, out: &DetectionOutput, t: &DetectionBatch) -> Result<DetectionLoss> {
        // The objects' scores are their mask weights.
        let hm = match self.config.centre_targets {
            CentreTargets::Hard => focal_loss(&out.hm, &t.hm, Some(&t.presence))?,
            CentreTargets::Soft => quality_focal_loss(&out.hm, &t.hm, &t.mask, Some(&t.presence))?,
            CentreTargets::Weighted => {
                weighted_focal_loss(&out.hm, &t.hm, (&t.hm_ind, &t.mask), Some(&t.presence))?
            }
        };
        let mask = mask_absent(&t.mask, &t.presence)?;
        let wh = reg_l1(&out.wh, &t.ind, &mask, &t.wh)?;
        let reg = reg_l1(&out.reg, &t.ind, &mask, &t.reg)?;
        let total = ((&hm + (&wh * self.config.wh_weight)?)? + (&reg * self.config.off_weight)?)?;
        Ok(DetectionLoss { total, hm, wh, reg })
    }

    /// The `top_k` best boxes of each image, in input pixels (SPEC §5).
    pub fn decode(&self, out: &DetectionOutput) -> Result<Vec<Vec<Detection>>> {
        decode(out, self.config.top_k)
    }

    /// Convolution FLOPs on an `h` x `w` stride-4 map.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        self.hm.flops(h, w) + self.wh.flops(h, w) + self.reg.flops(h, w)
    }
}

/// Peaks of the heatmap (3x3 NMS, top-K over classes and positions) with their sizes and offsets.
pub(crate) struct Peaks {
    pub scores: Vec<f32>,
    pub classes: Vec<u32>,
    pub xs: Vec<f32>,
    pub ys: Vec<f32>,
    /// Flat positions `y·W + x` on the output map.
    pub positions: Vec<u32>,
    pub boxes: Vec<[f32; 4]>,
}

/// The peaks of each image: found on the heatmap's device, with the sizes and offsets gathered
/// there, so only the peaks' values are copied to the host.
pub(crate) fn peaks(out: &DetectionOutput, k: usize) -> Result<Vec<Peaks>> {
    let (_, _, _, w) = out.hm.dims4()?;
    let k = k.min(out.hm.elem_count() / out.hm.dim(0)?);
    let heat = sigmoid(&out.hm.to_dtype(DType::F32)?)?;
    let top = topk_peaks(&heat, 3, k)?;
    let positions: Vec<Vec<u32>> = top.iter().map(|t| t.positions(w)).collect();
    let (wh, reg) = (
        values_at(&out.wh, &positions)?,
        values_at(&out.reg, &positions)?,
    );
    Ok(top
        .into_iter()
        .zip(positions)
        .enumerate()
        .map(|(b, (t, positions))| {
            let mut p = Peaks {
                scores: t.scores.clone(),
                classes: t.classes.clone(),
                xs: vec![],
                ys: vec![],
                positions,
                boxes: vec![],
            };
            for (i, (&y, &x)) in t.ys.iter().zip(&t.xs).enumerate() {
                let (rx, ry) = (reg[b][0][i], reg[b][1][i]);
                let (bw, bh) = (wh[b][0][i], wh[b][1][i]);
                let (cx, cy) = (x as f32 + rx, y as f32 + ry);
                let s = STRIDE as f32;
                p.xs.push(x as f32);
                p.ys.push(y as f32);
                p.boxes.push([
                    (cx - bw / 2.0) * s,
                    (cy - bh / 2.0) * s,
                    (cx + bw / 2.0) * s,
                    (cy + bh / 2.0) * s,
                ]);
            }
            p
        })
        .collect())
}

/// Decodes raw outputs into the `k` best boxes per image, in input pixels.
pub fn decode(out: &DetectionOutput, k: usize) -> Result<Vec<Vec<Detection>>> {
    Ok(peaks(out, k)?
        .into_iter()
        .map(|p| {
            (0..p.scores.len())
                .map(|i| Detection {
                    bbox: p.boxes[i],
                    score: p.scores[i],
                    class: p.classes[i] as usize,
                    payload: (),
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use mustard_core::candle_core::Device;

    use super::*;

    #[test]
    fn encoding_follows_the_reference_formulas() {
        let cfg = DetectionConfig {
            max_objects: 4,
            ..DetectionConfig::new(2)
        };
        // Input 64x64 → output 16x16. Box (10, 6)–(42, 30) → (2.5, 1.5)–(10.5, 7.5) at stride 4.
        let labels = [
            BoxLabel {
                bbox: [10.0, 6.0, 42.0, 30.0],
                class: 1,
                score: 0.6,
            },
            BoxLabel {
                bbox: [5.0, 5.0, 5.0, 9.0],
                class: 0,
                score: 1.0,
            },
        ];
        let t = encode(&cfg, &labels, (64, 64)).unwrap();
        assert_eq!(t.size, (16, 16));
        // Centre (6.5, 4.5) → integer (6, 4), index 4·16 + 6 = 70.
        assert_eq!(t.ind, [70, 0, 0, 0]);
        assert_eq!(t.mask, [1.0, 0.0, 0.0, 0.0], "an empty box gets no target");
        assert_eq!(&t.wh[..2], &[8.0, 6.0]);
        assert_eq!(&t.reg[..2], &[0.5, 0.5]);
        let plane = &t.hm[256..512];
        assert_eq!(plane[70], 1.0);
        // radius = floor(gaussian_radius(6, 8, 0.7)) = floor(0.559) = 0: a single peak.
        assert_eq!(object_radius(6.0, 8.0), 0);
        assert_eq!(plane[71], 0.0);
        assert_eq!(plane.iter().filter(|&&v| v > 0.0).count(), 1);
        assert!(t.hm[..256].iter().all(|&v| v == 0.0));
        // Soft targets: the peak and the size and offset weight are the label's score; a
        // larger box's Gaussian is the hard one times the score.
        let soft = DetectionConfig {
            centre_targets: CentreTargets::Soft,
            ..cfg.clone()
        };
        let s = encode(&soft, &labels, (64, 64)).unwrap();
        assert_eq!(s.mask, [0.6, 0.0, 0.0, 0.0]);
        assert_eq!(s.hm[256 + 70], 0.6);
        assert_eq!(
            (s.ind, s.wh, s.reg),
            (t.ind.clone(), t.wh.clone(), t.reg.clone())
        );
        let big = [BoxLabel {
            bbox: [0.0, 0.0, 160.0, 160.0],
            class: 0,
            score: 0.5,
        }];
        let (h, sft) = (
            encode(&cfg, &big, (256, 256)).unwrap(),
            encode(&soft, &big, (256, 256)).unwrap(),
        );
        let spread = h.hm.iter().filter(|&&v| v > 0.0 && v < 1.0).count();
        assert!(spread >= 8, "{spread}");
        for (a, b) in h.hm.iter().zip(&sft.hm) {
            assert_eq!(*b, (f64::from(*a) * 0.5) as f32);
        }
        let err = encode(
            &cfg,
            &[BoxLabel {
                bbox: [0.0, 0.0, 8.0, 8.0],
                class: 2,
                score: 1.0,
            }],
            (64, 64),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "detection targets: class 2 is not below the 2 classes"
        );
    }

    /// Hand-made outputs decode as the reference does: box = (x + reg ± w/2, y + reg ± h/2) · 4.
    #[test]
    fn decoding_matches_the_reference_on_a_hand_made_heatmap() {
        let dev = Device::Cpu;
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let mut hm = vec![logit(0.01); 2 * 4 * 4];
        hm[5] = logit(0.9); // class 0, (y 1, x 1)
        hm[4] = logit(0.8); // its neighbour: suppressed by NMS
        hm[16 + 14] = logit(0.7); // class 1, (y 3, x 2)
        let mut wh = vec![0f32; 2 * 16];
        let mut reg = vec![0f32; 2 * 16];
        (wh[5], wh[16 + 5], reg[5], reg[16 + 5]) = (2.0, 3.0, 0.25, 0.5);
        (wh[14], wh[16 + 14], reg[14], reg[16 + 14]) = (1.0, 1.0, 0.0, 0.0);
        let out = DetectionOutput {
            hm: Tensor::from_vec(hm, (1, 2, 4, 4), &dev).unwrap(),
            wh: Tensor::from_vec(wh, (1, 2, 4, 4), &dev).unwrap(),
            reg: Tensor::from_vec(reg, (1, 2, 4, 4), &dev).unwrap(),
        };
        let dets = decode(&out, 3).unwrap();
        assert_eq!(dets[0].len(), 3);
        let d = &dets[0][0];
        assert_eq!((d.class, d.score), (0, 0.9));
        // centre (1.25, 1.5), w 2, h 3 → (0.25, 0, 2.25, 3) · 4
        assert_eq!(d.bbox, [1.0, 0.0, 9.0, 12.0]);
        assert_eq!(
            (dets[0][1].class, dets[0][1].bbox),
            (1, [6.0, 10.0, 10.0, 14.0])
        );
        assert!((dets[0][1].score - 0.7).abs() < 1e-6);
        assert!(
            (dets[0][2].score - 0.01).abs() < 1e-6,
            "the suppressed neighbour does not appear"
        );
    }
}
