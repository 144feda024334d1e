//! CenterNet heatmap utilities: peak extraction (3x3 max-pool NMS, top-K) for decoding and
//! Gaussian rendering for target encoding ("Objects as Points", §3 and §4;
//! <https://arxiv.org/abs/1904.07850>).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::ops::{max_pool2d, MaxPool2dConfig};
use crate::{Error, Result};

/// Keeps only local maxima: `h` where `h == maxpool_k×k(h, stride 1, pad k/2)`, else 0.
///
/// # Shapes
/// `(B, C, H, W)` → `(B, C, H, W)`.
pub fn nms(heat: &Tensor, kernel: usize) -> Result<Tensor> {
    if kernel % 2 == 0 {
        return Err(Error::config(
            "heatmap nms",
            format!("kernel {kernel} must be odd"),
        ));
    }
    let hmax = max_pool2d(
        heat,
        MaxPool2dConfig {
            kernel,
            stride: 1,
            padding: kernel / 2,
        },
    )?;
    // `where` rather than a product: a suppressed value is exactly +0 (a negative one times 0
    // would be −0, which the top-K's total order ranks below +0).
    Ok(hmax.eq(heat)?.where_cond(heat, &heat.zeros_like()?)?)
}

/// The K highest peaks of one image, best first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TopK {
    /// Scores, descending (ties: lower class, then lower position first).
    pub scores: Vec<f32>,
    /// Channel (class) of each peak.
    pub classes: Vec<u32>,
    /// Row of each peak.
    pub ys: Vec<u32>,
    /// Column of each peak.
    pub xs: Vec<u32>,
}

impl TopK {
    /// Number of peaks.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether there are no peaks.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// Flat positions `y · W + x` of the peaks in a map of width `width`.
    pub fn positions(&self, width: usize) -> Vec<u32> {
        self.ys
            .iter()
            .zip(&self.xs)
            .map(|(&y, &x)| y * width as u32 + x)
            .collect()
    }
}

/// A score ordered so that a larger score, then a smaller index, is "greater".
#[derive(Clone, Copy, PartialEq)]
struct Candidate {
    score: f32,
    index: usize,
}

impl Eq for Candidate {}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.index.cmp(&self.index))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Top-K over all classes and positions of each image, without sorting the whole map: a
/// K-element min-heap rejects almost every value with one comparison. On the CPU the map is
/// scanned where it is; elsewhere (or with [`crate::ops::Kernels::Portable`]) only chunk maxima
/// and the chunks that can hold the K best values leave the device. Both give the same peaks.
///
/// # Shapes
/// `heat`: `(B, C, H, W)`; returns `B` results of `k` peaks each.
pub fn topk(heat: &Tensor, k: usize) -> Result<Vec<TopK>> {
    select(heat, k, None)
}

/// `topk(nms(heat, kernel), k)` fused: the local-maximum test runs only for the few values that
/// would enter the top-K, so decoding costs about one comparison per value. Suppressed values
/// count as score 0, exactly as in the two-step form. Off the CPU the suppression runs on the
/// device and only the chunks that can hold a peak are copied (see [`topk`]).
///
/// # Shapes
/// `heat`: `(B, C, H, W)`; returns `B` results of `k` peaks each.
pub fn topk_peaks(heat: &Tensor, kernel: usize, k: usize) -> Result<Vec<TopK>> {
    if kernel % 2 == 0 {
        return Err(Error::config(
            "heatmap nms",
            format!("kernel {kernel} must be odd"),
        ));
    }
    select(heat, k, Some(kernel / 2))
}

/// Whether `plane[y·w + x]` is the maximum of its `(2r + 1)²` window (clipped at the borders).
fn is_local_max(plane: &[f32], (h, w): (usize, usize), (y, x): (usize, usize), r: usize) -> bool {
    let v = plane[y * w + x];
    let (y0, y1, x0, x1) = (
        y.saturating_sub(r),
        (y + r + 1).min(h),
        x.saturating_sub(r),
        (x + r + 1).min(w),
    );
    (y0..y1).all(|yy| plane[yy * w + x0..yy * w + x1].iter().all(|&n| n <= v))
}

