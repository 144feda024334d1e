//! Run-length encoded binary masks, equal to pycocotools' `maskApi.c`.
//!
//! A mask of `height x width` pixels is read column by column (Fortran order, as COCO does);
//! [`Rle::counts`] are the lengths of the alternating runs of 0s and 1s, starting with 0s.
//! Every function here gives the same result as its pycocotools counterpart:
//!
//! | here | pycocotools |
//! | --- | --- |
//! | [`Rle::encode`], [`Rle::decode`] | `mask.encode`, `mask.decode` |
//! | [`Rle::area`], [`Rle::to_bbox`] | `mask.area`, `mask.toBbox` |
//! | [`Rle::from_compressed`], [`Rle::to_compressed`] | `rleFrString`, `rleToString` (the `counts` strings of COCO json) |
//! | [`Rle::from_polygon`], [`Rle::from_polygons`], [`Rle::from_bbox`] | `frPyObjects` (with `merge` for several polygons) |
//! | [`Rle::merge`] | `mask.merge` |
//! | [`iou`], [`Rle::iou`], [`bbox_iou`] | `mask.iou` (with `iscrowd`) |
//!
//! Unlike the C code, every function checks its input: counts must add up to `height * width`
//! (the C loops never end otherwise) and `height * width` must fit in 32 bits.

use crate::{Error, Result};

/// The most boundary points [`Rle::from_polygon`] rasterises (the C code allocates them all).
const MAX_POLYGON_POINTS: u64 = 1 << 24;

/// A run-length encoded binary mask.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rle {
    height: u32,
    width: u32,
    counts: Vec<u32>,
}

fn pixels(height: u32, width: u32) -> Result<u32> {
    u32::try_from(u64::from(height) * u64::from(width)).map_err(|_| {
        Error::mask(format!(
            "a {height}x{width} mask has more than 2^32 - 1 pixels"
        ))
    })
}

/// `rleToBbox`'s box `[x, y, w, h]` from the first and last column and row of the mask; widths
/// and heights in unsigned 32-bit arithmetic, as the C code (an empty mask wraps around).
fn extent_box(xs: u32, ys: u32, xe: u32, ye: u32) -> [f64; 4] {
    [
        f64::from(xs),
        f64::from(ys),
        f64::from(xe.wrapping_sub(xs).wrapping_add(1)),
        f64::from(ye.wrapping_sub(ys).wrapping_add(1)),
    ]
}

/// The next number of a compressed counts string (`rleFrString`'s inner loop) at `*p`, which
/// moves past it; an error where the string ends inside it, holds a byte outside `'0'..='o'` or
/// a number longer than 12 characters. One character (most counts) is the fast path.
#[inline(always)]
fn next_compressed(s: &[u8], p: &mut usize) -> Result<i64> {
    if let Some(c) = s.get(*p).map(|b| b.wrapping_sub(48)).filter(|&c| c < 0x20) {
        *p += 1;
        // Five bits, the sign in the highest.
        return Ok(if c & 0x10 != 0 {
            i64::from(c) - 32
        } else {
            i64::from(c)
        });
    }
    let mut x = 0i64;
    let mut k = 0u32;
    loop {
        let at = *p;
        let Some(&byte) = s.get(at) else {
            return Err(Error::mask(format!(
                "compressed counts end inside a number (at byte {at})"
            )));
        };
        if !(48..48 + 64).contains(&byte) {
            return Err(Error::mask(format!(
                "compressed counts hold {:?} at byte {at}, outside '0'..='o'",
                char::from(byte)
            )));
        }
        if k >= 12 {
            return Err(Error::mask(format!(
                "compressed counts hold a number longer than 12 characters at byte {at}"
            )));
        }
        let c = i64::from(byte - 48);
        x |= (c & 0x1f) << (5 * k);
        *p += 1;
        k += 1;
        if c & 0x20 == 0 {
            if c & 0x10 != 0 {
                x |= -1i64 << (5 * k);
            }
            return Ok(x);
        }
    }
}

impl Rle {
    /// An RLE from uncompressed counts (the `counts` list of COCO json). The counts must add up
    /// to `height * width`.
    pub fn new(height: u32, width: u32, counts: Vec<u32>) -> Result<Rle> {
        let n = pixels(height, width)?;
        let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        if total != u64::from(n) {
            return Err(Error::mask(format!(
                "counts add up to {total}, expected height * width = {height} * {width} = {n}"
            )));
        }
        Ok(Rle {
            height,
            width,
            counts,
        })
    }

    /// The empty mask.
    pub fn empty(height: u32, width: u32) -> Result<Rle> {
        Rle::new(height, width, vec![pixels(height, width)?])
    }

