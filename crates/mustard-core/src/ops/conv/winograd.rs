//! Winograd's minimal filtering F(4x4, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 4x4 tile of the output is computed from the 6x6 tile of the input under it as
//! `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`: 36 multiplications per input channel instead of the
//! 144 of the direct form. Over all channels the element-wise products become 36 independent
//! GEMMs, one per position `ξ` of the 6x6 transformed tile:
//! `M[ξ] (cout × tiles) = U[ξ] (cout × cin) · V[ξ] (cin × tiles)`, where `U = G g Gᵀ` is the
//! transformed weight and `V = Bᵀ d B` the transformed input. The GEMMs do 4x fewer
//! multiply-accumulates than im2col's; the transforms are additions and small multiples that
//! cost a few percent of that.
//!
//! The work is cut into blocks of tile rows of one image whose `V` and `M` (36·(cin + cout)
//! values per tile) stay in the cache between the transforms and the GEMMs. Within a block:
//! - input transform, per input channel: copy six input rows (zero outside the map), apply `Bᵀ`
//!   down the columns (vectorised along the row), then `B` across each tile;
//! - 36 GEMMs;
//! - output transform, per output channel: `A` across, `Aᵀ` down, then bias and ReLU, written to
//!   the output rows the block owns.
//!
//! The transforms use the interpolation points 0, ±1, ±2, ∞, whose matrices hold only small
//! integers and the fractions of `G`; in f32 the result differs from the direct sum by a few
//! units in the last place of the largest partial sums (the parity tests bound it).
//!
//! The input gradient of a 3x3 stride-1 convolution with padding `p` is the 3x3 stride-1
//! convolution of the output gradient with the flipped, transposed weight and padding `2 − p`,
//! so the same kernel serves it.

use std::mem::MaybeUninit;

use gemm::Parallelism;
use rayon::prelude::*;

use super::kernels::{enough_tasks, matmul, transpose, Element, Geometry, Mat, SharedMut};
#[cfg(target_arch = "x86_64")]
use crate::ops::has_avx2;
use crate::ops::Real;

/// Output tile side.
const M: usize = 4;
/// Input tile side (`M + 3 − 1`).
const A: usize = 6;
/// Positions of a transformed tile.
const XI: usize = A * A;
/// Elements of `V` and `M` one block aims at (f32: 2 MiB, the L2 cache of one core plus part
/// of the shared L3).
const BLOCK_ELEMS: usize = 1 << 19;
/// Fewer tiles than this per GEMM make the packing of `U[ξ]` dominate.
const MIN_BLOCK_TILES: usize = 48;
/// Fewer channels than this (in or out) leave the GEMMs too thin to win over im2col.
const MIN_CHANNELS: usize = 16;
/// Narrower outputs than this leave the tile transforms' loops (vectorised along a tile row)
/// mostly remainder.
const MIN_WIDTH: usize = 16;
/// Below twice [`MIN_WIDTH`] the transforms still run at part of their vector width, which only
/// enough channels pay for: at 32 channels, 24x24, batch 8 (the tiny model at 96 px) im2col
/// took 810 µs where Winograd took 1160 (forward and input gradient alike), while at 32x32 it
/// was the other way round (1380 against 1040 µs; 2-core Intel Xeon, 2 threads, 2026-12-01).
const MIN_CHANNELS_NARROW: usize = 64;
/// Less work than this (tiles · cin · cout over the batch) does not pay for the transforms and
/// the per-block synchronisation: below it the two kernels take about the same time, and at a
/// quarter of it (a 32-channel layer at 12x12, batch 8) Winograd is 1.6x slower.
const MIN_WORK: usize = 1 << 18;
/// The same for the weight gradient, whose weight-sized transforms (`dU`, `Gᵀ dU G`) and
/// block-by-block accumulation cost more: at 32 channels, 32x32, batch 8 (2^19) the two kernels
/// are even at two threads.
const MIN_WORK_WEIGHT_GRAD: usize = 1 << 21;

/// Tiles of the whole batch.
fn tiles(g: &Geometry) -> usize {
    g.n * g.oh.div_ceil(M) * g.ow.div_ceil(M)
}

/// Whether the Winograd kernel serves the convolution `g` (forward and input gradient): 3x3,
/// stride 1, no dilation, padding at most 2 (so that its input gradient is a convolution of the
/// same kind), and enough channels, width and work for it to win. The thresholds come from
/// timing both kernels at the shapes of the tiny and ResNet-18 models (`docs/PERFORMANCE.md`).
pub(crate) fn applies(g: &Geometry) -> bool {
    let tiles = tiles(g);
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.dilation == 1
        && g.padding <= 2
        && g.cin >= MIN_CHANNELS
        && g.cout >= MIN_CHANNELS
        && g.oh >= M
        && g.ow >= MIN_WIDTH
        && (g.ow >= 2 * MIN_WIDTH || g.cin.min(g.cout) >= MIN_CHANNELS_NARROW)
        && tiles * g.cin * g.cout >= MIN_WORK
        // The transformed weight (36·cin·cout values) must not outweigh the transformed input
        // (36·cin·tiles): with more channels than 4x the tiles, reading it costs more than the
        // saved arithmetic (the 512-channel stage of a ResNet at 8x8 or 16x16).
        && 4 * tiles >= g.cin.max(g.cout)
}