/// The `k` best candidates offered so far (a min-heap: one comparison rejects almost every
/// value once it is full).
struct Best {
    k: usize,
    heap: BinaryHeap<Reverse<Candidate>>,
}

impl Best {
    fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// Whether `cand` would be kept if offered now.
    fn admits(&self, cand: &Candidate) -> bool {
        self.heap.len() < self.k || self.heap.peek().is_some_and(|worst| *cand > worst.0)
    }

    fn offer(&mut self, cand: Candidate) {
        if self.heap.len() < self.k {
            self.heap.push(Reverse(cand));
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if cand > worst.0 {
                *worst = Reverse(cand);
            }
        }
    }

    /// The kept candidates, best first, as peaks of a `(C, h, w)` map.
    fn into_topk(self, (h, w): (usize, usize)) -> TopK {
        let mut best: Vec<Candidate> = self.heap.into_iter().map(|r| r.0).collect();
        best.sort_unstable_by(|a, b| b.cmp(a));
        let mut out = TopK::default();
        for cand in best {
            out.scores.push(cand.score);
            out.classes.push((cand.index / (h * w)) as u32);
            out.ys.push((cand.index % (h * w) / w) as u32);
            out.xs.push((cand.index % w) as u32);
        }
        out
    }
}

fn select(heat: &Tensor, k: usize, nms_radius: Option<usize>) -> Result<Vec<TopK>> {
    let (_, c, h, w) = heat
        .dims4()
        .map_err(|_| Error::shape("heatmap topk", "heat", heat.shape(), "(B, C, H, W)"))?;
    let available = c * h * w;
    if available == 0 {
        return Err(Error::shape(
            "heatmap topk",
            "heat",
            heat.shape(),
            "a non-empty map",
        ));
    }
    if k > available {
        return Err(Error::TopKTooLarge {
            op: "heatmap topk",
            k,
            available,
            shape: heat.shape().clone(),
        });
    }
    if heat.dim(0)? == 0 {
        return Ok(Vec::new());
    }
    if crate::ops::cpu_kernels(heat) {
        select_on_host(heat, k, nms_radius)
    } else {
        select_on_device(heat, k, nms_radius)
    }
}

/// The whole map copied to the host and scanned once, the local-maximum test fused in.
fn select_on_host(heat: &Tensor, k: usize, nms_radius: Option<usize>) -> Result<Vec<TopK>> {
    let (_, _, h, w) = heat.dims4()?;
    let data = heat
        .to_dtype(DType::F32)?
        .flatten_from(1)?
        .to_vec2::<f32>()?;
    data.par_iter()
        .enumerate()
        .map(|(image, values)| {
            let mut best = Best::new(k);
            for (index, &score) in values.iter().enumerate() {
                if score.is_nan() {
                    return Err(Error::NonFinite {
                        what: format!(
                            "heatmap value of image {image} at channel {}, y {}, x {}",
                            index / (h * w),
                            index % (h * w) / w,
                            index % w
                        ),
                        value: f64::NAN,
                    });
                }
                let mut cand = Candidate { score, index };
                // Suppression sets a score to +0: it lowers a score above +0 and raises one below
                // (−0 included). So a value enters neither way when the higher of the two
                // cannot enter.
                let reachable = match nms_radius {
                    Some(_) if score.total_cmp(&0.0).is_lt() => Candidate { score: 0.0, index },
                    _ => cand,
                };
                if !best.admits(&reachable) {
                    continue;
                }
                if let Some(r) = nms_radius {
                    let plane = &values[index / (h * w) * h * w..][..h * w];
                    if !is_local_max(plane, (h, w), (index % (h * w) / w, index % w), r) {
                        cand.score = 0.0;
                    }
                }
                best.offer(cand);
            }
            Ok(best.into_topk((h, w)))
        })
        .collect()
}