    /// Mask height.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Mask width.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Run lengths, alternating 0s and 1s, starting with 0s.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// Encodes a mask given column by column (`mask[x * height + y]`); nonzero bytes are
    /// foreground.
    pub fn encode(mask: &[u8], height: u32, width: u32) -> Result<Rle> {
        let n = pixels(height, width)?;
        if mask.len() != n as usize {
            return Err(Error::mask(format!(
                "a {height}x{width} mask needs {n} values, found {}",
                mask.len()
            )));
        }
        let mut counts = Vec::new();
        let mut previous = false;
        let mut run = 0u32;
        for &v in mask {
            if (v != 0) != previous {
                counts.push(run);
                run = 0;
                previous = !previous;
            }
            run += 1;
        }
        counts.push(run);
        Ok(Rle {
            height,
            width,
            counts,
        })
    }

    /// Encodes a mask given row by row (`mask[y * width + x]`, the layout of images).
    pub fn encode_row_major(mask: &[u8], height: u32, width: u32) -> Result<Rle> {
        let n = pixels(height, width)? as usize;
        if mask.len() != n {
            return Err(Error::mask(format!(
                "a {height}x{width} mask needs {n} values, found {}",
                mask.len()
            )));
        }
        let (h, w) = (height as usize, width as usize);
        let mut columns = Vec::with_capacity(n);
        for x in 0..w {
            columns.extend((0..h).map(|y| mask[y * w + x]));
        }
        Rle::encode(&columns, height, width)
    }

    /// The mask, column by column (`mask[x * height + y]`), 0 or 1.
    pub fn decode(&self) -> Vec<u8> {
        let mut mask = Vec::with_capacity(self.height as usize * self.width as usize);
        let mut value = 0u8;
        for &c in &self.counts {
            mask.resize(mask.len() + c as usize, value);
            value ^= 1;
        }
        mask
    }

    /// The mask, row by row (`mask[y * width + x]`), 0 or 1.
    pub fn decode_row_major(&self) -> Vec<u8> {
        let columns = self.decode();
        let (h, w) = (self.height as usize, self.width as usize);
        let mut rows = vec![0u8; h * w];
        for x in 0..w {
            for y in 0..h {
                rows[y * w + x] = columns[x * h + y];
            }
        }
        rows
    }