/// Whether the Winograd kernel serves the weight gradient of `g`.
pub(crate) fn applies_to_weight_grad(g: &Geometry) -> bool {
    applies(g) && tiles(g) * g.cin * g.cout >= MIN_WORK_WEIGHT_GRAD
}

/// The geometry of the input gradient of the convolution `g` seen as a forward convolution of
/// the output gradient, when `g` is 3x3, stride 1, undilated with padding at most 2.
pub(crate) fn input_grad_geometry(g: &Geometry) -> Option<Geometry> {
    if g.kh != 3 || g.kw != 3 || g.stride != 1 || g.dilation != 1 || g.padding > 2 {
        return None;
    }
    Some(Geometry {
        n: g.n,
        cin: g.cout,
        h: g.oh,
        w: g.ow,
        cout: g.cin,
        kh: 3,
        kw: 3,
        oh: g.h,
        ow: g.w,
        stride: 1,
        padding: 2 - g.padding,
        dilation: 1,
    })
}

/// `G · (a, b, c)ᵀ` for the 6x3 weight-transform matrix `G`.
#[inline(always)]
fn g6<T: Real>(a: T, b: T, c: T) -> [T; A] {
    let f = T::from_f64_;
    let (q, s, t, u) = (f(0.25), f(1.0 / 6.0), f(1.0 / 24.0), f(1.0 / 12.0));
    [
        a * q,
        T::ZERO - (a + b + c) * s,
        (b - a - c) * s,
        a * t + b * u + c * s,
        a * t - b * u + c * s,
        c,
    ]
}

/// `Bᵀ · d` for the 6x6 input-transform matrix `Bᵀ`.
#[inline(always)]
fn bt6<T: Real>(d: [T; A], two: T, four: T, five: T) -> [T; A] {
    let [d0, d1, d2, d3, d4, d5] = d;
    [
        four * d0 - five * d2 + d4,
        d4 + d3 - four * (d1 + d2),
        d4 - d3 + four * (d1 - d2),
        d4 - d2 + two * (d3 - d1),
        d4 - d2 - two * (d3 - d1),
        four * d1 - five * d3 + d5,
    ]
}

/// `Aᵀ · m` for the 4x6 output-transform matrix `Aᵀ`.
#[inline(always)]
fn at4<T: Real>(m: [T; A], two: T, four: T, eight: T) -> [T; M] {
    let [m0, m1, m2, m3, m4, m5] = m;
    let (p12, m12, p34, m34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [
        m0 + p12 + p34,
        m12 + two * m34,
        p12 + four * p34,
        m12 + eight * m34 + m5,
    ]
}

/// `A · v` for the 6x4 matrix `A` (the transpose of `Aᵀ`): the adjoint of [`at4`].
#[inline(always)]
fn a6<T: Real>(v: [T; M], two: T, four: T, eight: T) -> [T; A] {
    let [v0, v1, v2, v3] = v;
    let (even, odd) = (v0 + v2, v1 + v3);
    let (even4, odd2) = (v0 + four * v2, two * v1 + eight * v3);
    [v0, even + odd, even - odd, even4 + odd2, even4 - odd2, v3]
}

/// `Gᵀ · v` for the 6x3 weight-transform matrix `G`: the adjoint of [`g6`].
#[inline(always)]
fn gt3<T: Real>(v: [T; A]) -> [T; 3] {
    let f = T::from_f64_;
    let (q, s, t, u) = (f(0.25), f(1.0 / 6.0), f(1.0 / 24.0), f(1.0 / 12.0));
    let [v0, v1, v2, v3, v4, v5] = v;
    let (p12, p34) = (v1 + v2, v3 + v4);
    [
        v0 * q - p12 * s + p34 * t,
        (v2 - v1) * s + (v3 - v4) * u,
        (p34 - p12) * s + v5,
    ]
}

/// The transformed weight `U[ξ][o][i]` of a 3x3 convolution with `outs` output and `ins` input
/// channels. `w` is `(outs, ins, 3, 3)`, or with `flip_transpose` the weight `(ins, outs, 3, 3)`
/// of the convolution whose input gradient this is (tap `(a, b)` read at `(2 − a, 2 − b)`).
pub(crate) fn transform_weight<T: Real>(
    w: &[T],
    (outs, ins): (usize, usize),
    flip_transpose: bool,
) -> Vec<T> {
    // The flipped, transposed weight read in place takes one tap from each of `ins` rows
    // `9·outs` apart per output channel (a cache line and, for large layers, a page per value):
    // first copy it into the forward layout, block by block.
    // `out[o][i][k] = w[i][o][8 − k]`: the kernels transposed as 9-value items, then each
    // turned by 180°.
    let flipped;
    let w = if flip_transpose {
        flipped = {
            let mut t = transpose::<T, 9>(w, (ins, outs));
            t.chunks_exact_mut(9).for_each(<[T]>::reverse);
            t
        };
        &flipped
    } else {
        w
    };
    let mut u = vec![T::ZERO; XI * outs * ins];
    let dst = SharedMut(u.as_mut_ptr());
    // Per output channel, vectorised over the input channels: the nine taps as rows over all
    // inputs, `G` down each kernel column (3 x 6 rows), then `G` across (36 rows) in a local
    // buffer, then one contiguous copy into each U[ξ].
    (0..outs)
        .into_par_iter()
        .for_each_init(Vec::new, |local: &mut Vec<T>, o| {
            local.resize((9 + 3 * A + XI) * ins, T::ZERO);
            let (taps, rest) = local.split_at_mut(9 * ins);
            let (cols, local) = rest.split_at_mut(3 * A * ins);
            for i in 0..ins {
                for k in 0..9 {
                    taps[k * ins + i] = w[(o * ins + i) * 9 + k];
                }
            }
            // cols[b][r] = (G · g[.., b])[r]; then row r of the 6x3 result times Gᵀ.
            for (b, cb) in cols.chunks_exact_mut(A * ins).enumerate() {
                let tap = |a: usize| &taps[(a * 3 + b) * ins..][..ins];
                g6_rows(tap(0), tap(1), tap(2), cb);
            }
            let cols = &*cols;
            for (r, lr) in local.chunks_exact_mut(A * ins).enumerate() {
                let col = |b: usize| &cols[(b * A + r) * ins..][..ins];
                g6_rows(col(0), col(1), col(2), lr);
            }
            let local = &*local;
            for (xi, src) in local.chunks_exact(ins).enumerate() {
                // SAFETY: row `o` of U[ξ] is inside `u` and written by this task only.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr(),
                        dst.get().add((xi * outs + o) * ins),
                        ins,
                    )
                };
            }
        });
    u
}

