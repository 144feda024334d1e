//! The CPU kernels of the convolution engine: im2col / col2im on row blocks of the output, and
//! GEMMs through the `gemm` crate. See the parent module for the algorithm.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::{winograd, WeightCache};
use crate::ops::Real;

/// Elements of the im2col block one task works on in the forward pass and the input gradient
/// (f32: 1 MiB, so that the block stays in the 1-2 MiB L2 cache of one core between im2col and
/// the GEMM that reads it).
const BLOCK_ELEMS: usize = 1 << 18;
/// The same for the weight gradient, whose GEMM reads and writes its accumulator once per block
/// and therefore wants longer blocks.
const WEIGHT_GRAD_BLOCK_ELEMS: usize = 1 << 20;
/// Fewer output columns than this per GEMM call make the packing of the weight dominate.
const MIN_BLOCK_COLS: usize = 128;

/// The shape of one convolution seen from the convolution side: input `(n, cin, h, w)`, weight
/// `(cout, cin, kh, kw)`, output `(n, cout, oh, ow)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
}

impl Geometry {
    /// Rows of the im2col matrix: `cin · kh · kw`.
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// Output pixels per image.
    fn p(&self) -> usize {
        self.oh * self.ow
    }

    /// Input pixels per image.
    fn hw(&self) -> usize {
        self.h * self.w
    }

    /// A 1x1 stride-1 convolution without padding reads the input as the im2col matrix itself.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// Output rows per block so that a block of `rows_of_k` im2col rows holds about `budget`
    /// elements (but at least [`MIN_BLOCK_COLS`] columns when the map has them).
    fn block_rows(&self, rows_of_k: usize, budget: usize) -> usize {
        let by_budget = budget / (rows_of_k * self.ow).max(1);
        let min_rows = MIN_BLOCK_COLS.div_ceil(self.ow);
        by_budget.max(min_rows).clamp(1, self.oh)
    }

    /// Output rows `oy0..oy1` of row block `b` of `rows` rows.
    fn block(&self, b: usize, rows: usize) -> (usize, usize) {
        (b * rows, ((b + 1) * rows).min(self.oh))
    }

    /// The output columns `ox` whose input column `ox·s − p + kx·d` lies inside the map.
    fn valid_cols(&self, kx: usize) -> (usize, usize) {
        let offset = kx * self.dilation;
        let lo = if self.padding > offset {
            (self.padding - offset).div_ceil(self.stride)
        } else {
            0
        };
        let hi = if self.w + self.padding > offset {
            ((self.w - 1 + self.padding - offset) / self.stride + 1).min(self.ow)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// The input row of output row `oy` and kernel row `ky`, if inside the map.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky * self.dilation)
            .checked_sub(self.padding)
            .filter(|&iy| iy < self.h)
    }
}

/// A raw pointer that tasks share to write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(super) struct SharedMut<T>(pub(super) *mut T);
// SAFETY: every task that receives a `SharedMut` writes a region no other task touches (each use
// states which), and the buffer outlives the parallel loop.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so that closures capture the `Send` wrapper, not the field).
    pub(super) fn get(self) -> *mut T {
        self.0
    }
}

/// An operand of a GEMM: a pointer and the strides (in elements) between rows and columns.
#[derive(Clone, Copy)]
pub(super) struct Mat<T> {
    ptr: *const T,
    rs: isize,
    cs: isize,
}

impl<T> Mat<T> {
    /// A matrix with rows `rs` elements apart and contiguous columns.
    pub(super) fn strided(ptr: *const T, rs: usize) -> Self {
        Self {
            ptr,
            rs: rs as isize,
            cs: 1,
        }
    }