/// Values per chunk in [`select_on_device`]: the host receives one maximum per chunk, then the
/// chunks that can hold a peak of the top-K.
const CHUNK: usize = 256;

/// The suppressed map as a table of `(B·chunks, CHUNK)` rows on the device (−∞ past the end
/// of each image's map) and each image's chunk maxima on the host; `None` when the map holds a
/// NaN.
fn chunk_table(
    heat: &Tensor,
    nms_radius: Option<usize>,
    chunks: usize,
) -> Result<Option<(Tensor, Vec<Vec<f32>>)>> {
    let (b, c, h, w) = heat.dims4()?;
    let n = c * h * w;
    #[cfg(feature = "cuda")]
    if crate::ops::cuda_kernels(heat) {
        let packed = heat.contiguous()?.apply_op1_no_bwd(&PeakChunks {
            radius: nms_radius,
            chunks,
        })?;
        let cells = b * chunks * CHUNK;
        let maxima = packed.narrow(0, cells, b * chunks)?.to_vec1::<f32>()?;
        if maxima.iter().any(|m| m.is_nan()) {
            return Ok(None);
        }
        let rows = packed.narrow(0, 0, cells)?.reshape((b * chunks, CHUNK))?;
        return Ok(Some((
            rows,
            maxima.chunks(chunks).map(<[f32]>::to_vec).collect(),
        )));
    }
    if heat.ne(heat)?.flatten_all()?.max(0)?.to_scalar::<u8>()? != 0 {
        return Ok(None);
    }
    let kept = match nms_radius {
        Some(r) => nms(heat, 2 * r + 1)?,
        None => heat.clone(),
    };
    let mut flat = kept.flatten_from(1)?;
    if chunks * CHUNK > n {
        let pad = Tensor::full(f32::NEG_INFINITY, (b, chunks * CHUNK - n), flat.device())?;
        flat = Tensor::cat(&[&flat, &pad], 1)?;
    }
    let rows = flat.reshape((b * chunks, CHUNK))?;
    let maxima = rows.max(1)?.reshape((b, chunks))?.to_vec2::<f32>()?;
    Ok(Some((rows, maxima)))
}

/// Suppression and chunk maxima in one CUDA kernel (`cuda/peaks.cu`), f32: the chunk table
/// (`B·chunks·CHUNK` values) followed by the `B·chunks` maxima, in one buffer. CUDA only: the
/// CPU scans the map in [`select_on_host`].
#[cfg(feature = "cuda")]
struct PeakChunks {
    radius: Option<usize>,
    chunks: usize,
}

#[cfg(feature = "cuda")]
impl candle_core::CustomOp1 for PeakChunks {
    fn name(&self) -> &'static str {
        "mustard.peak_chunks"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        candle_core::bail!("mustard.peak_chunks runs on CUDA only; the CPU scans the map")
    }

    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let out =
            crate::ops::cuda::peak_chunks((s, l), (b, c * h * w, h, w), self.radius, self.chunks)?;
        Ok((out, candle_core::Shape::from(b * self.chunks * (CHUNK + 1))))
    }
}