/// Row `r` of `out` (six rows of `n = a.len()`) holds `g6(a[i], b[i], c[i])[r]` for every `i`.
/// The inputs and the output are separate parameters so that LLVM knows they do not alias and
/// vectorises the loop.
#[inline(always)]
fn g6_rows<T: Real>(a: &[T], b: &[T], c: &[T], out: &mut [T]) {
    let n = a.len();
    let (b, c) = (&b[..n], &c[..n]);
    let [o0, o1, o2, o3, o4, o5] = rows_of(out, 0, n, n);
    let (o0, o1, o2, o3, o4, o5) = (
        &mut o0[..n],
        &mut o1[..n],
        &mut o2[..n],
        &mut o3[..n],
        &mut o4[..n],
        &mut o5[..n],
    );
    for i in 0..n {
        let v = g6(a[i], b[i], c[i]);
        o0[i] = v[0];
        o1[i] = v[1];
        o2[i] = v[2];
        o3[i] = v[3];
        o4[i] = v[4];
        o5[i] = v[5];
    }
}

/// The convolution `g` (3x3, stride 1, see [`applies`]) of `x` with the transformed weight `u`
/// ([`transform_weight`]), plus bias and ReLU: `(n, cout, oh, ow)`.
pub(crate) fn forward<T: Element>(
    g: &Geometry,
    x: &[T],
    u: &[T],
    bias: Option<&[T]>,
    relu: bool,
) -> Vec<T> {
    let per_tile = XI * (g.cin + g.cout);
    let blocks = Blocks::new(g, block_tiles(per_tile));
    let tasks = blocks.count;
    let threads = rayon::current_num_threads();
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    // Not zeroed first: the output transforms write every element (each block its rows of
    // every channel, the blocks covering all rows of all images).
    let len = g.n * g.cout * ohw;
    let mut y: Vec<T> = Vec::with_capacity(len);
    let out = SharedMut(y.spare_capacity_mut().as_mut_ptr());
    let task = |b: usize, inner: bool| {
        let tiles = blocks.tiles(b);
        T::with_scratch(per_tile * tiles, |scratch| {
            let (v, m) = scratch.split_at_mut(XI * g.cin * tiles);
            // V[c][ξ][t]: each input channel owns a contiguous chunk.
            let transform_in = |buf: &mut Vec<T>, (c, vc): (usize, &mut [T])| {
                for (img, ty, t0) in blocks.pieces(b) {
                    let plane = &x[(img * g.cin + c) * hw..][..hw];
                    input_transform(g, plane, ty, vc, (t0, tiles), buf)
                }
            };
            if inner {
                v.par_chunks_mut(XI * tiles)
                    .enumerate()
                    .for_each_init(Vec::new, transform_in);
            } else {
                let mut buf = Vec::new();
                v.chunks_mut(XI * tiles)
                    .enumerate()
                    .for_each(|a| transform_in(&mut buf, a));
            }
            let v = &*v;
            // M[o][ξ][t] = Σ_c U[ξ][o][c] · V[c][ξ][t].
            let mp = SharedMut(m.as_mut_ptr());
            let gemm_xi = |xi: usize| {
                // SAFETY: dst is cout rows of `tiles` elements spaced XI·tiles apart inside `m`,
                // written by this ξ only; lhs is U[ξ] (cout × cin); rhs is cin rows of `tiles`
                // elements spaced XI·tiles apart inside `v`.
                unsafe {
                    matmul(
                        (g.cout, tiles, g.cin),
                        mp.get().add(xi * tiles),
                        XI * tiles,
                        false,
                        Mat::row_major(u[xi * g.cout * g.cin..].as_ptr(), g.cin),
                        Mat::strided(v[xi * tiles..].as_ptr(), XI * tiles),
                        Parallelism::None,
                    )
                }
            };
            if inner {
                (0..XI).into_par_iter().for_each(gemm_xi);
            } else {
                (0..XI).for_each(gemm_xi);
            }
            let m = &*m;
            let transform_out = |buf: &mut Vec<T>, o: usize| {
                let bo = bias.map_or(T::ZERO, |b| b[o]);
                let mo = &m[o * XI * tiles..(o + 1) * XI * tiles];
                for (img, (ty0, ty1), t0) in blocks.pieces(b) {
                    let (oy0, oy1) = (ty0 * M, (ty1 * M).min(g.oh));
                    // SAFETY: output rows oy0..oy1 of channel `o` of image `img` (inside `y`'s
                    // capacity, uninitialised until written) are written by this block and this
                    // channel only.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.get().add((img * g.cout + o) * ohw + oy0 * g.ow),
                            (oy1 - oy0) * g.ow,
                        )
                    };
                    output_transform(g, mo, (ty0, ty1), (t0, tiles), dst, (bo, relu), buf);
                }
            };
            if inner {
                (0..g.cout)
                    .into_par_iter()
                    .for_each_init(Vec::new, transform_out);
            } else {
                let mut buf = Vec::new();
                (0..g.cout).for_each(|o| transform_out(&mut buf, o));
            }
        });
    };
    if enough_tasks(tasks, threads) {
        (0..tasks).into_par_iter().for_each(|b| task(b, false));
    } else {
        (0..tasks).for_each(|b| task(b, true));
    }
    // SAFETY: all `len` elements were written above.
    unsafe { y.set_len(len) };
    y
}