    pub(super) fn row_major(ptr: *const T, row_len: usize) -> Self {
        Self {
            ptr,
            rs: row_len as isize,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with rows of `row_len` elements.
    pub(super) fn transposed(ptr: *const T, row_len: usize) -> Self {
        Self {
            ptr,
            rs: 1,
            cs: row_len as isize,
        }
    }
}

/// The float types of the engine: the kernel arithmetic of [`Real`], a GEMM, and a per-thread
/// scratch buffer.
pub(crate) trait Element: Real + 'static {
    /// Runs `f` on a scratch slice of `len` elements (contents unspecified), reusing a buffer
    /// kept per thread so that repeated calls do not fault in fresh pages.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;

    /// The Winograd-transformed weight kept in `cache` for this dtype, made by `make` at the
    /// first call.
    fn winograd_weight(cache: &WeightCache, make: impl FnOnce() -> Vec<Self>) -> &[Self];
}

thread_local! {
    static SCRATCH_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH_F64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Takes the thread's buffer out of `cell` while `f` runs, so that a nested task stolen by this
/// thread (rayon work-stealing inside a parallel GEMM) gets its own buffer instead of a
/// `RefCell` borrow panic.
fn scratch_from<T: Real, R>(
    cell: &RefCell<Vec<T>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut buf = std::mem::take(&mut *cell.borrow_mut());
    if buf.len() < len {
        buf = vec![T::ZERO; len];
    }
    let out = f(&mut buf[..len]);
    let mut slot = cell.borrow_mut();
    if slot.len() < buf.len() {
        *slot = buf;
    }
    out
}

impl Element for f32 {
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        SCRATCH_F32.with(|cell| scratch_from(cell, len, f))
    }

    fn winograd_weight(cache: &WeightCache, make: impl FnOnce() -> Vec<Self>) -> &[Self] {
        cache.winograd_f32.get_or_init(make)
    }
}

impl Element for f64 {
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
        SCRATCH_F64.with(|cell| scratch_from(cell, len, f))
    }

    fn winograd_weight(cache: &WeightCache, make: impl FnOnce() -> Vec<Self>) -> &[Self] {
        cache.winograd_f64.get_or_init(make)
    }
}

/// `dst (m × n) = [dst +] lhs (m × k) · rhs (k × n)` on raw strided operands.
///
/// # Safety
/// Every element addressed by `(i, j) ↦ ptr + i·rs + j·cs` within the stated sizes must be in
/// bounds of a live allocation, and `dst` must not overlap `lhs` or `rhs` nor be accessed by
/// another thread during the call.
pub(super) unsafe fn matmul<T: Element>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    parallelism: Parallelism,
) {
    let one = T::from_f64_(1.0);
    // SAFETY: the caller guarantees the bounds and exclusivity; `gemm` takes (column stride, row
    // stride) pairs and computes dst := alpha·dst + beta·lhs·rhs (alpha read only when
    // `read_dst`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            one,
            one,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Whether `tasks` independent tasks keep `threads` threads busy; if not, each task runs its
/// GEMM (and im2col) in parallel instead.
pub(super) fn enough_tasks(tasks: usize, threads: usize) -> bool {
    threads == 1 || tasks >= 2 * threads
}

/// Writes the im2col block of output rows `oy0..oy1` of one image for the channels whose
/// planes `x` holds: row `(c, ky, kx)` of `cols` holds, for every output pixel of the block, the
/// input value under kernel tap `(ky, kx)` of channel `c` (zero in the padding). `cols` has
/// `channels·kh·kw` rows of `(oy1 − oy0)·ow` elements.
fn im2col<T: Real>(g: &Geometry, x: &[T], (oy0, oy1): (usize, usize), cols: &mut [T]) {
    let pc = (oy1 - oy0) * g.ow;
    let mut rows = cols.chunks_exact_mut(pc);
    for plane in x.chunks_exact(g.hw()) {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = rows.next().expect("cols holds a row per channel and tap");
                let (lo, hi) = g.valid_cols(kx);
                // Input column of output column `lo` (only read when lo < hi).
                let ix0 = (lo * g.stride + kx * g.dilation).wrapping_sub(g.padding);
                for (dst, oy) in row.chunks_exact_mut(g.ow).zip(oy0..oy1) {
                    let Some(iy) = g.input_row(oy, ky) else {
                        dst.fill(T::ZERO);
                        continue;
                    };
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    dst[..lo].fill(T::ZERO);
                    dst[hi..].fill(T::ZERO);
                    if lo < hi {
                        let last = ix0 + (hi - lo - 1) * g.stride;
                        gather(&mut dst[lo..hi], &src[ix0..=last], g.stride);
                    }
                }
            }
        }
    }
}

