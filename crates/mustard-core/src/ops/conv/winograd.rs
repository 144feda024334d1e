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

use gemm::Parallelism;
use rayon::prelude::*;

use super::kernels::{enough_tasks, matmul, Element, Geometry, Mat, SharedMut};
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
/// Fewer tiles than this in the whole batch do not pay for the weight transform.
const MIN_TILES: usize = 32;

/// Whether the Winograd kernel serves the convolution `g`: 3x3, stride 1, no dilation, padding
/// at most 2 (so that its input gradient is a convolution of the same kind), and enough
/// channels and tiles for the GEMMs to be efficient.
pub(crate) fn applies(g: &Geometry) -> bool {
    let tiles = g.n * g.oh.div_ceil(M) * g.ow.div_ceil(M);
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.dilation == 1
        && g.padding <= 2
        && g.cin >= MIN_CHANNELS
        && g.cout >= MIN_CHANNELS
        && g.oh >= M
        && g.ow >= M
        && tiles >= MIN_TILES
        // The transformed weight (36·cin·cout values) must not outweigh the transformed input
        // (36·cin·tiles): with more channels than 4x the tiles, reading it costs more than the
        // saved arithmetic (the 512-channel stage of a ResNet at 8x8 or 16x16).
        && 4 * tiles >= g.cin.max(g.cout)
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

/// The transformed weight `U[ξ][o][i]` of a 3x3 convolution with `outs` output and `ins` input
/// channels. `w` is `(outs, ins, 3, 3)`, or with `flip_transpose` the weight `(ins, outs, 3, 3)`
/// of the convolution whose input gradient this is (tap `(a, b)` read at `(2 − a, 2 − b)`).
pub(crate) fn transform_weight<T: Real>(
    w: &[T],
    (outs, ins): (usize, usize),
    flip_transpose: bool,
) -> Vec<T> {
    let mut u = vec![T::ZERO; XI * outs * ins];
    let dst = SharedMut(u.as_mut_ptr());
    // Per output channel: the 36 transformed rows over all inputs in a local buffer first, then
    // one contiguous copy into each U[ξ].
    (0..outs)
        .into_par_iter()
        .for_each_init(Vec::new, |local: &mut Vec<T>, o| {
            local.resize(XI * ins, T::ZERO);
            for i in 0..ins {
                let tap = |a: usize, b: usize| {
                    if flip_transpose {
                        w[((i * outs + o) * 3 + 2 - a) * 3 + 2 - b]
                    } else {
                        w[((o * ins + i) * 3 + a) * 3 + b]
                    }
                };
                // Columns first: c[b] = G · g[.., b]; then each row r of the 6x3 result times Gᵀ.
                let cols: [[T; A]; 3] =
                    std::array::from_fn(|b| g6(tap(0, b), tap(1, b), tap(2, b)));
                for r in 0..A {
                    let row = g6(cols[0][r], cols[1][r], cols[2][r]);
                    for (c, &v) in row.iter().enumerate() {
                        local[(r * A + c) * ins + i] = v;
                    }
                }
            }
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

/// The convolution `g` (3x3, stride 1, see [`applies`]) of `x` with the transformed weight `u`
/// ([`transform_weight`]), plus bias and ReLU: `(n, cout, oh, ow)`.
pub(crate) fn forward<T: Element>(
    g: &Geometry,
    x: &[T],
    u: &[T],
    bias: Option<&[T]>,
    relu: bool,
) -> Vec<T> {
    let (th, tw) = (g.oh.div_ceil(M), g.ow.div_ceil(M));
    let per_tile = XI * (g.cin + g.cout);
    let rows = (BLOCK_ELEMS / (per_tile * tw))
        .max(MIN_BLOCK_TILES.div_ceil(tw))
        .clamp(1, th);
    let blocks = th.div_ceil(rows);
    let tasks = g.n * blocks;
    let threads = rayon::current_num_threads();
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    let mut y = vec![T::ZERO; g.n * g.cout * ohw];
    let out = SharedMut(y.as_mut_ptr());
    let task = |t: usize, inner: bool| {
        let (img, b) = (t / blocks, t % blocks);
        let (ty0, ty1) = (b * rows, ((b + 1) * rows).min(th));
        let tiles = (ty1 - ty0) * tw;
        let xn = &x[img * g.cin * hw..(img + 1) * g.cin * hw];
        T::with_scratch(per_tile * tiles, |scratch| {
            let (v, m) = scratch.split_at_mut(XI * g.cin * tiles);
            // V[c][ξ][t]: each input channel owns a contiguous chunk.
            let transform_in = |buf: &mut Vec<T>, (c, vc): (usize, &mut [T])| {
                input_transform(g, &xn[c * hw..(c + 1) * hw], (ty0, ty1), vc, buf)
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
            let (oy0, oy1) = (ty0 * M, (ty1 * M).min(g.oh));
            let transform_out = |buf: &mut Vec<T>, o: usize| {
                // SAFETY: output rows oy0..oy1 of channel `o` of image `img` are written by
                // this task and this channel only.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        out.get().add((img * g.cout + o) * ohw + oy0 * g.ow),
                        (oy1 - oy0) * g.ow,
                    )
                };
                let b = bias.map_or(T::ZERO, |b| b[o]);
                let mo = &m[o * XI * tiles..(o + 1) * XI * tiles];
                output_transform(g, mo, (ty0, ty1), dst, (b, relu), buf);
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
        (0..tasks).into_par_iter().for_each(|t| task(t, false));
    } else {
        (0..tasks).for_each(|t| task(t, true));
    }
    y
}

/// Writes `V[ξ][t] = (Bᵀ d B)[ξ]` of one input channel `plane` for the tiles of tile rows
/// `ty0..ty1` into `vc` (`XI` rows of `(ty1 − ty0)·tw` tiles). `buf` is scratch.
fn input_transform<T: Real>(
    g: &Geometry,
    plane: &[T],
    (ty0, ty1): (usize, usize),
    vc: &mut [T],
    buf: &mut Vec<T>,
) {
    let tw = g.ow.div_ceil(M);
    let tiles = (ty1 - ty0) * tw;
    // Six padded input rows, then their column transform, each `wp` long.
    let wp = M * tw + 2;
    buf.resize(2 * A * wp, T::ZERO);
    let (rows, cols) = buf.split_at_mut(A * wp);
    let f = T::from_f64_;
    let (two, four, five) = (f(2.0), f(4.0), f(5.0));
    for ty in ty0..ty1 {
        for (i, row) in rows.chunks_exact_mut(wp).enumerate() {
            // The padded row holds input columns −p..wp − p; `wp ≥ w + 2p` (see `applies`).
            match (ty * M + i).checked_sub(g.padding).filter(|&iy| iy < g.h) {
                Some(iy) => {
                    row[..g.padding].fill(T::ZERO);
                    row[g.padding..g.padding + g.w].copy_from_slice(&plane[iy * g.w..][..g.w]);
                    row[g.padding + g.w..].fill(T::ZERO);
                }
                None => row.fill(T::ZERO),
            }
        }
        // Bᵀ down the columns, for every column of the row at once.
        {
            let (r0, rest) = rows.split_at(wp);
            let (r1, rest) = rest.split_at(wp);
            let (r2, rest) = rest.split_at(wp);
            let (r3, rest) = rest.split_at(wp);
            let (r4, r5) = rest.split_at(wp);
            let mut out = cols.chunks_exact_mut(wp);
            let mut next = || out.next().expect("six rows");
            let (c0, c1, c2, c3, c4, c5) = (next(), next(), next(), next(), next(), next());
            for x in 0..wp {
                let t = bt6([r0[x], r1[x], r2[x], r3[x], r4[x], r5[x]], two, four, five);
                c0[x] = t[0];
                c1[x] = t[1];
                c2[x] = t[2];
                c3[x] = t[3];
                c4[x] = t[4];
                c5[x] = t[5];
            }
        }
        // B across each tile: tile `tx` reads columns 4·tx..4·tx + 6 of each transformed row.
        let t0 = (ty - ty0) * tw;
        for (r, col) in cols.chunks_exact(wp).enumerate() {
            let base = r * A * tiles + t0;
            for tx in 0..tw {
                let d = &col[M * tx..M * tx + A];
                let t = bt6([d[0], d[1], d[2], d[3], d[4], d[5]], two, four, five);
                for (c, &v) in t.iter().enumerate() {
                    vc[base + c * tiles + tx] = v;
                }
            }
        }
    }
}

/// Writes the output rows of tile rows `ty0..ty1` of one output channel from its
/// `M[ξ][t]` (`mo`): `Aᵀ m A`, plus the bias, then the ReLU. `dst` holds the output rows
/// `4·ty0..min(4·ty1, oh)`. `buf` is scratch.
fn output_transform<T: Real>(
    g: &Geometry,
    mo: &[T],
    (ty0, ty1): (usize, usize),
    dst: &mut [T],
    (bias, relu): (T, bool),
    buf: &mut Vec<T>,
) {
    let tw = g.ow.div_ceil(M);
    let tiles = (ty1 - ty0) * tw;
    let f = T::from_f64_;
    let (two, four, eight) = (f(2.0), f(4.0), f(8.0));
    // s[r][j][tx]: A applied across the tile (index j), per transformed row r.
    buf.resize(A * M * tw, T::ZERO);
    for ty in ty0..ty1 {
        let t0 = (ty - ty0) * tw;
        for r in 0..A {
            let row = |c: usize| &mo[(r * A + c) * tiles + t0..][..tw];
            let (m0, m1, m2, m3, m4, m5) = (row(0), row(1), row(2), row(3), row(4), row(5));
            let s = &mut buf[r * M * tw..(r + 1) * M * tw];
            let (s0, rest) = s.split_at_mut(tw);
            let (s1, rest) = rest.split_at_mut(tw);
            let (s2, s3) = rest.split_at_mut(tw);
            for tx in 0..tw {
                let a = at4(
                    [m0[tx], m1[tx], m2[tx], m3[tx], m4[tx], m5[tx]],
                    two,
                    four,
                    eight,
                );
                s0[tx] = a[0];
                s1[tx] = a[1];
                s2[tx] = a[2];
                s3[tx] = a[3];
            }
        }
        // Aᵀ down: output rows 4·ty..4·ty + 4 (those inside the map), column j of every tile.
        let s = &*buf;
        let oy0 = ty * M - ty0 * M;
        let n_rows = M.min(g.oh - ty * M);
        let out = &mut dst[oy0 * g.ow..(oy0 + n_rows) * g.ow];
        let epilogue = |v: T| {
            let v = v + bias;
            if relu && v < T::ZERO {
                T::ZERO
            } else {
                v
            }
        };
        for j in 0..M {
            let sr = |r: usize| &s[(r * M + j) * tw..][..tw];
            let (s0, s1, s2, s3, s4, s5) = (sr(0), sr(1), sr(2), sr(3), sr(4), sr(5));
            for tx in 0..tw {
                let ox = tx * M + j;
                if ox >= g.ow {
                    break;
                }
                let a = at4(
                    [s0[tx], s1[tx], s2[tx], s3[tx], s4[tx], s5[tx]],
                    two,
                    four,
                    eight,
                );
                for (i, &v) in a.iter().take(n_rows).enumerate() {
                    out[i * g.ow + ox] = epilogue(v);
                }
            }
        }
    }
}