    /// The number of foreground pixels (`rleArea`).
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| u64::from(c))
            .sum()
    }

    /// The bounding box `[x, y, w, h]` (`rleToBbox`).
    ///
    /// As in pycocotools, counts of even length whose runs of 1s are all empty give
    /// `[width, height, 2^32 - width + 1, 2^32 - height + 1]` (unsigned wrap-around).
    pub fn to_bbox(&self) -> [f64; 4] {
        let (h, w) = (self.height, self.width);
        let m = self.counts.len() / 2 * 2;
        if m == 0 || h == 0 {
            return [0.0; 4];
        }
        let (mut xs, mut ys, mut xe, mut ye) = (w, h, 0u32, 0u32);
        let mut cc = 0u32;
        for j in 0..m {
            let start = cc;
            let run = self.counts[j];
            cc = cc.wrapping_add(run);
            if j % 2 == 0 || run == 0 {
                continue;
            }
            let (y_start, x_start) = (start % h, start / h);
            let last = cc.wrapping_sub(1);
            let (y_end, x_end) = (last % h, last / h);
            xs = xs.min(x_start);
            xe = xe.max(x_end);
            if x_start < x_end {
                ys = 0;
                ye = h - 1;
            } else {
                ys = ys.min(y_start);
                ye = ye.max(y_end);
            }
        }
        extent_box(xs, ys, xe, ye)
    }

    /// Decodes the compressed `counts` string of COCO json (`rleFrString`).
    pub fn from_compressed(counts: &str, height: u32, width: u32) -> Result<Rle> {
        let s = counts.as_bytes();
        let mut cnts: Vec<u32> = Vec::with_capacity(s.len());
        let mut p = 0;
        while p < s.len() {
            let mut x = next_compressed(s, &mut p)?;
            if cnts.len() > 2 {
                x = x.wrapping_add(i64::from(cnts[cnts.len() - 2]));
            }
            cnts.push(x as u32);
        }
        Rle::new(height, width, cnts)
    }

    /// The area and bounding box of a compressed `counts` string, as
    /// `Rle::from_compressed(counts, height, width)` followed by [`Rle::area`] and
    /// [`Rle::to_bbox`] give them (the same errors too), without building the counts.
    pub fn compressed_area_and_bbox(
        counts: &str,
        height: u32,
        width: u32,
    ) -> Result<(u64, [f64; 4])> {
        // Where it stops, the full decoder gives the error (or, were it to succeed, the value):
        // a malformed number, counts that do not add up to the pixels (checked as they grow,
        // so that no position below passes height * width), an empty mask.
        let fail = || Rle::from_compressed(counts, height, width).map(|r| (r.area(), r.to_bbox()));
        let (h, w) = (height, width);
        let n = match pixels(h, w) {
            Ok(n) if n > 0 => u64::from(n),
            _ => return fail(),
        };
        let s = counts.as_bytes();
        let h64 = u64::from(h);
        // The (column, row) of the next pixel, kept without dividing: (cc / h, cc % h) of the
        // C code's position cc, which stays below height * width.
        let (mut col, mut row) = (0u64, 0u64);
        let advance = |col: &mut u64, row: &mut u64, run: u64| {
            *row += run;
            if *row >= h64 {
                if *row < 2 * h64 {
                    *row -= h64;
                    *col += 1;
                } else {
                    *col += *row / h64;
                    *row %= h64;
                }
            }
        };
        let mut p = 0;
        // Counts 0 (zeros) and 1 (ones) are taken as written; from count 3 on, each adds the
        // count two before it, of its own kind: `prev` holds 0 until then.
        let Ok(first) = next_compressed(s, &mut p) else {
            return fail();
        };
        let mut total = u64::from(first as u32);
        if total > n {
            return fail();
        }
        advance(&mut col, &mut row, total);
        let (mut prev_zeros, mut prev_ones) = (0u32, 0u32);
        let mut pairs = 0usize;
        let mut area = 0u64;
        let (mut xs, mut ys, mut xe, mut ye) = (u64::from(w), h64, 0u64, 0u64);
        while p < s.len() {
            let Ok(x) = next_compressed(s, &mut p) else {
                return fail();
            };
            let ones = x.wrapping_add(i64::from(prev_ones)) as u32;
            prev_ones = ones;
            pairs += 1;
            total += u64::from(ones);
            if total > n {
                return fail();
            }
            if ones > 0 {
                let (x_start, y_start) = (col, row);
                advance(&mut col, &mut row, u64::from(ones) - 1);
                // Positions only grow: the box's left is the first run's, its right the last's.
                if area == 0 {
                    xs = x_start;
                }
                area += u64::from(ones);
                xe = col;
                if x_start < col {
                    ys = 0;
                    ye = h64 - 1;
                } else {
                    ys = ys.min(y_start);
                    ye = ye.max(row);
                }
                advance(&mut col, &mut row, 1);
            }
            if p == s.len() {
                break;
            }
            let Ok(x) = next_compressed(s, &mut p) else {
                return fail();
            };
            let zeros = x.wrapping_add(i64::from(prev_zeros)) as u32;
            prev_zeros = zeros;
            total += u64::from(zeros);
            if total > n {
                return fail();
            }
            advance(&mut col, &mut row, u64::from(zeros));
        }
        if total != n {
            return fail();
        }
        let bbox = if pairs == 0 {
            [0.0; 4]
        } else {
            extent_box(xs as u32, ys as u32, xe as u32, ye as u32)
        };
        Ok((area, bbox))
    }

    /// The compressed `counts` string of COCO json (`rleToString`): LEB128-like, 6 bits per
    /// character, counts after the third stored as differences to the count two before.
    pub fn to_compressed(&self) -> String {
        let mut s = String::with_capacity(self.counts.len() * 2);
        for (i, &c) in self.counts.iter().enumerate() {
            let mut x = i64::from(c);
            if i > 2 {
                x -= i64::from(self.counts[i - 2]);
            }
            loop {
                let mut c = (x & 0x1f) as u8;
                x >>= 5;
                let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    c |= 0x20;
                }
                s.push(char::from(c + 48));
                if !more {
                    break;
                }
            }
        }
        s
    }

    /// Rasterises a box `[x, y, w, h]` as the polygon of its corners (`rleFrBbox`).
    pub fn from_bbox(bbox: [f64; 4], height: u32, width: u32) -> Result<Rle> {
        let (xs, ys) = (bbox[0], bbox[1]);
        let (xe, ye) = (xs + bbox[2], ys + bbox[3]);
        Rle::from_polygon(&[xs, ys, xs, ye, xe, ye, xe, ys], height, width)
    }

    /// Rasterises a polygon `[x0, y0, x1, y1, …]` (`rleFrPoly`): the boundary is upsampled 5x,
    /// and a pixel is inside when its centre is. A trailing odd coordinate is ignored.
    pub fn from_polygon(xy: &[f64], height: u32, width: u32) -> Result<Rle> {
        let n = pixels(height, width)?;
        if height == 0 || width == 0 {
            return Rle::new(height, width, vec![0]);
        }
        let (x, y) = polygon_vertices(xy);
        let k = xy.len() / 2;
        let mut total: u64 = 0;
        for j in 0..k {
            total += (x[j] - x[j + 1])
                .unsigned_abs()
                .max((y[j] - y[j + 1]).unsigned_abs())
                + 1;
        }
        if total > MAX_POLYGON_POINTS {
            return Err(Error::mask(format!(
                "a polygon of {k} points spans {total} boundary samples, more than the {MAX_POLYGON_POINTS} allowed (coordinates far outside the image?)"
            )));
        }
        // The points densely along the boundary, in order, each compared with the one before:
        // where the upsampled x steps onto a pixel centre column, the crossing's y (rounded
        // up to a pixel centre, clamped to the image) marks where a run flips. In integers:
        // the C code's `xd = (x + 0.5) / 5 - 0.5` is an integer exactly when x = 5 m + 2, and
        // `ceil((y + 0.5) / 5 - 0.5)` is `(y + 2)` divided by 5 rounded down.
        let h = i64::from(height);
        let w_max = i64::from(width) - 1;
        let mut a: Vec<u32> = Vec::new();
        let mut cross = |u0: i64, v0: i64, u1: i64, v1: i64| {
            if u1 == u0 {
                return;
            }
            let xd = if u1 < u0 { u1 } else { u1 - 1 };
            if (xd - 2).rem_euclid(5) != 0 {
                return;
            }
            let column = (xd - 2).div_euclid(5);
            if column < 0 || column > w_max {
                return;
            }
            let row = (v0.min(v1) + 2).div_euclid(5).clamp(0, h);
            a.push((column * h + row) as u32);
        };
        let mut previous: Option<(i64, i64)> = None;
        for j in 0..k {
            let Edge {
                xs,
                ys,
                dx,
                dy,
                flip,
                s,
            } = Edge::new(&x, &y, j);
            if dx >= dy {
                // x moves one step per point, so the steps are the columns xd in
                // [xs, xs + dx) between t = xd - xs and t + 1: only those of xd = 5 m + 2 are
                // visited, and y is computed there alone.
                let v = |t: i64| c_int(ys as f64 + s * t as f64 + 0.5);
                let point = |d: i64| {
                    let t = if flip { dx - d } else { d };
                    (t + xs, v(t))
                };
                if let Some((u0, v0)) = previous {
                    let (u1, v1) = point(0);
                    cross(u0, v0, u1, v1);
                }
                let mut xd = xs + (2 - xs).rem_euclid(5);
                while xd < xs + dx {
                    let t = xd - xs;
                    cross(xd, v(t), xd + 1, v(t + 1));
                    xd += 5;
                }
                previous = Some(point(dx));
            } else {
                // The point's x, xs + s t + 0.5, lies between two vertices' x (+ 0.5), which
                // are in the range of a C int: the cast truncates as `(int)` does.
                let point = |d: i64| {
                    let t = if flip { dy - d } else { d };
                    ((xs as f64 + s * t as f64 + 0.5) as i64, t + ys)
                };
                let (first, last) = (point(0), point(dy));
                if let Some((u0, v0)) = previous {
                    cross(u0, v0, first.0, first.1);
                }
                // The C code compares every point with the one before, and only a step of x
                // onto or off a column xd = 5 m + 2 (from xd to above it, or from above it to
                // xd) marks a crossing. x is monotonic along the edge (a product by a growing
                // t, rounded, then truncated, never turns back), so the step past each such
                // column is the first point beyond it: found by galloping, not walking.
                let (x0, x1) = (first.0, last.0);
                let mut found = 0;
                // The columns in the order the edge passes them: [x0, x1) up, [x1, x0) down.
                let lowest = x0.min(x1) + (2 - x0.min(x1)).rem_euclid(5);
                let count = (x0.max(x1) - lowest + 4).max(0) / 5;
                for m in 0..count {
                    let column = if x1 > x0 {
                        lowest + 5 * m
                    } else {
                        lowest + 5 * (count - 1 - m)
                    };
                    // Beyond the column: x above it going up, at it or below going down.
                    let beyond = |d: i64| {
                        let x = point(d).0;
                        if x1 > x0 {
                            x > column
                        } else {
                            x <= column
                        }
                    };
                    // The first d in (found, dy] beyond, where `point(found)` is not (else
                    // the step that passed this column passed the one before, already done).
                    if !beyond(found) {
                        let (mut lo, mut step) = (found, 1);
                        let mut hi = loop {
                            let d = (lo + step).min(dy);
                            if beyond(d) {
                                break d;
                            }
                            lo = d;
                            step *= 2;
                        };
                        while hi - lo > 1 {
                            let mid = lo + (hi - lo) / 2;
                            if beyond(mid) {
                                hi = mid;
                            } else {
                                lo = mid;
                            }
                        }
                        let ((u0, v0), (u1, v1)) = (point(hi - 1), point(hi));
                        cross(u0, v0, u1, v1);
                        found = hi;
                    }
                }
                previous = Some(last);
            }
        }
        Rle::new(height, width, counts_from_crossings(a, n))
    }

    /// The union of polygons, as pycocotools converts a polygon `segmentation` of COCO json
    /// (`frPyObjects` then `merge`). No polygon gives the empty mask.
    pub fn from_polygons(polygons: &[Vec<f64>], height: u32, width: u32) -> Result<Rle> {
        let rles = polygons
            .iter()
            .map(|p| Rle::from_polygon(p, height, width))
            .collect::<Result<Vec<_>>>()?;
        if rles.is_empty() {
            return Rle::empty(height, width);
        }
        Rle::merge(&rles, false)
    }

    /// The union (or, with `intersect`, the intersection) of masks of one size (`rleMerge`).
    pub fn merge(rles: &[Rle], intersect: bool) -> Result<Rle> {
        let Some(first) = rles.first() else {
            return Err(Error::mask("merge of no masks"));
        };
        let (h, w) = (first.height, first.width);
        if let Some(other) = rles.iter().find(|r| r.height != h || r.width != w) {
            return Err(Error::mask(format!(
                "merge of a {h}x{w} mask with a {}x{} mask",
                other.height, other.width
            )));
        }
        let mut counts = first.counts.clone();
        for b in &rles[1..] {
            counts = merge_pair(&counts, &b.counts, intersect);
        }
        Rle::new(h, w, counts)
    }

    /// The IoU of this mask (a detection) with `gt` (`rleIou`): intersection over union, or
    /// over this mask's area when `gt` is a crowd region. Masks of different sizes give -1, and
    /// masks whose bounding boxes do not overlap 0.
    pub fn iou(&self, gt: &Rle, crowd: bool) -> f64 {
        iou_with_boxes(self, &self.to_bbox(), gt, &gt.to_bbox(), crowd)
    }
}