/// `dst[j] = src[j·stride]` for every `j`; `src` ends at the last element read. Strides 1 and 2
/// (every convolution of a ResNet) get loops the compiler vectorises; a generic `step_by` loop
/// was most of the stride-2 stem's im2col.
#[inline(always)]
fn gather<T: Copy>(dst: &mut [T], src: &[T], stride: usize) {
    debug_assert_eq!(src.len(), (dst.len() - 1) * stride + 1);
    match stride {
        1 => dst.copy_from_slice(src),
        2 => {
            let (body, last) = dst.split_at_mut(dst.len() - 1);
            for (d, pair) in body.iter_mut().zip(src.chunks_exact(2)) {
                *d = pair[0];
            }
            last[0] = src[src.len() - 1];
        }
        _ => {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = src[j * stride];
            }
        }
    }
}

/// `dst[j·stride] += src[j]` for every `j`, the adjoint of [`gather`].
#[inline(always)]
fn scatter_add<T: Real>(dst: &mut [T], src: &[T], stride: usize) {
    debug_assert_eq!(dst.len(), (src.len() - 1) * stride + 1);
    match stride {
        1 => dst.iter_mut().zip(src).for_each(|(d, s)| *d += *s),
        2 => {
            let (body, last) = src.split_at(src.len() - 1);
            for (pair, s) in dst.chunks_exact_mut(2).zip(body) {
                pair[0] += *s;
            }
            let end = dst.len() - 1;
            dst[end] += last[0];
        }
        _ => {
            for (j, s) in src.iter().enumerate() {
                dst[j * stride] += *s;
            }
        }
    }
}

/// [`im2col`] of all channels of one image, in parallel over channels.
fn im2col_par<T: Real>(g: &Geometry, x: &[T], (oy0, oy1): (usize, usize), cols: &mut [T]) {
    let per_channel = g.kh * g.kw * (oy1 - oy0) * g.ow;
    cols.par_chunks_mut(per_channel)
        .zip(x.par_chunks(g.hw()))
        .for_each(|(rows, plane)| im2col(g, plane, (oy0, oy1), rows));
}

/// The adjoint of [`im2col`] for channels `c0..c0 + cols.len() / (kh·kw·pc)`: adds every
/// element of the block `cols` into the input pixel it was read from. `dx` holds those channels
/// only.
fn col2im_add<T: Real>(g: &Geometry, cols: &[T], (oy0, oy1): (usize, usize), dx: &mut [T]) {
    let pc = (oy1 - oy0) * g.ow;
    let mut rows = cols.chunks_exact(pc);
    for plane in dx.chunks_exact_mut(g.hw()) {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = rows.next().expect("cols holds a row per channel and tap");
                let (lo, hi) = g.valid_cols(kx);
                if lo >= hi {
                    continue;
                }
                let ix0 = lo * g.stride + kx * g.dilation - g.padding;
                for (src, oy) in row.chunks_exact(g.ow).zip(oy0..oy1) {
                    let Some(iy) = g.input_row(oy, ky) else {
                        continue;
                    };
                    let last = ix0 + (hi - lo - 1) * g.stride;
                    scatter_add(
                        &mut plane[iy * g.w + ix0..=iy * g.w + last],
                        &src[lo..hi],
                        g.stride,
                    );
                }
            }
        }
    }
}

/// The transpose `(cols × rows)` of the row-major `rows × cols` matrix `a` whose elements are
/// runs of `I` values (kept in their order), in blocks that keep both sides' cache lines in
/// use. `I` is a constant so that each element is one fixed-size copy: with a run-time length
/// every copy was a call to `memcpy`, and the transposes took 3.4% of a training step.
pub(super) fn transpose<T: Real, const I: usize>(a: &[T], (rows, cols): (usize, usize)) -> Vec<T> {
    const B: usize = 16;
    assert_eq!(
        a.len(),
        rows * cols * I,
        "transpose: {rows} x {cols} items of {I}"
    );
    let mut out = vec![T::ZERO; a.len()];
    out.par_chunks_mut(B * rows * I)
        .enumerate()
        .for_each(|(cb, chunk)| {
            let c0 = cb * B;
            for r0 in (0..rows).step_by(B) {
                let r1 = (r0 + B).min(rows);
                for (dst, c) in chunk.chunks_exact_mut(rows * I).zip(c0..) {
                    for r in r0..r1 {
                        dst[r * I..][..I].copy_from_slice(&a[(r * cols + c) * I..][..I]);
                    }
                }
            }
        });
    out
}

