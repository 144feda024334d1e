//! Augmentation that moves image, boxes, keypoints, label maps and depth together.
//!
//! Coordinates are continuous: pixel `(i, j)` covers `[i, i + 1) x [j, j + 1)`, so a horizontal
//! flip maps `x` to `W − x` and boxes stay exact. The geometric transform is CenterNet's affine
//! warp without rotation: a square of side `s` centred on `c` in the source is mapped onto the
//! `out` x `out` output. Image pixels are sampled bilinearly (zero outside), label maps and depth
//! by nearest neighbour (255 and 0 outside).

use image::{GrayImage, Luma, Rgb, RgbImage};
use mustard_core::rng::Rng;

use crate::imageio::DepthMap;
use crate::{Error, Result, Sample};

/// A 2-D affine map `(x, y) → (a·x + b·y + c, d·x + e·y + f)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine(pub [f64; 6]);

impl Affine {
    /// The identity.
    pub const IDENTITY: Affine = Affine([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);

    /// Scale by `(sx, sy)`, then translate by `(tx, ty)`.
    pub fn scale_translate(sx: f64, sy: f64, tx: f64, ty: f64) -> Self {
        Affine([sx, 0.0, tx, 0.0, sy, ty])
    }

    /// Maps a point.
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        let m = &self.0;
        (m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5])
    }

    /// `self` after `first`: `p → self(first(p))`.
    pub fn after(&self, first: &Affine) -> Affine {
        let (a, b) = (&self.0, &first.0);
        Affine([
            a[0] * b[0] + a[1] * b[3],
            a[0] * b[1] + a[1] * b[4],
            a[0] * b[2] + a[1] * b[5] + a[2],
            a[3] * b[0] + a[4] * b[3],
            a[3] * b[1] + a[4] * b[4],
            a[3] * b[2] + a[4] * b[5] + a[5],
        ])
    }

    /// The inverse map (None when singular).
    pub fn inverse(&self) -> Option<Affine> {
        let m = &self.0;
        let det = m[0] * m[4] - m[1] * m[3];
        if det.abs() < 1e-12 {
            return None;
        }
        let (a, b, d, e) = (m[4] / det, -m[1] / det, -m[3] / det, m[0] / det);
        Some(Affine([
            a,
            b,
            -(a * m[2] + b * m[5]),
            d,
            e,
            -(d * m[2] + e * m[5]),
        ]))
    }
}

/// Augmentation settings (CenterNet's defaults).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AugmentConfig {
    /// Output side in pixels (a multiple of 32).
    pub size: u32,
    /// Random scale factor range `1 ± scale` of the crop side.
    pub scale: f64,
    /// Random shift of the crop centre, as a fraction of the image size.
    pub shift: f64,
    /// Probability of a horizontal flip.
    pub flip: f64,
    /// Strength of brightness/contrast/saturation jitter (0 disables).
    pub color: f64,
}

impl AugmentConfig {
    /// Training augmentation at `size`.
    pub fn train(size: u32) -> Self {
        Self {
            size,
            scale: 0.4,
            shift: 0.1,
            flip: 0.5,
            color: 0.4,
        }
    }

    /// Training augmentation at `size` with the random scale, shift and colour ranges multiplied
    /// by `strength` (1: [`AugmentConfig::train`]).
    pub fn train_at_strength(size: u32, strength: f64) -> Self {
        let full = Self::train(size);
        Self {
            scale: full.scale * strength,
            shift: full.shift * strength,
            color: full.color * strength,
            ..full
        }
    }