/// The top-K with the map left on its device: suppression there, then one maximum per chunk
/// of [`CHUNK`] values comes to the host, and only the chunks whose maximum reaches the K-th
/// largest chunk maximum `m` follow. Exact: at least K values are `>= m` (one per such chunk),
/// so every value of the top-K is `>= m` and sits in a chunk that follows. The host then ranks
/// those values as [`select_on_host`] ranks the whole map, so the result is the same, ties
/// included. For an 80-class 128x128 map and K = 100 that is 20 KiB of maxima and usually
/// about K chunks, 100 KiB, instead of 5 MiB (at least K chunks follow, and every chunk whose
/// maximum ties the bar: a map with fewer than K peaks above 0 sends most of its chunks). On CUDA one kernel (`cuda/peaks.cu`) does the
/// suppression and the chunk maxima; elsewhere composed candle ops do.
pub(crate) fn select_on_device(
    heat: &Tensor,
    k: usize,
    nms_radius: Option<usize>,
) -> Result<Vec<TopK>> {
    let (b, c, h, w) = heat.dims4()?;
    let heat = heat.to_dtype(DType::F32)?;
    if k == 0 {
        return Ok(vec![TopK::default(); b]);
    }
    let n = c * h * w;
    let chunks = n.div_ceil(CHUNK);
    let Some((rows, maxima)) = chunk_table(&heat, nms_radius, chunks)? else {
        // A NaN: the host scan names where it is.
        return select_on_host(&heat, k, nms_radius);
    };
    // IEEE comparisons (−0 == +0, as candle's max sees them); no NaN is left.
    let mut picked: Vec<u32> = Vec::new();
    let mut spans = Vec::with_capacity(b);
    for (image, m) in maxima.iter().enumerate() {
        let bar = if chunks > k {
            let mut sorted = m.clone();
            // total_cmp ranks −0 below +0; compared as IEEE below, the two are one value.
            sorted.select_nth_unstable_by(k - 1, |x, y| y.total_cmp(x));
            sorted[k - 1]
        } else {
            f32::NEG_INFINITY
        };
        let start = picked.len();
        picked.extend(
            (0..chunks)
                .filter(|&i| m[i] >= bar)
                .map(|i| (image * chunks + i) as u32),
        );
        spans.push(start..picked.len());
    }
    let ids = Tensor::from_slice(&picked, picked.len(), rows.device())?;
    let values = rows
        .index_select(&ids, 0)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(spans
        .into_iter()
        .enumerate()
        .map(|(image, span)| {
            let mut best = Best::new(k);
            for row in span {
                let chunk = picked[row] as usize - image * chunks;
                let scores = &values[row * CHUNK..][..CHUNK];
                for (j, &score) in scores.iter().enumerate() {
                    let index = chunk * CHUNK + j;
                    if index >= n {
                        break;
                    }
                    let cand = Candidate { score, index };
                    if best.admits(&cand) {
                        best.offer(cand);
                    }
                }
            }
            best.into_topk((h, w))
        })
        .collect())
}

/// The radius of the Gaussian for a box of `height` x `width` output pixels (SPEC §3): the
/// largest shift of a corner that keeps IoU ≥ `min_overlap`, the minimum over three cases.
pub fn gaussian_radius(height: f64, width: f64, min_overlap: f64) -> f64 {
    let m = min_overlap;
    let (b1, c1) = (height + width, width * height * (1.0 - m) / (1.0 + m));
    let r1 = (b1 - (b1 * b1 - 4.0 * c1).sqrt()) / 2.0;
    let (b2, c2) = (2.0 * (height + width), (1.0 - m) * width * height);
    let r2 = (b2 - (b2 * b2 - 16.0 * c2).sqrt()) / 8.0;
    let (b3, c3) = (-2.0 * m * (height + width), (m - 1.0) * width * height);
    let r3 = (b3 + (b3 * b3 - 16.0 * m * c3).sqrt()) / (8.0 * m);
    r1.min(r2).min(r3)
}

/// The integer radius CenterNet draws with: `max(0, floor(gaussian_radius(ceil h, ceil w, 0.7)))`.
pub fn object_radius(height: f64, width: f64) -> usize {
    let r = gaussian_radius(height.ceil(), width.ceil(), 0.7).floor();
    if r.is_finite() && r > 0.0 {
        r as usize
    } else {
        0
    }
}