/// Applies the bias and the ReLU to a block of `cout` rows of `len` elements spaced `stride`
/// apart.
///
/// # Safety
/// `y + co·stride + j` must be valid, exclusively owned elements for `co < cout`, `j < len`.
unsafe fn epilogue<T: Real>(
    y: *mut T,
    (cout, len, stride): (usize, usize, usize),
    bias: Option<&[T]>,
    relu: bool,
) {
    for co in 0..cout {
        // SAFETY: the caller guarantees that this row is valid and not shared.
        let row = unsafe { std::slice::from_raw_parts_mut(y.add(co * stride), len) };
        match (bias, relu) {
            (Some(b), false) => row.iter_mut().for_each(|v| *v += b[co]),
            (Some(b), true) => row.iter_mut().for_each(|v| {
                let s = *v + b[co];
                *v = if s < T::ZERO { T::ZERO } else { s };
            }),
            (None, true) => row.iter_mut().for_each(|v| {
                if *v < T::ZERO {
                    *v = T::ZERO;
                }
            }),
            (None, false) => {}
        }
    }
}

/// The convolution: `y[n] = W · im2col(x[n])` (+ bias, ReLU), `(n, cout, oh, ow)`. A `cache`
/// holds (or receives) the transformed weight of the Winograd kernel.
pub(crate) fn forward<T: Element>(
    g: &Geometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    relu: bool,
    cache: Option<&WeightCache>,
) -> Vec<T> {
    if super::winograd_enabled() && winograd::applies(g) {
        let transform = || winograd::transform_weight(w, (g.cout, g.cin), false);
        return match cache {
            Some(cache) => {
                winograd::forward(g, x, T::winograd_weight(cache, transform), bias, relu)
            }
            None => winograd::forward(g, x, &transform(), bias, relu),
        };
    }
    let (k, p) = (g.k(), g.p());
    let threads = rayon::current_num_threads();
    let mut y = vec![T::ZERO; g.n * g.cout * p];
    let rows = g.block_rows(k, BLOCK_ELEMS);
    let blocks = g.oh.div_ceil(rows);
    let tasks = g.n * blocks;
    let out = SharedMut(y.as_mut_ptr());
    // Task `t` owns columns oy0·ow..oy1·ow of every output channel of its image.
    let task = |t: usize, par: Parallelism| {
        let (img, (oy0, oy1)) = (t / blocks, g.block(t % blocks, rows));
        let pc = (oy1 - oy0) * g.ow;
        let xn = &x[img * g.cin * g.hw()..(img + 1) * g.cin * g.hw()];
        // SAFETY: the offset is inside `y` (img < n, oy0 < oh).
        let dst = unsafe { out.get().add(img * g.cout * p + oy0 * g.ow) };
        let lhs = Mat::row_major(w.as_ptr(), k);
        let run = |rhs: Mat<T>| {
            // SAFETY: dst is `cout` rows of `pc` elements spaced `p` apart inside `y`, owned by
            // this task; lhs is `w` (cout × k); rhs is k × pc inside `xn` or the scratch block.
            unsafe {
                matmul((g.cout, pc, k), dst, p, false, lhs, rhs, par);
                epilogue(dst, (g.cout, pc, p), bias, relu);
            }
        };
        if g.is_pointwise() {
            run(Mat::row_major(xn[oy0 * g.ow..].as_ptr(), p));
        } else {
            T::with_scratch(k * pc, |cols| {
                match par {
                    Parallelism::None => im2col(g, xn, (oy0, oy1), cols),
                    _ => im2col_par(g, xn, (oy0, oy1), cols),
                }
                run(Mat::row_major(cols.as_ptr(), pc));
            });
        }
    };
    if enough_tasks(tasks, threads) {
        (0..tasks)
            .into_par_iter()
            .for_each(|t| task(t, Parallelism::None));
    } else {
        (0..tasks).for_each(|t| task(t, Parallelism::Rayon(threads)));
    }
    y
}