/// Tiles per block for `per_tile` values of `V` and `M` (or `dM`) per tile.
fn block_tiles(per_tile: usize) -> usize {
    (BLOCK_ELEMS / per_tile).max(MIN_BLOCK_TILES)
}

/// How the tiles of a batch are cut into blocks: runs of consecutive rows of tiles, counted
/// through the images one after another, as even in length as the rows allow. A block of a
/// small map takes in several images, so that the GEMMs have enough columns and each `U[ξ]` is
/// read once for all of them; one of a large map takes part of an image.
#[derive(Clone, Copy)]
struct Blocks {
    /// Rows of tiles per image and tiles per row.
    th: usize,
    tw: usize,
    /// Rows of tiles in the batch, and blocks.
    total: usize,
    count: usize,
}

impl Blocks {
    /// Blocks of about `tiles` tiles (at least one row of tiles each) for the convolution `g`.
    fn new(g: &Geometry, tiles: usize) -> Self {
        let (th, tw) = (g.oh.div_ceil(M), g.ow.div_ceil(M));
        let total = g.n * th;
        let count = total.div_ceil((tiles / tw).clamp(1, total));
        Self {
            th,
            tw,
            total,
            count,
        }
    }

    /// Rows `r0..r1` of the batch in block `b`.
    fn range(&self, b: usize) -> (usize, usize) {
        (
            b * self.total / self.count,
            (b + 1) * self.total / self.count,
        )
    }

    fn tiles(&self, b: usize) -> usize {
        let (r0, r1) = self.range(b);
        (r1 - r0) * self.tw
    }

    /// The part of block `b` in each image it takes in: the image, its rows of tiles
    /// `ty0..ty1`, and the block's index of the part's first tile.
    fn pieces(&self, b: usize) -> impl Iterator<Item = (usize, (usize, usize), usize)> {
        let (r0, r1) = self.range(b);
        let (th, tw) = (self.th, self.tw);
        (r0 / th..=(r1 - 1) / th).map(move |img| {
            let (lo, hi) = (r0.max(img * th), r1.min((img + 1) * th));
            (img, (lo - img * th, hi - img * th), (lo - r0) * tw)
        })
    }
}

