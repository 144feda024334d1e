//! Pictures: predictions drawn over images (boxes with labels, skeletons, a segmentation
//! overlay), depth colour maps, heatmaps, and the training curves of `results.png`.

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

/// A line chart of named series over x = 1..n, with min/max labels, `width` x `height`.
pub fn chart(title: &str, series: &[(String, Vec<f64>)], width: u32, height: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let values: Vec<f64> = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if lo.is_finite() {
        (lo, if hi > lo { hi } else { lo + 1.0 })
    } else {
        (0.0, 1.0)
    };
    let (left, top, right, bottom) = (8.0f32, 18.0f32, width as f32 - 8.0, height as f32 - 16.0);
    let black = Rgb([0, 0, 0]);
    draw_text_mut(&mut img, black, 8, 2, PxScale::from(13.0), &font(), title);
    draw_hollow_rect_mut(
        &mut img,
        Rect::at(left as i32, top as i32).of_size((right - left) as u32, (bottom - top) as u32),
        Rgb([160, 160, 160]),
    );
    let n = series.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let mut legend_x = left as i32 + 4;
    for (k, (name, v)) in series.iter().enumerate() {
        let c = colour(k);
        let point = |i: usize, y: f64| {
            let x = left
                + (right - left)
                    * if n > 1 {
                        i as f32 / (n - 1) as f32
                    } else {
                        0.5
                    };
            (x, bottom - (bottom - top) * ((y - lo) / (hi - lo)) as f32)
        };
        for i in 1..v.len() {
            if v[i - 1].is_finite() && v[i].is_finite() {
                draw_line_segment_mut(&mut img, point(i - 1, v[i - 1]), point(i, v[i]), c);
            }
        }
        for (i, y) in v.iter().enumerate().filter(|(_, y)| y.is_finite()) {
            let (px, py) = point(i, *y);
            draw_filled_circle_mut(&mut img, (px as i32, py as i32), 2, c);
        }
        draw_text_mut(
            &mut img,
            c,
            legend_x,
            bottom as i32 + 2,
            PxScale::from(11.0),
            &font(),
            name,
        );
        legend_x += 7 * name.chars().count() as i32 + 14;
    }
    draw_text_mut(
        &mut img,
        black,
        right as i32 - 60,
        top as i32 + 2,
        PxScale::from(11.0),
        &font(),
        &format!("{hi:.3}"),
    );
    draw_text_mut(
        &mut img,
        black,
        right as i32 - 60,
        bottom as i32 - 13,
        PxScale::from(11.0),
        &font(),
        &format!("{lo:.3}"),
    );
    img
}

/// A grouped bar chart of values in `[0, 1]`: one group per `(name, values)`, one bar colour per
/// entry of `legend`.
pub fn bars(title: &str, groups: &[(String, Vec<f64>)], legend: &[&str], height: u32) -> RgbImage {
    let per_group = legend.len().max(1) as u32;
    let bar_w = 14u32;
    // Wide enough for the group's name (about 7 px per character at this size) and a gap.
    let longest = groups
        .iter()
        .map(|(name, _)| name.chars().count() as u32)
        .max()
        .unwrap_or(0);
    let group_w = (per_group * bar_w + 24).max(7 * longest + 14);
    let width = (16 + group_w * groups.len().max(1) as u32).max(320);
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let black = Rgb([0, 0, 0]);
    draw_text_mut(&mut img, black, 8, 2, PxScale::from(13.0), &font(), title);
    let (top, bottom) = (34.0f32, height as f32 - 18.0);
    let mut x = 8;
    for (k, name) in legend.iter().enumerate() {
        draw_text_mut(
            &mut img,
            colour(k),
            x,
            17,
            PxScale::from(11.0),
            &font(),
            name,
        );
        x += 7 * name.chars().count() as i32 + 14;
    }
    draw_line_segment_mut(&mut img, (8.0, bottom), (width as f32 - 8.0, bottom), black);
    for (g, (name, values)) in groups.iter().enumerate() {
        let x0 = 16 + g as u32 * group_w;
        for (k, v) in values.iter().enumerate() {
            let v = if v.is_finite() {
                v.clamp(0.0, 1.0)
            } else {
                0.0
            };
            let h = ((bottom - top) * v as f32).round().max(1.0) as u32;
            imageproc::drawing::draw_filled_rect_mut(
                &mut img,
                Rect::at((x0 + k as u32 * bar_w) as i32, bottom as i32 - h as i32)
                    .of_size(bar_w - 2, h),
                colour(k),
            );
        }
        draw_text_mut(
            &mut img,
            black,
            x0 as i32,
            bottom as i32 + 3,
            PxScale::from(11.0),
            &font(),
            name,
        );
    }
    img
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
        let c = chart("loss", &[("total".into(), vec![3.0, 2.0, 1.0])], 200, 80);
        assert_eq!(c.dimensions(), (200, 80));
        assert!(
            c.pixels().any(|p| p.0 == colour(0).0),
            "the series is drawn"
        );
    }
}