/// The gradient with respect to the input: `dx[n] = col2im(Wᵀ · dy[n])`, `(n, cin, h, w)`.
pub(crate) fn input_grad<T: Element>(g: &Geometry, dy: &[T], w: &[T]) -> Vec<T> {
    if let Some(gi) = winograd::input_grad_geometry(g)
        .filter(|gi| super::winograd_enabled() && winograd::applies(gi))
    {
        let u = winograd::transform_weight(w, (g.cin, g.cout), true);
        return winograd::forward(&gi, dy, &u, None, false);
    }
    let (k, p, kk) = (g.k(), g.p(), g.kh * g.kw);
    let threads = rayon::current_num_threads();
    let mut dx = vec![T::ZERO; g.n * g.cin * g.hw()];
    let out = SharedMut(dx.as_mut_ptr());
    if g.is_pointwise() {
        // dx[n] (cin × p) = Wᵀ (cin × cout) · dy[n] (cout × p), by column blocks.
        let rows = g.block_rows(g.cin, BLOCK_ELEMS);
        let blocks = g.oh.div_ceil(rows);
        let tasks = g.n * blocks;
        let task = |t: usize, par: Parallelism| {
            let (img, (oy0, oy1)) = (t / blocks, g.block(t % blocks, rows));
            let col0 = oy0 * g.ow;
            // SAFETY: this task owns columns col0..oy1·ow of image `img` in `dx` (h·w = p);
            // W is cout × cin, dy[img] is cout × p.
            unsafe {
                matmul(
                    (g.cin, (oy1 - oy0) * g.ow, g.cout),
                    out.get().add(img * g.cin * p + col0),
                    p,
                    false,
                    Mat::transposed(w.as_ptr(), g.cin),
                    Mat::row_major(dy[img * g.cout * p + col0..].as_ptr(), p),
                    par,
                );
            }
        };
        if enough_tasks(tasks, threads) {
            (0..tasks)
                .into_par_iter()
                .for_each(|t| task(t, Parallelism::None));
        } else {
            (0..tasks).for_each(|t| task(t, Parallelism::Rayon(threads)));
        }
        return dx;
    }
    // Wᵀ (k × cout) written out. Read in place as the transpose of W, each step along the
    // GEMM's inner dimension jumps `k` values, and the GEMM does not repack an operand for a
    // block with few columns (a small map): ResNet's 512-channel 8x8 layers took twice their
    // forward's time (39 against 20 ms at batch 8, one thread; 22 ms now).
    let wt = transpose::<T, 1>(w, (g.cout, k));
    // One task per image and block of input channels: col2im of different channels writes
    // disjoint planes, so no two tasks touch the same element.
    let cblocks = (2 * threads).div_ceil(g.n).min(g.cin);
    let cper = g.cin.div_ceil(cblocks);
    let cblocks = g.cin.div_ceil(cper);
    let tasks = g.n * cblocks;
    let par = if enough_tasks(tasks, threads) {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    };
    (0..tasks).into_par_iter().for_each(|t| {
        let (img, cb) = (t / cblocks, t % cblocks);
        let (c0, c1) = (cb * cper, ((cb + 1) * cper).min(g.cin));
        let m = (c1 - c0) * kk;
        let rows = g.block_rows(m, BLOCK_ELEMS);
        // SAFETY: channels c0..c1 of image `img` belong to this task only.
        let dxn = unsafe {
            std::slice::from_raw_parts_mut(
                out.get().add((img * g.cin + c0) * g.hw()),
                (c1 - c0) * g.hw(),
            )
        };
        T::with_scratch(m * rows * g.ow, |scratch| {
            for b in 0..g.oh.div_ceil(rows) {
                let (oy0, oy1) = g.block(b, rows);
                let pc = (oy1 - oy0) * g.ow;
                let dcols = &mut scratch[..m * pc];
                // SAFETY: dcols is m × pc; rows c0·kk.. of Wᵀ are m rows of `cout`;
                // dy[img] columns oy0·ow.. are cout × pc with row stride p.
                unsafe {
                    matmul(
                        (m, pc, g.cout),
                        dcols.as_mut_ptr(),
                        pc,
                        false,
                        Mat::row_major(wt[c0 * kk * g.cout..].as_ptr(), g.cout),
                        Mat::row_major(dy[img * g.cout * p + oy0 * g.ow..].as_ptr(), p),
                        par,
                    );
                }
                col2im_add(g, dcols, (oy0, oy1), dxn);
            }
        });
    });
    dx
}