/// The gradient with respect to the weight of the convolution `g` (3x3, stride 1, see
/// [`applies`]): the adjoint of [`forward`]. Per block of tiles, the input transform `V` and the
/// output gradient's transform `dM = A dY Aᵀ` (zero outside the map), then
/// `dU[ξ] += dM[ξ] · V[ξ]ᵀ` (36 GEMMs, split over threads by `ξ`); finally
/// `dW = Gᵀ dU G`. `(cout, cin, 3, 3)`.
pub(crate) fn weight_grad<T: Element>(g: &Geometry, x: &[T], dy: &[T]) -> Vec<T> {
    let per_tile = XI * (g.cin + g.cout);
    let blocks = Blocks::new(g, block_tiles(per_tile));
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    let mut du = vec![T::ZERO; XI * g.cout * g.cin];
    let dup = SharedMut(du.as_mut_ptr());
    for b in 0..blocks.count {
        let tiles = blocks.tiles(b);
        T::with_scratch(per_tile * tiles, |scratch| {
            let (v, dm) = scratch.split_at_mut(XI * g.cin * tiles);
            v.par_chunks_mut(XI * tiles)
                .enumerate()
                .for_each_init(Vec::new, |buf, (c, vc)| {
                    for (img, ty, t0) in blocks.pieces(b) {
                        let plane = &x[(img * g.cin + c) * hw..][..hw];
                        input_transform(g, plane, ty, vc, (t0, tiles), buf)
                    }
                });
            dm.par_chunks_mut(XI * tiles)
                .enumerate()
                .for_each_init(Vec::new, |buf, (o, mo)| {
                    for (img, ty, t0) in blocks.pieces(b) {
                        let plane = &dy[(img * g.cout + o) * ohw..][..ohw];
                        output_grad_transform(g, plane, ty, mo, (t0, tiles), buf)
                    }
                });
            let (v, dm) = (&*v, &*dm);
            (0..XI).into_par_iter().for_each(|xi| {
                // SAFETY: dU[ξ] (cout × cin) is written by this ξ only; lhs is cout rows of
                // `tiles` elements spaced XI·tiles apart inside `dm`; rhs is the transpose of cin
                // such rows inside `v`.
                unsafe {
                    matmul(
                        (g.cout, g.cin, tiles),
                        dup.get().add(xi * g.cout * g.cin),
                        g.cin,
                        b > 0,
                        Mat::strided(dm[xi * tiles..].as_ptr(), XI * tiles),
                        Mat::transposed(v[xi * tiles..].as_ptr(), XI * tiles),
                        Parallelism::None,
                    )
                }
            });
        });
    }
    // dW[o][i] = Gᵀ dU[.][o][i] G.
    let mut dw = vec![T::ZERO; g.cout * g.cin * 9];
    let du = &du;
    dw.par_chunks_mut(g.cin * 9).enumerate().for_each_init(
        Vec::new,
        |local: &mut Vec<T>, (o, dwo)| {
            // The 36 rows dU[ξ][o][..] side by side first, read once each.
            local.resize(XI * g.cin, T::ZERO);
            for (xi, dst) in local.chunks_exact_mut(g.cin).enumerate() {
                dst.copy_from_slice(&du[(xi * g.cout + o) * g.cin..][..g.cin]);
            }
            for (i, tap) in dwo.chunks_exact_mut(9).enumerate() {
                let at = |r: usize, c: usize| local[(r * A + c) * g.cin + i];
                let rows: [[T; 3]; A] =
                    std::array::from_fn(|r| gt3(std::array::from_fn(|c| at(r, c))));
                for b in 0..3 {
                    let col = gt3(std::array::from_fn(|r| rows[r][b]));
                    for a in 0..3 {
                        tap[a * 3 + b] = col[a];
                    }
                }
            }
        },
    );
    dw
}

/// Defines `$name`, which runs `$body` (an `#[inline(always)]` function) compiled for AVX2 + FMA
/// when the CPU has them: the crate itself is built for the baseline x86-64, whose SSE2 loops
/// are half as wide. FMA contraction is not enabled, so both builds give identical results. The
/// body's `AVX2` parameter tells it which build it is in, so that it checks the CPU only here.
macro_rules! vectorized {
    ($(#[$doc:meta])* fn $name:ident / $avx2:ident => $body:ident ($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<T: Real>($($arg: $ty),*) {
            $body::<T, true>($($arg),*)
        }

        $(#[$doc])*
        fn $name<T: Real>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                // SAFETY: the CPU supports the enabled features (checked above).
                return unsafe { $avx2($($arg),*) };
            }
            $body::<T, false>($($arg),*)
        }
    };
}

vectorized! {
    /// See [`output_grad_transform_body`].
    fn output_grad_transform / output_grad_transform_avx2 => output_grad_transform_body(
        g: &Geometry, plane: &[T], ty: (usize, usize), mo: &mut [T], at: (usize, usize),
        buf: &mut Vec<T>
    )
}

vectorized! {
    /// See [`input_transform_body`].
    fn input_transform / input_transform_avx2 => input_transform_body(
        g: &Geometry, plane: &[T], ty: (usize, usize), vc: &mut [T], at: (usize, usize),
        buf: &mut Vec<T>
    )
}

vectorized! {
    /// See [`output_transform_body`].
    fn output_transform / output_transform_avx2 => output_transform_body(
        g: &Geometry, mo: &[T], ty: (usize, usize), at: (usize, usize),
        dst: &mut [MaybeUninit<T>], epilogue: (T, bool), buf: &mut Vec<T>
    )
}

/// Splits `row` (a multiple of 4 long) into its four phases: `phases[j][k] = row[4k + j]`, each
/// `row.len() / 4` long, so that the transforms read every tile's columns from contiguous
/// slices.
/// `AVX2`: the caller is the AVX2 build of a transform (so the CPU has AVX2).
#[inline(always)]
fn deinterleave<T: Real, const AVX2: bool>(row: &[T], phases: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if AVX2 && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        // SAFETY: T is f32 (same size and alignment); the CPU has AVX2 (only the AVX2 builds,
        // run after `has_avx2`, pass AVX2 = true).
        unsafe {
            let row = std::slice::from_raw_parts(row.as_ptr().cast::<f32>(), row.len());
            let phases =
                std::slice::from_raw_parts_mut(phases.as_mut_ptr().cast::<f32>(), phases.len());
            return deinterleave_f32_avx2(row, phases);
        }
    }
    deinterleave_scalar(row, phases)
}