/// `(int) x` of C on x86-64: truncation toward zero, and `INT_MIN` for NaN or out-of-range.
fn c_int(x: f64) -> i64 {
    if x.is_nan() || x >= 2_147_483_648.0 || x <= -2_147_483_649.0 {
        i64::from(i32::MIN)
    } else {
        x as i64
    }
}

/// A polygon's vertices upsampled 5x as C ints, the first repeated at the end (`rleFrPoly`).
fn polygon_vertices(xy: &[f64]) -> (Vec<i64>, Vec<i64>) {
    let k = xy.len() / 2;
    let scale = 5.0;
    let mut x: Vec<i64> = (0..k).map(|j| c_int(scale * xy[2 * j] + 0.5)).collect();
    let mut y: Vec<i64> = (0..k).map(|j| c_int(scale * xy[2 * j + 1] + 0.5)).collect();
    if k > 0 {
        x.push(x[0]);
        y.push(y[0]);
    }
    (x, y)
}

/// Edge `j` of the upsampled polygon as `rleFrPoly` walks it: from (xs, ys), along x when
/// `dx >= dy` (else along y), reversed (`flip`) so that the walk goes up, with slope `s`.
struct Edge {
    xs: i64,
    ys: i64,
    dx: i64,
    dy: i64,
    flip: bool,
    s: f64,
}