/// The gradient with respect to the weight: `dW = Σₙ dy[n] · im2col(x[n])ᵀ`, `(cout, cin, kh,
/// kw)`.
pub(crate) fn weight_grad<T: Element>(g: &Geometry, x: &[T], dy: &[T]) -> Vec<T> {
    if super::winograd_enabled() && winograd::applies_to_weight_grad(g) {
        return winograd::weight_grad(g, x, dy);
    }
    let threads = rayon::current_num_threads();
    if g.cin >= 2 * threads {
        weight_grad_by_channels(g, x, dy, threads)
    } else {
        weight_grad_by_images(g, x, dy, threads)
    }
}

/// The weight gradient split by input channels: each task owns the columns `c0·kh·kw..` of `dW`
/// and accumulates over the whole batch, with the im2col of its channels only.
fn weight_grad_by_channels<T: Element>(g: &Geometry, x: &[T], dy: &[T], threads: usize) -> Vec<T> {
    let (k, p, kk) = (g.k(), g.p(), g.kh * g.kw);
    let mut dw = vec![T::ZERO; g.cout * k];
    let cblocks = threads.min(g.cin);
    let cper = g.cin.div_ceil(cblocks);
    let cblocks = g.cin.div_ceil(cper);
    let out = SharedMut(dw.as_mut_ptr());
    (0..cblocks).into_par_iter().for_each(|cb| {
        let (c0, c1) = (cb * cper, ((cb + 1) * cper).min(g.cin));
        let m = (c1 - c0) * kk;
        let rows = g.block_rows(m, WEIGHT_GRAD_BLOCK_ELEMS);
        // SAFETY: columns c0·kk..c1·kk of every row of dW belong to this task only.
        let dst = unsafe { out.get().add(c0 * kk) };
        let mut first = true;
        for img in 0..g.n {
            let xn = &x[(img * g.cin + c0) * g.hw()..(img * g.cin + c1) * g.hw()];
            for b in 0..g.oh.div_ceil(rows) {
                let (oy0, oy1) = g.block(b, rows);
                let pc = (oy1 - oy0) * g.ow;
                let lhs = Mat::row_major(dy[img * g.cout * p + oy0 * g.ow..].as_ptr(), p);
                let run = |rhs: Mat<T>| {
                    // SAFETY: dst is cout rows of m elements spaced k apart, owned here; lhs is
                    // cout × pc inside dy; rhs is pc × m (the transpose of an m × pc block
                    // inside x or the scratch).
                    unsafe { matmul((g.cout, m, pc), dst, k, !first, lhs, rhs, Parallelism::None) }
                };
                if g.is_pointwise() {
                    run(Mat::transposed(xn[oy0 * g.ow..].as_ptr(), p));
                } else {
                    T::with_scratch(m * pc, |cols| {
                        im2col(g, xn, (oy0, oy1), cols);
                        run(Mat::transposed(cols.as_ptr(), pc));
                    });
                }
                first = false;
            }
        }
    });
    dw
}