#[inline(always)]
fn deinterleave_scalar<T: Copy>(row: &[T], phases: &mut [T]) {
    let q = row.len() / M;
    let (p0, rest) = phases.split_at_mut(q);
    let (p1, rest) = rest.split_at_mut(q);
    let (p2, p3) = rest.split_at_mut(q);
    for ((((c, a), b), d), e) in row
        .chunks_exact(M)
        .zip(p0.iter_mut())
        .zip(p1.iter_mut())
        .zip(p2.iter_mut())
        .zip(p3.iter_mut())
    {
        *a = c[0];
        *b = c[1];
        *d = c[2];
        *e = c[3];
    }
}

/// [`deinterleave`] of 8 groups of four at a time: a 4x8 transpose in registers (LLVM leaves
/// the stride-4 loads of the scalar loop scalar).
#[cfg(target_arch = "x86_64")]
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
unsafe fn deinterleave_f32_avx2(row: &[f32], phases: &mut [f32]) {
    use std::arch::x86_64::*;
    let q = row.len() / M;
    assert!(phases.len() >= M * q && row.len() >= M * q);
    let full = q / 8 * 8;
    let idx = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let (src, dst) = (row.as_ptr(), phases.as_mut_ptr());
    for k in (0..full).step_by(8) {
        // SAFETY: elements 4k..4k + 32 of `row` and k..k + 8 of each phase are in bounds
        // (k + 8 ≤ q, asserted lengths).
        unsafe {
            let r0 = _mm256_loadu_ps(src.add(M * k));
            let r1 = _mm256_loadu_ps(src.add(M * k + 8));
            let r2 = _mm256_loadu_ps(src.add(M * k + 16));
            let r3 = _mm256_loadu_ps(src.add(M * k + 24));
            // [x0 x2 y0 y2 | x1 x3 y1 y3], [z0 z2 w0 w2 | z1 z3 w1 w3], and the same for 4..8.
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            // [x0 x2 x4 x6 | x1 x3 x5 x7] etc., then put back in order.
            let x = _mm256_shuffle_ps::<0x44>(t0, t2);
            let y = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let z = _mm256_shuffle_ps::<0x44>(t1, t3);
            let w = _mm256_shuffle_ps::<0xEE>(t1, t3);
            _mm256_storeu_ps(dst.add(k), _mm256_permutevar8x32_ps(x, idx));
            _mm256_storeu_ps(dst.add(q + k), _mm256_permutevar8x32_ps(y, idx));
            _mm256_storeu_ps(dst.add(2 * q + k), _mm256_permutevar8x32_ps(z, idx));
            _mm256_storeu_ps(dst.add(3 * q + k), _mm256_permutevar8x32_ps(w, idx));
        }
    }
    for k in full..q {
        for j in 0..M {
            phases[j * q + k] = row[M * k + j];
        }
    }
}

/// `N` disjoint rows of `len` elements spaced `stride` apart, starting at `at`.
///
/// Built from one bounds check and raw pointers: the safe form (a chain of `split_at_mut` inside
/// `array::from_fn`) was not inlined and cost 3% of a forward pass, being called per row of tiles.
#[inline(always)]
fn rows_of<T, const N: usize>(
    buf: &mut [T],
    at: usize,
    stride: usize,
    len: usize,
) -> [&mut [T]; N] {
    assert!(N > 0 && len <= stride && at + (N - 1) * stride + len <= buf.len());
    let base = buf.as_mut_ptr();
    // SAFETY: row k covers at + k·stride .. at + k·stride + len, inside `buf` (asserted) and
    // disjoint from the other rows (len ≤ stride); `buf` stays mutably borrowed by the result.
    std::array::from_fn(|k| unsafe {
        std::slice::from_raw_parts_mut(base.add(at + k * stride), len)
    })
}

/// The two stages of a 2-D tile transform with the 1-D transform `f` (`R` inputs, 6 outputs)
/// for one row of tiles, shared by the input transform (`R = 6`) and the output gradient's
/// (`R = 4`):
/// - down the columns: `tr[r][x] = f(de[0][x], …, de[R − 1][x])[r]`, where `de` holds the `R`
///   input rows of the tile row, each split into four phases of `q` elements (`wp = 4q` long);
/// - across each tile: `out[(r·6 + c)·tiles + t0 + tx] = f(column 4·tx + j of row r, j < R)[c]`;
///   column `4·tx + j` is element `tx + j / 4` of phase `j % 4`.
///
/// Every slice is cut to the exact length its loop runs over, so that LLVM drops the bounds
/// checks and vectorises both loops.
#[inline(always)]
fn columns_then_tiles<T: Real, const R: usize>(
    de: &[T],
    tr: &mut [T],
    (wp, q): (usize, usize),
    out: &mut [T],
    (t0, tiles, tw): (usize, usize, usize),
    f: impl Fn([T; R]) -> [T; A],
) {
    let rows: [&[T]; R] = std::array::from_fn(|i| &de[i * wp..][..wp]);
    let [c0, c1, c2, c3, c4, c5] = rows_of(tr, 0, wp, wp);
    for x in 0..wp {
        let t = f(std::array::from_fn(|i| rows[i][x]));
        c0[x] = t[0];
        c1[x] = t[1];
        c2[x] = t[2];
        c3[x] = t[3];
        c4[x] = t[4];
        c5[x] = t[5];
    }
    for (r, t) in tr.chunks_exact(wp).enumerate() {
        let cols: [&[T]; R] = std::array::from_fn(|j| &t[(j % M) * q + j / M..][..tw]);
        let [o0, o1, o2, o3, o4, o5] = rows_of(out, r * A * tiles + t0, tiles, tw);
        across_tiles(cols, o0, o1, o2, o3, o4, o5, &f);
    }
}

