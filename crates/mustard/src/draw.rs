//! Pictures: predictions drawn over images (boxes with labels, skeletons, a segmentation
//! overlay), depth colour maps and heatmaps. Charts are in [`crate::charts`].

use ab_glyph::{FontRef, PxScale};
use image::{GrayImage, Rgb, RgbImage};
use imageproc::drawing::{
    draw_filled_circle_mut, draw_hollow_rect_mut, draw_line_segment_mut, draw_text_mut,
};
use imageproc::rect::Rect;

/// DejaVu Sans Mono (Bitstream Vera licence, see `assets/DejaVu-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../../../assets/DejaVuSansMono.ttf");

fn font() -> FontRef<'static> {
    FontRef::try_from_slice(FONT).expect("the bundled font parses")
}

/// A distinct colour per class.
pub fn colour(i: usize) -> Rgb<u8> {
    const PALETTE: [[u8; 3]; 10] = [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
    ];
    Rgb(PALETTE[i % PALETTE.len()])
}

/// Draws `text` with its top-left corner at `(x, y)` on a dark background.
pub fn label(img: &mut RgbImage, x: i32, y: i32, text: &str, colour: Rgb<u8>) {
    let scale = PxScale::from(12.0);
    let w = 7 * text.chars().count() as u32 + 2;
    let (x, y) = (x.max(0), y.max(0));
    imageproc::drawing::draw_filled_rect_mut(img, Rect::at(x, y).of_size(w, 13), Rgb([0, 0, 0]));
    draw_text_mut(img, colour, x + 1, y, scale, &font(), text);
}

/// A box `[x1, y1, x2, y2]` with a label above it.
pub fn boxed(img: &mut RgbImage, bbox: [f32; 4], text: &str, colour: Rgb<u8>) {
    let [x1, y1, x2, y2] = bbox;
    let (w, h) = ((x2 - x1).max(1.0) as u32, (y2 - y1).max(1.0) as u32);
    draw_hollow_rect_mut(img, Rect::at(x1 as i32, y1 as i32).of_size(w, h), colour);
    label(img, x1 as i32, y1 as i32 - 13, text, colour);
}

/// Joints (`[x, y, score]`) joined by the 1-based `skeleton` pairs.
pub fn skeleton(img: &mut RgbImage, joints: &[[f32; 3]], skeleton: &[[u32; 2]], colour: Rgb<u8>) {
    for [a, b] in skeleton {
        let (Some(p), Some(q)) = (joints.get(*a as usize - 1), joints.get(*b as usize - 1)) else {
            continue;
        };
        draw_line_segment_mut(img, (p[0], p[1]), (q[0], q[1]), colour);
    }
    for j in joints {
        draw_filled_circle_mut(img, (j[0] as i32, j[1] as i32), 2, colour);
    }
}

/// Blends class colours over the image (class 0, background, and 255 are left clear).
pub fn overlay(img: &mut RgbImage, classes: &GrayImage) {
    for (p, c) in img.pixels_mut().zip(classes.pixels()) {
        let c = c.0[0];
        if c == 0 || c == 255 {
            continue;
        }
        let k = colour(c as usize - 1).0;
        p.0 = [0, 1, 2].map(|i| ((p.0[i] as u16 + k[i] as u16) / 2) as u8);
    }
}

/// A turbo-like colour map of `values` between their 2nd and 98th percentiles (near = warm).
pub fn colour_map(values: &[f32], width: u32, height: u32, near_is_small: bool) -> RgbImage {
    let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f32::total_cmp);
    let at = |q: f64| {
        sorted
            .get(((sorted.len().max(1) - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let (lo, hi) = (at(0.02), at(0.98).max(at(0.02) + 1e-6));
    colour_map_range(values, width, height, (lo, hi), near_is_small)
}

/// Like [`colour_map`], with the value range fixed to `(lo, hi)`.
pub fn colour_map_range(
    values: &[f32],
    width: u32,
    height: u32,
    (lo, hi): (f32, f32),
    near_is_small: bool,
) -> RgbImage {
    let hi = hi.max(lo + 1e-6);
    RgbImage::from_fn(width, height, |x, y| {
        let v = values[(y * width + x) as usize];
        let mut t = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
        if near_is_small {
            t = 1.0 - t;
        }
        // Blue → cyan → yellow → red.
        let ramp = |a: f32, b: f32, s: f32| (a + (b - a) * s) as u8;
        let c = if t < 1.0 / 3.0 {
            let s = t * 3.0;
            [
                ramp(30.0, 0.0, s),
                ramp(60.0, 200.0, s),
                ramp(200.0, 220.0, s),
            ]
        } else if t < 2.0 / 3.0 {
            let s = t * 3.0 - 1.0;
            [
                ramp(0.0, 250.0, s),
                ramp(200.0, 230.0, s),
                ramp(220.0, 30.0, s),
            ]
        } else {
            let s = t * 3.0 - 2.0;
            [
                ramp(250.0, 220.0, s),
                ramp(230.0, 30.0, s),
                ramp(30.0, 20.0, s),
            ]
        };
        Rgb(c)
    })
}

/// Stacks images vertically.
pub fn stack(parts: &[RgbImage]) -> RgbImage {
    let w = parts.iter().map(RgbImage::width).max().unwrap_or(1);
    let h = parts.iter().map(RgbImage::height).sum::<u32>().max(1);
    let mut out = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let mut y = 0;
    for p in parts {
        image::imageops::overlay(&mut out, p, 0, y as i64);
        y += p.height();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawing_marks_the_expected_pixels() {
        let mut img = RgbImage::new(40, 40);
        boxed(&mut img, [10.0, 20.0, 30.0, 35.0], "x", colour(1));
        assert_eq!(img.get_pixel(10, 25).0, colour(1).0, "left edge of the box");
        assert_eq!(img.get_pixel(20, 27).0, [0, 0, 0], "inside stays clear");
        let map = colour_map(&[1.0, 2.0, 3.0, 4.0], 2, 2, true);
        assert_ne!(map.get_pixel(0, 0), map.get_pixel(1, 1));
    }
}