impl Edge {
    fn new(x: &[i64], y: &[i64], j: usize) -> Edge {
        let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
        let dx = (xe - xs).abs();
        let dy = (ys - ye).abs();
        let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if flip {
            std::mem::swap(&mut xs, &mut xe);
            std::mem::swap(&mut ys, &mut ye);
        }
        let s = if dx >= dy {
            (ye - ys) as f64 / dx as f64
        } else {
            (xe - xs) as f64 / dy as f64
        };
        Edge {
            xs,
            ys,
            dx,
            dy,
            flip,
            s,
        }
    }
}

/// The counts of a polygon's mask from its boundary crossings (column-major pixel indices
/// where a run flips), as `rleFrPoly` ends: sorted, differenced, empty runs merged.
fn counts_from_crossings(mut a: Vec<u32>, n: u32) -> Vec<u32> {
    a.push(n);
    // Each edge adds its crossings in order of x, up or down: runs that a stable sort
    // finds and merges (an unstable one sorts from scratch).
    a.sort();
    let mut previous = 0u32;
    for value in a.iter_mut() {
        let t = *value;
        *value -= previous;
        previous = t;
    }
    let mut counts = Vec::with_capacity(a.len());
    counts.push(a[0]);
    let mut j = 1;
    while j < a.len() {
        if a[j] > 0 {
            counts.push(a[j]);
            j += 1;
        } else {
            j += 1;
            if j < a.len() {
                if let Some(last) = counts.last_mut() {
                    *last += a[j];
                }
                j += 1;
            }
        }
    }
    counts
}

fn merge_pair(a: &[u32], b: &[u32], intersect: bool) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut ca, mut cb) = (
        a.first().copied().unwrap_or(0),
        b.first().copied().unwrap_or(0),
    );
    let (mut v, mut va, mut vb) = (false, false, false);
    let (mut ia, mut ib) = (1, 1);
    let mut cc = 0u32;
    loop {
        let c = ca.min(cb);
        cc = cc.wrapping_add(c);
        let mut ct = 0u64;
        let mut advanced = c > 0;
        ca -= c;
        if ca == 0 && ia < a.len() {
            ca = a[ia];
            ia += 1;
            va = !va;
            advanced = true;
        }
        ct += u64::from(ca);
        cb -= c;
        if cb == 0 && ib < b.len() {
            cb = b[ib];
            ib += 1;
            vb = !vb;
            advanced = true;
        }
        ct += u64::from(cb);
        let vp = v;
        v = if intersect { va && vb } else { va || vb };
        if v != vp || ct == 0 {
            out.push(cc);
            cc = 0;
        }
        if ct == 0 || !advanced {
            break;
        }
    }
    out
}