/// The weight gradient split by images and row blocks, for few input channels: runs of tasks
/// with one accumulator each, summed at the end.
fn weight_grad_by_images<T: Element>(g: &Geometry, x: &[T], dy: &[T], threads: usize) -> Vec<T> {
    let (k, p) = (g.k(), g.p());
    let rows = g.block_rows(k, WEIGHT_GRAD_BLOCK_ELEMS);
    let blocks = g.oh.div_ceil(rows);
    let tasks = g.n * blocks;
    let parts = tasks.min(threads);
    let per_part = tasks.div_ceil(parts);
    let par = if parts < threads {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let partials: Vec<Vec<T>> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let mut dw = vec![T::ZERO; g.cout * k];
            for t in part * per_part..((part + 1) * per_part).min(tasks) {
                let (img, (oy0, oy1)) = (t / blocks, g.block(t % blocks, rows));
                let pc = (oy1 - oy0) * g.ow;
                let accumulate = t != part * per_part;
                let lhs = Mat::row_major(dy[img * g.cout * p + oy0 * g.ow..].as_ptr(), p);
                let xn = &x[img * g.cin * g.hw()..(img + 1) * g.cin * g.hw()];
                let mut run = |rhs: Mat<T>| {
                    // SAFETY: dw is cout × k and owned here; lhs is cout × pc inside dy; rhs is
                    // pc × k (the transpose of a k × pc block inside x or the scratch).
                    unsafe {
                        matmul(
                            (g.cout, k, pc),
                            dw.as_mut_ptr(),
                            k,
                            accumulate,
                            lhs,
                            rhs,
                            par,
                        )
                    }
                };
                if g.is_pointwise() {
                    run(Mat::transposed(xn[oy0 * g.ow..].as_ptr(), p));
                } else {
                    T::with_scratch(k * pc, |cols| {
                        im2col(g, xn, (oy0, oy1), cols);
                        run(Mat::transposed(cols.as_ptr(), pc));
                    });
                }
            }
            dw
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut dw = partials.next().expect("at least one task");
    for other in partials {
        dw.iter_mut().zip(&other).for_each(|(a, b)| *a += *b);
    }
    dw
}

/// The gradient with respect to the bias: `db[c] = Σ_{n, y, x} dy[n, c, y, x]`, each channel's
/// sum taken in order from zero. Eight channels at a time, so that eight chains of additions
/// run side by side instead of one waiting on each addition (the same sums, bit for bit).
pub(crate) fn bias_grad<T: Real>(dy: &[T], (n, c, p): (usize, usize, usize)) -> Vec<T> {
    const G: usize = 8;
    let plane = |img: usize, co: usize| &dy[(img * c + co) * p..][..p];
    let mut db = vec![T::ZERO; c];
    db.par_chunks_mut(G).enumerate().for_each(|(group, out)| {
        let c0 = group * G;
        if out.len() < G {
            for (k, o) in out.iter_mut().enumerate() {
                for img in 0..n {
                    for &v in plane(img, c0 + k) {
                        *o += v;
                    }
                }
            }
            return;
        }
        let mut acc = [T::ZERO; G];
        for img in 0..n {
            let rows: [&[T]; G] = std::array::from_fn(|k| plane(img, c0 + k));
            for j in 0..p {
                for (a, row) in acc.iter_mut().zip(&rows) {
                    *a += row[j];
                }
            }
        }
        out.copy_from_slice(&acc);
    });
    db
}

/// The gradient through a fused ReLU: `dy` where the output is positive, zero elsewhere.
pub(crate) fn relu_grad<T: Real>(dy: &[T], y: &[T]) -> Vec<T> {
    crate::ops::zip_map(dy, y, |g, v| if v > T::ZERO { g } else { T::ZERO })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `out[c][r] = a[r][c]` item by item, with each item's values in order, across the
    /// blocks' edges (17 rows and 35 columns against blocks of 16).
    fn check<const I: usize>() {
        let (rows, cols) = (17, 35);
        let a: Vec<f32> = (0..rows * cols * I).map(|v| v as f32).collect();
        let t = transpose::<f32, I>(&a, (rows, cols));
        assert_eq!(t.len(), a.len());
        for r in 0..rows {
            for c in 0..cols {
                for k in 0..I {
                    assert_eq!(t[(c * rows + r) * I + k], a[(r * cols + c) * I + k]);
                }
            }
        }
    }

    /// Each channel's sum in order from zero, bit for bit, for whole groups of eight and the
    /// rest.
    #[test]
    fn bias_gradient_sums_each_channel_in_order() {
        let (n, c, p) = (3, 11, 37);
        let dy: Vec<f32> = (0..n * c * p)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        let want: Vec<u32> = (0..c)
            .map(|co| {
                let mut acc = 0f32;
                for img in 0..n {
                    for &v in &dy[(img * c + co) * p..][..p] {
                        acc += v;
                    }
                }
                acc.to_bits()
            })
            .collect();
        let got: Vec<u32> = bias_grad(&dy, (n, c, p))
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn transpose_moves_whole_items() {
        check::<1>();
        check::<9>();
    }
}