/// `o_c[tx] = f(cols[0][tx], …, cols[R − 1][tx])[c]` for every tile `tx` of a tile row (every
/// slice `tw = o0.len()` long). The output rows are separate `&mut` parameters so that LLVM knows
/// they alias neither the inputs nor each other and vectorises the loop; written inline with
/// the output rows as locals, a `perf annotate` showed it scalar, with a bounds check per value.
#[inline(always)]
fn across_tiles<T: Real, const R: usize>(
    cols: [&[T]; R],
    o0: &mut [T],
    o1: &mut [T],
    o2: &mut [T],
    o3: &mut [T],
    o4: &mut [T],
    o5: &mut [T],
    f: &impl Fn([T; R]) -> [T; A],
) {
    let tw = o0.len();
    assert!(cols.iter().all(|c| c.len() >= tw));
    let (o1, o2, o3, o4, o5) = (
        &mut o1[..tw],
        &mut o2[..tw],
        &mut o3[..tw],
        &mut o4[..tw],
        &mut o5[..tw],
    );
    for tx in 0..tw {
        // SAFETY: tx < tw ≤ every column's length (asserted above).
        let v = f(std::array::from_fn(|j| unsafe {
            *cols[j].get_unchecked(tx)
        }));
        o0[tx] = v[0];
        o1[tx] = v[1];
        o2[tx] = v[2];
        o3[tx] = v[3];
        o4[tx] = v[4];
        o5[tx] = v[5];
    }
}

/// [`across_tiles`] with four output rows (the output transform's `Aᵀ`).
#[inline(always)]
fn across_tiles4<T: Real>(
    rows: [&[T]; A],
    o0: &mut [T],
    o1: &mut [T],
    o2: &mut [T],
    o3: &mut [T],
    f: &impl Fn([T; A]) -> [T; M],
) {
    let tw = o0.len();
    assert!(rows.iter().all(|c| c.len() >= tw));
    let (o1, o2, o3) = (&mut o1[..tw], &mut o2[..tw], &mut o3[..tw]);
    for tx in 0..tw {
        // SAFETY: tx < tw ≤ every row's length (asserted above).
        let v = f(std::array::from_fn(|j| unsafe {
            *rows[j].get_unchecked(tx)
        }));
        o0[tx] = v[0];
        o1[tx] = v[1];
        o2[tx] = v[2];
        o3[tx] = v[3];
    }
}

/// Writes `dM[ξ][t] = (A dY Aᵀ)[ξ]` of one output-gradient channel `plane` for the tiles of
/// tile rows `ty0..ty1` into `mo` (`XI` rows of `(ty1 − ty0)·tw` tiles): the adjoint of
/// [`output_transform`], with zeros beyond the map's edges. `buf` is scratch.
#[inline(always)]
fn output_grad_transform_body<T: Real, const AVX2: bool>(
    g: &Geometry,
    plane: &[T],
    (ty0, ty1): (usize, usize),
    mo: &mut [T],
    (t0, tiles): (usize, usize),
    buf: &mut Vec<T>,
) {
    let tw = g.ow.div_ceil(M);
    let wp = M * tw;
    // One padded row, the four rows of a tile row split into phases, their column transform.
    buf.resize(wp + M * wp + A * wp, T::ZERO);
    let (row, rest) = buf.split_at_mut(wp);
    let (de, tr) = rest.split_at_mut(M * wp);
    let f = T::from_f64_;
    let (two, four, eight) = (f(2.0), f(4.0), f(8.0));
    for ty in ty0..ty1 {
        for (i, phases) in de.chunks_exact_mut(wp).enumerate() {
            let oy = ty * M + i;
            if oy < g.oh {
                row[..g.ow].copy_from_slice(&plane[oy * g.ow..][..g.ow]);
                row[g.ow..].fill(T::ZERO);
                deinterleave::<T, AVX2>(row, phases);
            } else {
                phases.fill(T::ZERO);
            }
        }
        // A down the columns, then across each tile (its four columns: element tx of the four
        // phases).
        let row_of_tiles = (t0 + (ty - ty0) * tw, tiles, tw);
        columns_then_tiles::<T, M>(de, tr, (wp, tw), mo, row_of_tiles, |v| {
            a6(v, two, four, eight)
        });
    }
}