pub(crate) fn iou_with_boxes(
    dt: &Rle,
    dt_box: &[f64; 4],
    gt: &Rle,
    gt_box: &[f64; 4],
    crowd: bool,
) -> f64 {
    if bbox_iou(dt_box, gt_box, crowd) <= 0.0 {
        return 0.0;
    }
    if dt.height != gt.height || dt.width != gt.width {
        return -1.0;
    }
    let (a, b) = (&dt.counts, &gt.counts);
    let (mut ca, mut cb) = (
        a.first().copied().unwrap_or(0),
        b.first().copied().unwrap_or(0),
    );
    let (mut va, mut vb) = (false, false);
    let (mut ia, mut ib) = (1, 1);
    let (mut inter, mut union) = (0u64, 0u64);
    loop {
        let c = ca.min(cb);
        if va || vb {
            union += u64::from(c);
            if va && vb {
                inter += u64::from(c);
            }
        }
        let mut advanced = c > 0;
        ca -= c;
        if ca == 0 && ia < a.len() {
            ca = a[ia];
            ia += 1;
            va = !va;
            advanced = true;
        }
        cb -= c;
        if cb == 0 && ib < b.len() {
            cb = b[ib];
            ib += 1;
            vb = !vb;
            advanced = true;
        }
        if u64::from(ca) + u64::from(cb) == 0 || !advanced {
            break;
        }
    }
    if inter == 0 {
        union = 1;
    } else if crowd {
        union = dt.area();
    }
    inter as f64 / union as f64
}

/// IoU of every detection mask with every ground-truth mask (`mask.iou`), row-major
/// `[dt.len() x gt.len()]`. `iscrowd[g]` makes `gt[g]` a crowd region (see [`Rle::iou`]).
pub fn iou(dt: &[Rle], gt: &[Rle], iscrowd: &[bool]) -> Result<Vec<f64>> {
    if iscrowd.len() != gt.len() {
        return Err(Error::mask(format!(
            "iscrowd has {} flags for {} ground-truth masks",
            iscrowd.len(),
            gt.len()
        )));
    }
    let dt_boxes: Vec<[f64; 4]> = dt.iter().map(Rle::to_bbox).collect();
    let gt_boxes: Vec<[f64; 4]> = gt.iter().map(Rle::to_bbox).collect();
    let mut out = Vec::with_capacity(dt.len() * gt.len());
    for (d, db) in dt.iter().zip(&dt_boxes) {
        for ((g, gb), &crowd) in gt.iter().zip(&gt_boxes).zip(iscrowd) {
            out.push(iou_with_boxes(d, db, g, gb, crowd));
        }
    }
    Ok(out)
}