/// A `(2r + 1)²` Gaussian with σ = (2r + 1) / 6, values below `f32::EPSILON · max` set to 0.
pub fn gaussian_kernel(radius: usize) -> Vec<f64> {
    let d = 2 * radius + 1;
    let sigma = d as f64 / 6.0;
    let r = radius as f64;
    let mut g = Vec::with_capacity(d * d);
    for y in 0..d {
        for x in 0..d {
            let (dy, dx) = (y as f64 - r, x as f64 - r);
            g.push((-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp());
        }
    }
    let max = g.iter().cloned().fold(0.0, f64::max);
    for v in &mut g {
        if *v < f32::EPSILON as f64 * max {
            *v = 0.0;
        }
    }
    g
}

/// Draws a Gaussian of `radius` centred on the integer point `(cx, cy)` into a row-major
/// `height` x `width` map with element-wise maximum, clipped at the borders.
pub fn draw_gaussian(
    map: &mut [f32],
    size: (usize, usize),
    centre: (i64, i64),
    radius: usize,
) -> Result<()> {
    draw_gaussian_peak(map, size, centre, radius, 1.0)
}

/// [`draw_gaussian`] with its peak `peak` instead of 1 (each value of the kernel times `peak`,
/// in double, rounded once): a soft target, the teacher's confidence at the centre.
pub fn draw_gaussian_peak(
    map: &mut [f32],
    (height, width): (usize, usize),
    (cx, cy): (i64, i64),
    radius: usize,
    peak: f32,
) -> Result<()> {
    if map.len() != height * width {
        return Err(Error::config(
            "draw_gaussian",
            format!(
                "map holds {} values, expected {height} x {width} = {}",
                map.len(),
                height * width
            ),
        ));
    }
    let kernel = gaussian_kernel(radius);
    let (r, d) = (radius as i64, 2 * radius as i64 + 1);
    let (h, w) = (height as i64, width as i64);
    if cx < 0 || cy < 0 || cx >= w || cy >= h {
        return Ok(());
    }
    let (left, right) = (cx.min(r), (w - cx).min(r + 1));
    let (top, bottom) = (cy.min(r), (h - cy).min(r + 1));
    for y in -top..bottom {
        let row = ((cy + y) * w) as usize;
        let krow = ((r + y) * d) as usize;
        for x in -left..right {
            let g = (kernel[krow + (r + x) as usize] * f64::from(peak)) as f32;
            let v = &mut map[row + (cx + x) as usize];
            if g > *v {
                *v = g;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn radius_matches_hand_computed_values() {
        // A 10x10 box: r1 = (20 − √(400 − 4·100·0.3/1.7))/2, r2 = (40 − √(1600 − 16·30))/8,
        // r3 = (−14 + √(196 + 16·0.7·30))/5.6.
        let r1 = (20.0 - (400.0f64 - 4.0 * 100.0 * 0.3 / 1.7).sqrt()) / 2.0;
        let r2 = (40.0 - (1600.0f64 - 16.0 * 30.0).sqrt()) / 8.0;
        let r3 = (-14.0 + (196.0f64 + 16.0 * 0.7 * 30.0).sqrt()) / 5.6;
        assert_eq!(gaussian_radius(10.0, 10.0, 0.7), r1.min(r2).min(r3));
        assert!((gaussian_radius(10.0, 10.0, 0.7) - 0.816_699_867).abs() < 1e-8);
        assert_eq!(object_radius(10.0, 10.0), 0);
        assert_eq!(object_radius(40.0, 25.3), 2);
        assert_eq!(object_radius(100.0, 80.0), 7);
        assert_eq!(object_radius(0.0, 0.0), 0);
    }

    #[test]
    fn gaussian_is_drawn_with_max_and_clipped() {
        let mut map = vec![0f32; 5 * 6];
        map[0] = 0.9;
        draw_gaussian(&mut map, (5, 6), (0, 0), 1).unwrap();
        let sigma = 0.5f64;
        let edge = (-1.0 / (2.0 * sigma * sigma)).exp() as f32;
        let corner = (-2.0 / (2.0 * sigma * sigma)).exp() as f32;
        assert_eq!(map[0], 1.0);
        assert_eq!(map[1], edge);
        assert_eq!(map[6], edge);
        assert_eq!(map[7], corner);
        assert_eq!(map[2], 0.0);
        let before = map.clone();
        draw_gaussian(&mut map, (5, 6), (0, 0), 0).unwrap();
        assert_eq!(map, before);
        draw_gaussian(&mut map, (5, 6), (6, 0), 1).unwrap();
        assert_eq!(map, before, "a centre outside the map draws nothing");
    }

    #[test]
    fn nms_keeps_only_local_maxima_and_topk_orders_them() {
        let v: Vec<f32> = vec![
            0.1, 0.9, 0.2, 0.0, //
            0.3, 0.4, 0.1, 0.7, //
            0.0, 0.0, 0.1, 0.2, //
            0.8, 0.1, 0.0, 0.6,
        ];
        let heat = Tensor::from_vec(v, (1, 1, 4, 4), &Device::Cpu).unwrap();
        let kept = nms(&heat, 3)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut expected = vec![0f32; 16];
        for i in [1, 7, 12, 15] {
            expected[i] = [
                0.1, 0.9, 0.2, 0.0, 0.3, 0.4, 0.1, 0.7, 0.0, 0.0, 0.1, 0.2, 0.8, 0.1, 0.0, 0.6,
            ][i];
        }
        assert_eq!(kept, expected);
        let kept = Tensor::from_vec(kept, (1, 1, 4, 4), &Device::Cpu).unwrap();
        let top = topk(&kept, 3).unwrap();
        assert_eq!(
            top[0],
            TopK {
                scores: vec![0.9, 0.8, 0.7],
                classes: vec![0; 3],
                ys: vec![0, 3, 1],
                xs: vec![1, 0, 3]
            }
        );
        assert_eq!(top[0].positions(4), vec![1, 12, 7]);
    }

    #[test]
    fn fused_peaks_equal_nms_then_topk() {
        let mut s = 12345u64;
        let v: Vec<f32> = (0..2 * 3 * 9 * 7)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((s >> 33) % 50) as f32 / 50.0
            })
            .collect();
        let heat = Tensor::from_vec(v, (2, 3, 9, 7), &Device::Cpu).unwrap();
        for k in [1, 5, 40, 189] {
            let two_step = topk(&nms(&heat, 3).unwrap(), k).unwrap();
            assert_eq!(topk_peaks(&heat, 3, k).unwrap(), two_step, "k = {k}");
        }
        assert_eq!(
            topk_peaks(&heat, 5, 40).unwrap(),
            topk(&nms(&heat, 5).unwrap(), 40).unwrap()
        );
    }

    /// Maps with ties, negative values, both zeros and −∞, of sizes below, at and above
    /// [`CHUNK`], not multiples of it.
    fn awkward_map(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let mut s = seed;
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match (s >> 33) % 40 {
                    0 => -0.0,
                    1 => 0.0,
                    2 => f32::NEG_INFINITY,
                    r => (r as f32 - 12.0) / 8.0,
                }
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn device_selection_equals_the_host_scan() {
        let shapes = [
            (2, 3, 9, 7),
            (2, 5, 17, 13),
            (1, 1, 16, 16),
            (3, 80, 16, 16),
        ];
        for (i, &shape) in shapes.iter().enumerate() {
            let heat = awkward_map(shape, 7 + i as u64);
            let n = shape.1 * shape.2 * shape.3;
            for k in [0, 1, 3, 7, 100, n / 2, n] {
                let k = k.min(n);
                for radius in [None, Some(1), Some(2)] {
                    let host = select_on_host(&heat, k, radius).unwrap();
                    let device = select_on_device(&heat, k, radius).unwrap();
                    assert_eq!(host.len(), shape.0);
                    assert!(host.iter().all(|t| t.len() == k));
                    // Bit for bit: −0 and +0 told apart.
                    let bits = |t: &[TopK]| -> Vec<Vec<u32>> {
                        t.iter()
                            .map(|t| t.scores.iter().map(|s| s.to_bits()).collect())
                            .collect()
                    };
                    assert_eq!(bits(&device), bits(&host), "{shape:?}, k {k}, {radius:?}");
                    assert_eq!(device, host, "{shape:?}, k {k}, {radius:?}");
                }
            }
        }
        // The two-step form agrees with both (suppressed values are +0 there too).
        let heat = awkward_map((2, 5, 17, 13), 3);
        assert_eq!(
            topk(&nms(&heat, 3).unwrap(), 50).unwrap(),
            select_on_device(&heat, 50, Some(1)).unwrap()
        );
    }

    #[test]
    fn a_suppressed_negative_value_counts_as_zero_in_every_path() {
        // −2 is not a local maximum, so suppression raises it to +0, above −1.
        let heat = Tensor::new(&[[[[-1f32, -2.0]]]], &Device::Cpu).unwrap();
        let expected = TopK {
            scores: vec![0.0],
            classes: vec![0],
            ys: vec![0],
            xs: vec![1],
        };
        assert_eq!(topk_peaks(&heat, 3, 1).unwrap()[0], expected);
        assert_eq!(topk(&nms(&heat, 3).unwrap(), 1).unwrap()[0], expected);
        assert_eq!(select_on_device(&heat, 1, Some(1)).unwrap()[0], expected);
        // −0 next to a positive value: suppressed to +0, which ranks above −0.
        let heat = Tensor::new(&[[[[0.5f32, -0.0, -0.0]]]], &Device::Cpu).unwrap();
        let host = topk_peaks(&heat, 3, 3).unwrap();
        assert_eq!(host, topk(&nms(&heat, 3).unwrap(), 3).unwrap());
        assert_eq!(host[0].scores[1].to_bits(), 0f32.to_bits());
        assert_eq!(host, select_on_device(&heat, 3, Some(1)).unwrap());
        // No image: no peaks.
        let none = Tensor::zeros((0, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(topk_peaks(&none, 3, 4).unwrap(), Vec::<TopK>::new());
    }

    #[test]
    fn device_selection_reports_a_nan_as_the_host_scan_does() {
        let mut v = vec![0.25f32; 2 * 300];
        v[300 + 257] = f32::NAN;
        let heat = Tensor::from_vec(v, (2, 3, 10, 10), &Device::Cpu).unwrap();
        assert_eq!(
            select_on_device(&heat, 5, Some(1)).unwrap_err().to_string(),
            "heatmap value of image 1 at channel 2, y 5, x 7 is not finite (NaN)"
        );
    }

    #[test]
    fn topk_breaks_ties_by_class_then_position() {
        let heat = Tensor::ones((1, 2, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let top = topk(&heat, 5).unwrap();
        assert_eq!(top[0].classes, vec![0, 0, 0, 0, 1]);
        assert_eq!(top[0].ys, vec![0, 0, 1, 1, 0]);
        assert_eq!(top[0].xs, vec![0, 1, 0, 1, 0]);
    }

    #[test]
    fn topk_rejects_bad_input_with_the_shape() {
        let heat = Tensor::zeros((2, 3, 4, 5), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            topk(&heat, 61).unwrap_err().to_string(),
            "heatmap topk: k = 61 is larger than the 60 elements of a map of shape [2, 3, 4, 5]"
        );
        let flat = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            topk(&flat, 1).unwrap_err().to_string(),
            "heatmap topk: heat has shape [3, 4], expected (B, C, H, W)"
        );
        let empty = Tensor::zeros((1, 0, 4, 4), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            topk(&empty, 0).unwrap_err().to_string(),
            "heatmap topk: heat has shape [1, 0, 4, 4], expected a non-empty map"
        );
        let nan = Tensor::new(&[[[[0.5f32, f32::NAN]]]], &Device::Cpu).unwrap();
        assert_eq!(
            topk(&nan, 1).unwrap_err().to_string(),
            "heatmap value of image 0 at channel 0, y 0, x 1 is not finite (NaN)"
        );
    }
}