    /// No randomness: letterbox into `size` x `size` (evaluation).
    pub fn eval(size: u32) -> Self {
        Self {
            size,
            scale: 0.0,
            shift: 0.0,
            flip: 0.0,
            color: 0.0,
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.size == 0 || self.size % 32 != 0 {
            return Err(Error::config(
                "augment size",
                format!("{} must be a positive multiple of 32", self.size),
            ));
        }
        if !(0.0..1.0).contains(&self.scale)
            || !(0.0..=1.0).contains(&self.flip)
            || self.shift < 0.0
            || self.color < 0.0
        {
            return Err(Error::config(
                "augment",
                format!(
                    "scale {} must be in [0, 1), flip {} in [0, 1], shift and color ≥ 0",
                    self.scale, self.flip
                ),
            ));
        }
        Ok(())
    }

    /// Applies the augmentation to a sample; `rng` decides every random choice.
    pub fn apply(&self, sample: Sample, flip_pairs: &[(usize, usize)], rng: &mut Rng) -> Sample {
        let (w, h) = sample.size();
        let mut sample = sample;
        if self.flip > 0.0 && rng.chance(self.flip) {
            sample = hflip(sample, flip_pairs);
        }
        let side = w.max(h) as f64
            * if self.scale > 0.0 {
                rng.range(1.0 - self.scale, 1.0 + self.scale)
            } else {
                1.0
            };
        let (mut cx, mut cy) = (w as f64 / 2.0, h as f64 / 2.0);
        if self.shift > 0.0 {
            cx += rng.range(-self.shift, self.shift) * w as f64;
            cy += rng.range(-self.shift, self.shift) * h as f64;
        }
        let sample = warp(
            sample,
            crop_transform((cx, cy), side, self.size),
            self.size,
            self.size,
        );
        if self.color > 0.0 {
            let mut sample = sample;
            color_jitter(&mut sample.image, self.color, rng);
            sample
        } else {
            sample
        }
    }
}

/// CenterNet's `get_affine_transform` without rotation: the square of side `side` centred on
/// `centre` onto an `out` x `out` image.
pub fn crop_transform(centre: (f64, f64), side: f64, out: u32) -> Affine {
    let s = out as f64 / side;
    Affine::scale_translate(
        s,
        s,
        out as f64 / 2.0 - centre.0 * s,
        out as f64 / 2.0 - centre.1 * s,
    )
}

/// Mirrors a sample left–right, swapping left and right joints.
pub fn hflip(mut sample: Sample, flip_pairs: &[(usize, usize)]) -> Sample {
    let (w, _) = sample.size();
    let wf = w as f32;
    image::imageops::flip_horizontal_in_place(&mut sample.image);
    if let Some(s) = &mut sample.semantic {
        image::imageops::flip_horizontal_in_place(s);
    }
    if let Some(d) = &mut sample.depth {
        image::imageops::flip_horizontal_in_place(d);
    }
    for obj in &mut sample.objects {
        let [x1, y1, x2, y2] = obj.bbox;
        obj.bbox = [wf - x2, y1, wf - x1, y2];
        if let Some(kps) = &mut obj.keypoints {
            for kp in kps.iter_mut() {
                if kp[2] > 0.0 {
                    kp[0] = wf - kp[0];
                }
            }
            for &(l, r) in flip_pairs {
                if l < kps.len() && r < kps.len() {
                    kps.swap(l, r);
                }
            }
        }
    }
    sample.transform = Affine::scale_translate(-1.0, 1.0, w as f64, 0.0).after(&sample.transform);
    sample
}

/// Warps a sample with `t` into an `out_w` x `out_h` sample.
pub fn warp(mut sample: Sample, t: Affine, out_w: u32, out_h: u32) -> Sample {
    // Source coordinates of the output pixel centres, per column and per row.
    let (xs, ys) = source_grid(t, out_w, out_h);
    sample.image = warp_rgb(&sample.image, &xs, &ys);
    sample.semantic = sample
        .semantic
        .take()
        .map(|s| warp_nearest_gray(&s, &xs, &ys, 255));
    sample.depth = sample
        .depth
        .take()
        .map(|d| warp_nearest_depth(&d, &xs, &ys));
    for obj in &mut sample.objects {
        let [x1, y1, x2, y2] = obj.bbox;
        let (a, b) = t.apply(x1 as f64, y1 as f64);
        let (c, d) = t.apply(x2 as f64, y2 as f64);
        obj.bbox = [
            a.min(c).clamp(0.0, out_w as f64) as f32,
            b.min(d).clamp(0.0, out_h as f64) as f32,
            a.max(c).clamp(0.0, out_w as f64) as f32,
            b.max(d).clamp(0.0, out_h as f64) as f32,
        ];
        if let Some(kps) = &mut obj.keypoints {
            for kp in kps.iter_mut() {
                if kp[2] > 0.0 {
                    let (x, y) = t.apply(kp[0] as f64, kp[1] as f64);
                    kp[0] = x as f32;
                    kp[1] = y as f32;
                }
            }
        }
    }
    // Objects cropped away entirely carry no label any more.
    sample
        .objects
        .retain(|o| o.bbox[2] > o.bbox[0] && o.bbox[3] > o.bbox[1]);
    sample.transform = t.after(&sample.transform);
    sample
}

/// Source coordinates of the output pixel centres of a scale + translation warp.
fn source_grid(t: Affine, out_w: u32, out_h: u32) -> (Vec<f64>, Vec<f64>) {
    assert!(
        t.0[1] == 0.0 && t.0[3] == 0.0,
        "warp supports scale and translation only"
    );
    let inv = t
        .inverse()
        .expect("scale and translation warps are invertible");
    let xs = (0..out_w)
        .map(|u| inv.0[0] * (u as f64 + 0.5) + inv.0[2])
        .collect();
    let ys = (0..out_h)
        .map(|v| inv.0[4] * (v as f64 + 0.5) + inv.0[5])
        .collect();
    (xs, ys)
}

/// Warps a label map with `t` (nearest neighbour; `outside` where the source has no pixel).
pub fn warp_labels(img: &GrayImage, t: Affine, out_w: u32, out_h: u32, outside: u8) -> GrayImage {
    let (xs, ys) = source_grid(t, out_w, out_h);
    warp_nearest_gray(img, &xs, &ys, outside)
}

/// Warps a depth map with `t` (nearest neighbour; 0, unknown, where the source has no pixel).
pub fn warp_depth(img: &DepthMap, t: Affine, out_w: u32, out_h: u32) -> DepthMap {
    let (xs, ys) = source_grid(t, out_w, out_h);
    warp_nearest_depth(img, &xs, &ys)
}

fn warp_rgb(img: &RgbImage, xs: &[f64], ys: &[f64]) -> RgbImage {
    let (w, h) = img.dimensions();
    let mut out = RgbImage::new(xs.len() as u32, ys.len() as u32);
    for v in 0..ys.len() {
        for u in 0..xs.len() {
            let (sx, sy) = (xs[u], ys[v]);
            // Bilinear on pixel centres, zero outside.
            let (fx, fy) = (sx - 0.5, sy - 0.5);
            let (x0, y0) = (fx.floor(), fy.floor());
            let (ax, ay) = (fx - x0, fy - y0);
            let mut acc = [0f64; 3];
            for (dy, wy) in [(0.0, 1.0 - ay), (1.0, ay)] {
                for (dx, wx) in [(0.0, 1.0 - ax), (1.0, ax)] {
                    let (px, py) = (x0 + dx, y0 + dy);
                    if wx * wy == 0.0 || px < 0.0 || py < 0.0 || px >= w as f64 || py >= h as f64 {
                        continue;
                    }
                    let p = img.get_pixel(px as u32, py as u32).0;
                    for c in 0..3 {
                        acc[c] += wx * wy * p[c] as f64;
                    }
                }
            }
            out.put_pixel(
                u as u32,
                v as u32,
                Rgb(acc.map(|a| a.round().clamp(0.0, 255.0) as u8)),
            );
        }
    }
    out
}

fn nearest(sx: f64, sy: f64, w: u32, h: u32) -> Option<(u32, u32)> {
    if sx < 0.0 || sy < 0.0 || sx >= w as f64 || sy >= h as f64 {
        None
    } else {
        Some((sx as u32, sy as u32))
    }
}

fn warp_nearest_gray(img: &GrayImage, xs: &[f64], ys: &[f64], outside: u8) -> GrayImage {
    let (w, h) = img.dimensions();
    GrayImage::from_fn(xs.len() as u32, ys.len() as u32, |u, v| {
        let (sx, sy) = (xs[u as usize], ys[v as usize]);
        Luma([nearest(sx, sy, w, h).map_or(outside, |(x, y)| img.get_pixel(x, y).0[0])])
    })
}

fn warp_nearest_depth(img: &DepthMap, xs: &[f64], ys: &[f64]) -> DepthMap {
    let (w, h) = img.dimensions();
    DepthMap::from_fn(xs.len() as u32, ys.len() as u32, |u, v| {
        let (sx, sy) = (xs[u as usize], ys[v as usize]);
        Luma([nearest(sx, sy, w, h).map_or(0.0, |(x, y)| img.get_pixel(x, y).0[0])])
    })
}

/// Random brightness, contrast and saturation, each by a factor in `1 ± strength`.
pub fn color_jitter(img: &mut RgbImage, strength: f64, rng: &mut Rng) {
    let brightness = rng.range(1.0 - strength, 1.0 + strength);
    let contrast = rng.range(1.0 - strength, 1.0 + strength);
    let saturation = rng.range(1.0 - strength, 1.0 + strength);
    let grey = |p: [f64; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let n = (img.width() * img.height()).max(1) as f64;
    let mean = img.pixels().map(|p| grey(p.0.map(f64::from))).sum::<f64>() / n * brightness;
    for p in img.pixels_mut() {
        let mut v = p.0.map(|c| c as f64 * brightness);
        let g = grey(v);
        for c in v.iter_mut() {
            *c = g + (*c - g) * saturation;
            *c = mean + (*c - mean) * contrast;
        }
        p.0 = v.map(|c| c.round().clamp(0.0, 255.0) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Label, Object, TaskSet};

    fn sample() -> Sample {
        let (w, h) = (40u32, 30u32);
        let mut semantic = GrayImage::new(w, h);
        for y in 5..15 {
            for x in 8..20 {
                semantic.put_pixel(x, y, Luma([3]));
            }
        }
        let kps = vec![
            [10.5, 6.5, 2.0],
            [12.25, 7.0, 2.0],
            [18.0, 14.0, 1.0],
            [0.0, 0.0, 0.0],
        ];
        Sample {
            image_id: 1,
            image: RgbImage::from_fn(w, h, |x, y| {
                Rgb([(x * 6) as u8, (y * 8) as u8, ((x + y) * 3) as u8])
            }),
            objects: vec![Object {
                bbox: [8.0, 5.0, 20.0, 15.0],
                class: 2,
                crowd: false,
                keypoints: Some(kps),
                score: 1.0,
            }],
            semantic: Some(semantic),
            depth: Some(DepthMap::from_fn(w, h, |x, y| {
                Luma([1.0 + x as f32 * 0.1 + y as f32])
            })),
            label: Some(Label::Class(1)),
            tasks: TaskSet::all(),
            transform: Affine::IDENTITY,
            original_size: (w, h),
        }
    }

    #[test]
    fn flip_twice_is_the_identity_and_swaps_joints() {
        let pairs = [(1, 2)];
        let s = sample();
        let once = hflip(s.clone(), &pairs);
        assert_eq!(once.objects[0].bbox, [20.0, 5.0, 32.0, 15.0]);
        let kps = once.objects[0].keypoints.as_ref().unwrap();
        assert_eq!(
            kps[1],
            [22.0, 14.0, 1.0],
            "right joint takes the flipped left one"
        );
        assert_eq!(kps[2], [27.75, 7.0, 2.0]);
        assert_eq!(kps[3], [0.0, 0.0, 0.0], "unlabelled joints stay untouched");
        assert_eq!(once.transform.apply(12.25, 7.0), (27.75, 7.0));
        let twice = hflip(once, &pairs);
        assert_eq!(twice.image, s.image);
        assert_eq!(twice.semantic, s.semantic);
        assert_eq!(twice.depth, s.depth);
        assert_eq!(twice.objects, s.objects);
        assert_eq!(twice.transform, Affine::IDENTITY);
    }

    #[test]
    fn boxes_and_keypoints_follow_the_warp_and_masks_stay_inside_boxes() {
        let cfg = AugmentConfig::train(32);
        for seed in 0..20 {
            let mut rng = Rng::new(seed);
            let s = sample();
            let out = cfg.apply(s.clone(), &[(1, 2)], &mut rng);
            assert_eq!(out.size(), (32, 32));
            let t = out.transform;
            let flipped = t.0[0] < 0.0;
            // Keypoints: the recorded transform maps the original joint to the new one.
            if let Some(obj) = out.objects.first() {
                let kps = obj.keypoints.as_ref().unwrap();
                let orig = s.objects[0].keypoints.as_ref().unwrap();
                for (j, kp) in kps.iter().enumerate() {
                    let src = if flipped { [0, 2, 1, 3][j] } else { j };
                    if orig[src][2] > 0.0 {
                        let (x, y) = t.apply(orig[src][0] as f64, orig[src][1] as f64);
                        assert!(
                            (kp[0] as f64 - x).abs() < 1e-4 && (kp[1] as f64 - y).abs() < 1e-4,
                            "seed {seed} joint {j}"
                        );
                    }
                }
                // Box corners follow the transform (clipped to the output).
                let (a, b) = t.apply(8.0, 5.0);
                let (c, d) = t.apply(20.0, 15.0);
                let expect = [
                    a.min(c).clamp(0.0, 32.0),
                    b.min(d).clamp(0.0, 32.0),
                    a.max(c).clamp(0.0, 32.0),
                    b.max(d).clamp(0.0, 32.0),
                ];
                for k in 0..4 {
                    assert!(
                        (obj.bbox[k] as f64 - expect[k]).abs() < 1e-4,
                        "seed {seed}: {:?} vs {expect:?}",
                        obj.bbox
                    );
                }
                // Every pixel labelled with the object's class lies inside its box.
                let sem = out.semantic.as_ref().unwrap();
                for (x, y, p) in sem.enumerate_pixels() {
                    if p.0[0] == 3 {
                        let (cx, cy) = (x as f32 + 0.5, y as f32 + 0.5);
                        assert!(
                            cx >= obj.bbox[0] - 1e-3
                                && cx <= obj.bbox[2] + 1e-3
                                && cy >= obj.bbox[1] - 1e-3
                                && cy <= obj.bbox[3] + 1e-3,
                            "seed {seed}: pixel ({x}, {y}) outside {:?}",
                            obj.bbox
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn eval_letterbox_keeps_the_aspect_ratio() {
        let out = AugmentConfig::eval(64).apply(sample(), &[], &mut Rng::new(0));
        // 40x30 → side 40 → scale 1.6, centred: y offset 32 − 15·1.6 = 8.
        assert_eq!(out.transform, Affine::scale_translate(1.6, 1.6, 0.0, 8.0));
        assert_eq!(out.objects[0].bbox, [12.8, 16.0, 32.0, 32.0]);
        assert_eq!(
            out.semantic.as_ref().unwrap().get_pixel(0, 0).0,
            [255],
            "outside the image is ignored"
        );
        assert_eq!(out.depth.as_ref().unwrap().get_pixel(0, 0).0, [0.0]);
        assert_eq!(
            AugmentConfig::eval(60).validate().unwrap_err().to_string(),
            "augment size: 60 must be a positive multiple of 32"
        );
    }
}