/// IoU of two boxes `[x, y, w, h]` (`bbIou`, no `+1`): intersection over union, or over the
/// detection's area when `gt` is a crowd region.
pub fn bbox_iou(dt: &[f64; 4], gt: &[f64; 4], crowd: bool) -> f64 {
    let w = (dt[2] + dt[0]).min(gt[2] + gt[0]) - dt[0].max(gt[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (dt[3] + dt[1]).min(gt[3] + gt[1]) - dt[1].max(gt[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    let da = dt[2] * dt[3];
    let u = if crowd { da } else { da + gt[2] * gt[3] - i };
    i / u
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boundary crossings of a polygon as the C code computes them, step by step in
    /// floats: the reference of the integer version in [`Rle::from_polygon`].
    fn crossings_reference(xy: &[f64], height: u32, width: u32) -> Vec<u32> {
        let scale = 5.0;
        let (x, y) = polygon_vertices(xy);
        let mut u: Vec<i64> = Vec::new();
        let mut v: Vec<i64> = Vec::new();
        for j in 0..xy.len() / 2 {
            let Edge {
                xs,
                ys,
                dx,
                dy,
                flip,
                s,
            } = Edge::new(&x, &y, j);
            if dx >= dy {
                for d in 0..=dx {
                    let t = if flip { dx - d } else { d };
                    u.push(t + xs);
                    v.push(c_int(ys as f64 + s * t as f64 + 0.5));
                }
            } else {
                for d in 0..=dy {
                    let t = if flip { dy - d } else { d };
                    v.push(t + ys);
                    u.push(c_int(xs as f64 + s * t as f64 + 0.5));
                }
            }
        }
        // Points along the y-boundary, downsampled.
        let w_max = f64::from(width - 1);
        let h_f = f64::from(height);
        let mut a: Vec<u32> = Vec::new();
        for j in 1..u.len() {
            if u[j] == u[j - 1] {
                continue;
            }
            let mut xd = if u[j] < u[j - 1] { u[j] } else { u[j] - 1 } as f64;
            xd = (xd + 0.5) / scale - 0.5;
            if xd.floor() != xd || xd < 0.0 || xd > w_max {
                continue;
            }
            let mut yd = v[j].min(v[j - 1]) as f64;
            yd = (yd + 0.5) / scale - 0.5;
            if yd < 0.0 {
                yd = 0.0;
            } else if yd > h_f {
                yd = h_f;
            }
            yd = yd.ceil();
            a.push((xd as i64 * i64::from(height) + yd as i64) as u32);
        }
        a
    }

    #[test]
    fn compressed_area_and_bbox_equal_decoding() {
        let mut next = crate::lcg(5);
        let mut valid = 0;
        for _ in 0..20000 {
            let large = next(4) == 0;
            let (h, w) = if large {
                (1 + next(70) as u32, 1 + next(70) as u32)
            } else {
                (next(9) as u32, next(9) as u32)
            };
            let s: String = if large || next(2) == 0 {
                // A real mask's string, sometimes cut or changed: noise, or (large) a filled
                // rectangle, so that runs cross columns and counts take several characters.
                let (x0, y0) = (next(u64::from(w) + 1) as u32, next(u64::from(h) + 1) as u32);
                let (x1, y1) = (
                    x0 + next(u64::from(w - x0) + 1) as u32,
                    y0 + next(u64::from(h - y0) + 1) as u32,
                );
                let bits: Vec<u8> = (0..h * w)
                    .map(|i| {
                        let (x, y) = (i / h.max(1), i % h.max(1));
                        u8::from(if large {
                            (x0..x1).contains(&x) && (y0..y1).contains(&y) || next(50) == 0
                        } else {
                            next(3) == 0
                        })
                    })
                    .collect();
                let mut s = Rle::encode(&bits, h, w).unwrap().to_compressed();
                if next(4) == 0 && !s.is_empty() {
                    s.remove(next(s.len() as u64) as usize);
                }
                s
            } else {
                (0..next(8))
                    .map(|_| char::from(40 + next(80) as u8))
                    .collect()
            };
            let full = Rle::from_compressed(&s, h, w).map(|r| (r.area(), r.to_bbox()));
            let streamed = Rle::compressed_area_and_bbox(&s, h, w);
            match (&full, &streamed) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{s:?} {h}x{w}");
                    valid += 1;
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                _ => panic!("{s:?} {h}x{w}: {full:?} against {streamed:?}"),
            }
        }
        assert!(valid > 5000, "{valid}");
    }

    /// The integer walk's RLE equals the one built from the float reference's crossings.
    #[test]
    fn polygon_crossings_equal_the_float_reference() {
        let mut next = crate::lcg(11);
        for case in 0..3000 {
            let (h, w) = (1 + next(60) as u32, 1 + next(60) as u32);
            let points = next(9) as usize;
            let xy: Vec<f64> = (0..2 * points)
                .map(|_| (next(16000) as f64 - 4000.0) / 100.0)
                .collect();
            let counts = counts_from_crossings(crossings_reference(&xy, h, w), h * w);
            let rle = Rle::from_polygon(&xy, h, w).unwrap();
            assert_eq!(rle.counts(), counts, "case {case}: {xy:?} in {h}x{w}");
        }
    }

    /// A mask drawn row by row, as a string of 0/1.
    fn rows(s: &str, h: u32, w: u32) -> Rle {
        let bytes: Vec<u8> = s.bytes().map(|b| b - b'0').collect();
        Rle::encode_row_major(&bytes, h, w).unwrap()
    }

    #[test]
    fn encode_area_bbox_of_a_small_mask() {
        // . . .
        // . 1 1
        // . 1 .
        // . . .
        let r = rows("000011010000", 4, 3);
        assert_eq!(r.counts(), [5, 2, 2, 1, 2]);
        // pycocotools: mask.encode(...)['counts'] == b'522O0' (the fourth count is 1 - 2).
        assert_eq!(r.to_compressed(), "522O0");
        assert_eq!(r.area(), 3);
        assert_eq!(r.to_bbox(), [1.0, 1.0, 2.0, 2.0]);
        assert_eq!(r.decode_row_major(), b"\0\0\0\0\x01\x01\0\x01\0\0\0\0");
        assert_eq!(Rle::from_compressed(&r.to_compressed(), 4, 3).unwrap(), r);
    }

    #[test]
    fn a_run_across_columns_spans_the_full_height() {
        // Foreground from the bottom of column 0 to the top of column 1.
        let r = Rle::new(3, 2, vec![2, 2, 2]).unwrap();
        assert_eq!(r.to_bbox(), [0.0, 0.0, 2.0, 3.0]);
    }

    #[test]
    fn empty_runs_of_ones_wrap_around_like_the_c_code() {
        let r = Rle::new(2, 3, vec![6, 0]).unwrap();
        assert_eq!(r.to_bbox(), [3.0, 2.0, 4294967294.0, 4294967295.0]);
        assert_eq!(Rle::empty(2, 3).unwrap().to_bbox(), [0.0; 4]);
    }

    #[test]
    fn compressed_strings_of_known_masks() {
        // pycocotools: mask.encode(np.ones((2, 2), order='F', dtype=np.uint8))['counts'] == b'04'
        let ones = Rle::encode(&[1; 4], 2, 2).unwrap();
        assert_eq!(ones.counts(), [0, 4]);
        assert_eq!(ones.to_compressed(), "04");
        // Counts after the third are differences: [3, 1, 3, 1] -> "3131" with the 4th as 1-1=0.
        let r = Rle::new(1, 8, vec![3, 1, 3, 1]).unwrap();
        assert_eq!(r.to_compressed(), "3130");
        assert_eq!(Rle::from_compressed("3130", 1, 8).unwrap(), r);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(
            Rle::new(2, 2, vec![1, 2]).unwrap_err().to_string(),
            "invalid mask: counts add up to 3, expected height * width = 2 * 2 = 4"
        );
        assert_eq!(
            Rle::from_compressed("3 ", 1, 3).unwrap_err().to_string(),
            "invalid mask: compressed counts hold ' ' at byte 1, outside '0'..='o'"
        );
        assert_eq!(
            Rle::from_compressed("3P", 1, 3).unwrap_err().to_string(),
            "invalid mask: compressed counts end inside a number (at byte 2)"
        );
        assert_eq!(
            Rle::new(65536, 65536, vec![]).unwrap_err().to_string(),
            "invalid mask: a 65536x65536 mask has more than 2^32 - 1 pixels"
        );
        assert_eq!(
            Rle::encode(&[0; 5], 2, 2).unwrap_err().to_string(),
            "invalid mask: a 2x2 mask needs 4 values, found 5"
        );
        let a = Rle::empty(2, 2).unwrap();
        let b = Rle::empty(2, 3).unwrap();
        assert_eq!(
            Rle::merge(&[a.clone(), b.clone()], false)
                .unwrap_err()
                .to_string(),
            "invalid mask: merge of a 2x2 mask with a 2x3 mask"
        );
        assert_eq!(
            Rle::merge(&[], false).unwrap_err().to_string(),
            "invalid mask: merge of no masks"
        );
        assert_eq!(
            iou(&[a], &[b], &[]).unwrap_err().to_string(),
            "invalid mask: iscrowd has 0 flags for 1 ground-truth masks"
        );
        assert_eq!(
            Rle::from_polygon(&[0.0, 0.0, 1e9, 0.0, 0.0, 5.0], 10, 10)
                .unwrap_err()
                .to_string(),
            "invalid mask: a polygon of 3 points spans 4294967324 boundary samples, more than the 16777216 allowed (coordinates far outside the image?)"
        );
    }

    #[test]
    fn merge_and_iou_of_two_squares() {
        // Two 2x2 squares in a 4x4 mask, overlapping in one pixel.
        let a = rows("1100110000000000", 4, 4);
        let b = rows("0000011001100000", 4, 4);
        let union = Rle::merge(&[a.clone(), b.clone()], false).unwrap();
        let inter = Rle::merge(&[a.clone(), b.clone()], true).unwrap();
        assert_eq!(union.area(), 7);
        assert_eq!(inter.area(), 1);
        assert_eq!(inter.to_bbox(), [1.0, 1.0, 1.0, 1.0]);
        assert_eq!(a.iou(&b, false), 1.0 / 7.0);
        assert_eq!(a.iou(&b, true), 1.0 / 4.0);
        let other_size = Rle::encode(&[1; 20], 4, 5).unwrap();
        assert_eq!(a.iou(&other_size, false), -1.0);
        let far = rows("0000000000000011", 4, 4);
        assert_eq!(a.iou(&far, false), 0.0);
    }

    #[test]
    fn box_iou_without_plus_one() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(bbox_iou(&a, &[5.0, 0.0, 10.0, 10.0], false), 50.0 / 150.0);
        assert_eq!(bbox_iou(&a, &[5.0, 0.0, 10.0, 10.0], true), 0.5);
        assert_eq!(bbox_iou(&a, &[10.0, 0.0, 10.0, 10.0], false), 0.0);
        assert_eq!(bbox_iou(&a, &[2.0, 2.0, 0.0, 5.0], false), 0.0);
    }

    #[test]
    fn polygon_of_a_square_covers_the_pixel_centres_inside() {
        // The square from (0.5, 0.5) to (2.5, 2.5) holds the centres of pixels 1 and 2.
        let r = Rle::from_polygon(&[0.5, 0.5, 2.5, 0.5, 2.5, 2.5, 0.5, 2.5], 4, 4).unwrap();
        assert_eq!(
            r.decode_row_major(),
            [0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0]
        );
        assert_eq!(Rle::from_polygon(&[], 3, 3).unwrap().counts(), [9]);
        assert_eq!(Rle::from_polygons(&[], 3, 3).unwrap().counts(), [9]);
    }
}