/// Writes `V[ξ][t] = (Bᵀ d B)[ξ]` of one input channel `plane` for the tiles of tile rows
/// `ty0..ty1` into `vc` (`XI` rows of `(ty1 − ty0)·tw` tiles). `buf` is scratch.
#[inline(always)]
fn input_transform_body<T: Real, const AVX2: bool>(
    g: &Geometry,
    plane: &[T],
    (ty0, ty1): (usize, usize),
    vc: &mut [T],
    (t0, tiles): (usize, usize),
    buf: &mut Vec<T>,
) {
    let tw = g.ow.div_ceil(M);
    // A padded row holds input columns −p..wp − p, with wp = 4·(tw + 1) ≥ ow + 4 = w + 2p + 2
    // (a 3x3 stride-1 convolution has ow = w + 2p − 2): tile tx reads columns 4·tx..4·tx + 6 of
    // it, i.e. element tx of the four phases and element tx + 1 of the first two.
    let q = tw + 1;
    let wp = M * q;
    buf.resize(wp + 2 * A * wp, T::ZERO);
    let (row, rest) = buf.split_at_mut(wp);
    let (de, tr) = rest.split_at_mut(A * wp);
    let f = T::from_f64_;
    let (two, four, five) = (f(2.0), f(4.0), f(5.0));
    for ty in ty0..ty1 {
        for (i, phases) in de.chunks_exact_mut(wp).enumerate() {
            match (ty * M + i).checked_sub(g.padding).filter(|&iy| iy < g.h) {
                Some(iy) => {
                    row[..g.padding].fill(T::ZERO);
                    row[g.padding..g.padding + g.w].copy_from_slice(&plane[iy * g.w..][..g.w]);
                    row[g.padding + g.w..].fill(T::ZERO);
                    deinterleave::<T, AVX2>(row, phases);
                }
                None => phases.fill(T::ZERO),
            }
        }
        // Bᵀ down the columns, then B across each tile.
        let row_of_tiles = (t0 + (ty - ty0) * tw, tiles, tw);
        columns_then_tiles::<T, A>(de, tr, (wp, q), vc, row_of_tiles, |v| {
            bt6(v, two, four, five)
        });
    }
}

/// Writes the output rows of tile rows `ty0..ty1` of one output channel from its
/// `M[ξ][t]` (`mo`): `Aᵀ m A`, plus the bias, then the ReLU. `dst` holds the output rows
/// `4·ty0..min(4·ty1, oh)`. `buf` is scratch.
#[inline(always)]
fn output_transform_body<T: Real, const AVX2: bool>(
    g: &Geometry,
    mo: &[T],
    (ty0, ty1): (usize, usize),
    (t_first, tiles): (usize, usize),
    dst: &mut [MaybeUninit<T>],
    (bias, relu): (T, bool),
    buf: &mut Vec<T>,
) {
    let tw = g.ow.div_ceil(M);
    let f = T::from_f64_;
    let (two, four, eight) = (f(2.0), f(4.0), f(8.0));
    let epilogue = |v: T| {
        let v = v + bias;
        if relu && v < T::ZERO {
            T::ZERO
        } else {
            v
        }
    };
    // s[r][j][tx]: Aᵀ applied across the tile (column j of the output tile), per transformed
    // row r; then o[i][j][tx]: Aᵀ down (output row i of the tile).
    buf.resize(A * M * tw + M * M * tw, T::ZERO);
    let (s, o) = buf.split_at_mut(A * M * tw);
    for ty in ty0..ty1 {
        let t0 = t_first + (ty - ty0) * tw;
        for (r, sr) in s.chunks_exact_mut(M * tw).enumerate() {
            let rows = std::array::from_fn(|c| &mo[(r * A + c) * tiles + t0..][..tw]);
            let (s0, rest) = sr.split_at_mut(tw);
            let (s1, rest) = rest.split_at_mut(tw);
            let (s2, s3) = rest.split_at_mut(tw);
            across_tiles4(rows, s0, s1, s2, s3, &|m| at4(m, two, four, eight));
        }
        for j in 0..M {
            let rows = std::array::from_fn(|r| &s[(r * M + j) * tw..][..tw]);
            let [o0, o1, o2, o3] = rows_of(o, j * tw, M * tw, tw);
            across_tiles4(rows, o0, o1, o2, o3, &|v| {
                at4(v, two, four, eight).map(epilogue)
            });
        }
        // Interleave the four columns of each output row of the tile row into the map.
        let oy0 = ty * M - ty0 * M;
        let n_rows = M.min(g.oh - ty * M);
        let full = g.ow / M;
        for (i, oi) in o.chunks_exact(M * tw).enumerate().take(n_rows) {
            let out = &mut dst[(oy0 + i) * g.ow..][..g.ow];
            let (c0, rest) = oi.split_at(tw);
            let (c1, rest) = rest.split_at(tw);
            let (c2, c3) = rest.split_at(tw);
            for ((((d, a), b), c), e) in out.chunks_exact_mut(M).zip(c0).zip(c1).zip(c2).zip(c3) {
                d[0].write(*a);
                d[1].write(*b);
                d[2].write(*c);
                d[3].write(*e);
            }
            // A partial last tile.
            for (j, d) in out[full * M..].iter_mut().enumerate() {
                d.write(oi[j * tw + full]);
            }
        }
    }
}
