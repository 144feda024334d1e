//! Charts, drawn with `plotters` (bitmap backend, the bundled DejaVu Sans Mono as the only
//! font): the training curves of `results.png`, grouped bars (`must.png`, `mcn.png`),
//! precision–recall curves and confusion matrices. Every chart is written atomically as PNG.

use std::path::Path;
use std::sync::Once;

use image::RgbImage;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{Error, Result};

/// DejaVu Sans Mono (Bitstream Vera licence, see `assets/DejaVu-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../../../assets/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";

fn font_ready() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the bundled font parses"));
    });
}

fn text(size: f64) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

/// A distinct colour per series.
pub fn colour(i: usize) -> RGBColor {
    let c = crate::draw::colour(i).0;
    RGBColor(c[0], c[1], c[2])
}

const GREY: RGBColor = RGBColor(150, 150, 150);
const LIGHT: RGBColor = RGBColor(225, 225, 225);

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Renders `width` x `height` pixels with `draw`, then writes them to `path` atomically.
fn write(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> std::result::Result<(), String>,
) -> Result<()> {
    font_ready();
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        draw(&root).map_err(|e| Error::file(path, format!("drawing the chart: {e}")))?;
        root.present()
            .map_err(|e| Error::file(path, format!("drawing the chart: {e}")))?;
    }
    let img =
        RgbImage::from_raw(width, height, buffer).expect("the buffer has width x height pixels");
    mustard_data::imageio::write_rgb(path, &img)?;
    Ok(())
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Writes a note in the middle of an empty panel, under its title.
fn note(area: &Area<'_>, title: &str, message: &str) -> std::result::Result<(), String> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Rectangle::new(
        [(0, 0), (w as i32 - 1, h as i32 - 1)],
        LIGHT.stroke_width(1),
    ))
    .map_err(err)?;
    area.draw(&Text::new(
        title.to_string(),
        (w as i32 / 2, 8),
        text(15.0).pos(Pos::new(HPos::Center, VPos::Top)),
    ))
    .map_err(err)?;
    // One line per ~(w / 8) characters.
    let per_line = (w as usize / 8).max(10);
    let mut lines: Vec<String> = vec![String::new()];
    for word in message.split_whitespace() {
        let last = lines.last_mut().expect("one line");
        if !last.is_empty() && last.len() + word.len() + 1 > per_line {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    let top = h as i32 / 2 - 8 * lines.len() as i32;
    for (i, line) in lines.iter().enumerate() {
        area.draw(&Text::new(
            line.clone(),
            (w as i32 / 2, top + 16 * i as i32),
            text(13.0)
                .color(&RGBColor(90, 90, 90))
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// A Gaussian-weighted running mean of the finite points (σ = a fifteenth of the run, at
/// least one epoch), the trend line drawn over the raw points.
pub fn smooth(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let sigma = (points.len() as f64 / 15.0).max(1.0);
    points
        .iter()
        .map(|&(x, _)| {
            let (mut sum, mut weight) = (0.0, 0.0);
            for &(xi, yi) in points {
                let w = (-0.5 * ((xi - x) / sigma).powi(2)).exp();
                sum += w * yi;
                weight += w;
            }
            (x, sum / weight)
        })
        .collect()
}

/// One panel of a grid of line charts.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// The x axis' description.
    pub x_label: String,
    /// `(x, y)` points; non-finite values are left out.
    pub points: Vec<(f64, f64)>,
    /// What to write instead when there are no points.
    pub empty: String,
    /// Draw the y axis on a log scale when the values are positive and span more than a decade.
    pub log: bool,
    /// Draw the smoothed trend over the points.
    pub smooth: bool,
}

/// A grid of line panels, `columns` wide: each panel's raw points and their smoothed trend.
pub fn write_panels(path: &Path, caption: &str, panels: &[Panel], columns: usize) -> Result<()> {
    let columns = columns.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns).max(1);
    let (pw, ph) = (340u32, 230u32);
    let size = (pw * columns as u32, ph * rows as u32 + 30);
    write(path, size, |root| {
        let (head, body) = root.split_vertically(30);
        head.draw(&Text::new(caption.to_string(), (8, 8), text(15.0)))
            .map_err(err)?;
        let cells = body.split_evenly((rows, columns));
        for (panel, area) in panels.iter().zip(cells.iter()) {
            let area = area.margin(4, 4, 4, 4);
            let points: Vec<(f64, f64)> = panel
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            if points.is_empty() {
                note(&area, &panel.title, &panel.empty)?;
                continue;
            }
            line_panel(&area, panel, &points)?;
        }
        Ok(())
    })
}

fn line_panel(
    area: &Area<'_>,
    panel: &Panel,
    points: &[(f64, f64)],
) -> std::result::Result<(), String> {
    let (mut x0, mut x1) = bounds(points.iter().map(|p| p.0));
    if x1 <= x0 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let (lo, hi) = bounds(points.iter().map(|p| p.1));
    let log = panel.log && lo > 0.0 && hi / lo > 10.0;
    if log {
        let y = (lo / 1.2..hi * 1.2).log_scale();
        draw_lines(area, panel, points, x0..x1, y, "(log)")
    } else {
        let pad = if hi > lo {
            0.08 * (hi - lo)
        } else {
            0.5 * lo.abs().max(0.01)
        };
        draw_lines(area, panel, points, x0..x1, lo - pad..hi + pad, "")
    }
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    })
}

fn draw_lines<Y>(
    area: &Area<'_>,
    panel: &Panel,
    points: &[(f64, f64)],
    x: std::ops::Range<f64>,
    y: Y,
    scale: &str,
) -> std::result::Result<(), String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{} {scale}", panel.title).trim_end(), text(15.0))
        .margin_right(10)
        .x_label_area_size(34)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .light_line_style(LIGHT.mix(0.5))
        .label_style(text(11.0))
        .axis_desc_style(text(12.0))
        .x_desc(panel.x_label.clone())
        .x_labels(6)
        .y_labels(5)
        // Whole numbers on x (epochs, steps): no label between two of them.
        .x_label_formatter(&|v| {
            if v.fract() == 0.0 {
                format_tick(*v)
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| format_tick(*v))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(
            points
                .iter()
                .map(|&p| Circle::new(p, 3, colour(3).mix(0.6).filled())),
        )
        .map_err(err)?;
    if panel.smooth && points.len() >= 6 {
        chart
            .draw_series(LineSeries::new(smooth(points), colour(4).stroke_width(2)))
            .map_err(err)?;
    }
    Ok(())
}

/// A tick label: few digits, scientific for very small or large values.
pub fn format_tick(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        // Without trailing zeros, so that one axis reads 0, 0.25, 0.5, 0.75, 1 rather than
        // mixing "1" with "0.50".
        let decimals = if a >= 1.0 {
            1
        } else if a >= 0.1 {
            2
        } else {
            3
        };
        let text = format!("{v:.decimals$}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A value printed on a bar.
fn format_value(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 0.095 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A panel of grouped bars: one group per name, one bar per legend entry, each labelled with
/// its value (and, with `errors`, a ± standard deviation whisker).
#[derive(Debug, Clone)]
pub struct Bars {
    /// Title above the panel.
    pub title: String,
    /// The y axis' description.
    pub y_label: String,
    /// One bar colour per entry.
    pub legend: Vec<String>,
    /// `(group name, one value per legend entry)`; NaN leaves a bar out.
    pub groups: Vec<(String, Vec<f64>)>,
    /// Standard deviations, shaped like the values.
    pub errors: Option<Vec<Vec<f64>>>,
    /// What to write instead when there are no groups.
    pub empty: String,
}

/// Panels of grouped bars, one above the other.
pub fn write_bars(path: &Path, panels: &[Bars]) -> Result<()> {
    let widest = panels
        .iter()
        .map(|p| {
            let longest = p
                .groups
                .iter()
                .map(|(n, _)| n.chars().count())
                .max()
                .unwrap_or(0);
            let per_group = (p.legend.len() as u32 * 38 + 20).max(longest as u32 * 8 + 16);
            per_group * p.groups.len() as u32 + 90 + key_width(p)
        })
        .max()
        .unwrap_or(0)
        .max(560);
    let ph = 330u32;
    write(path, (widest, ph * panels.len().max(1) as u32), |root| {
        let areas = root.split_evenly((panels.len().max(1), 1));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            let area = area.margin(6, 6, 6, 6);
            if panel.groups.is_empty() {
                note(&area, &panel.title, &panel.empty)?;
                continue;
            }
            bar_panel(&area, panel)?;
        }
        Ok(())
    })
}

/// The width of a bar panel's key: a swatch and the longest legend entry at 12 px (7.5 px a
/// character, a little over the font's 7.2), drawn right of the plot so that it never covers
/// a bar or its value.
fn key_width(panel: &Bars) -> u32 {
    match panel.legend.iter().map(|n| n.chars().count()).max() {
        Some(longest) => longest as u32 * 15 / 2 + 34,
        None => 0,
    }
}

/// The key of a bar panel, one swatch and name a row, from the top of `area`.
fn bar_key(area: &Area<'_>, legend: &[String]) -> std::result::Result<(), String> {
    for (i, name) in legend.iter().enumerate() {
        let y = 40 + i as i32 * 18;
        area.draw(&Rectangle::new(
            [(6, y - 5), (18, y + 5)],
            colour(i).filled(),
        ))
        .map_err(err)?;
        area.draw(&Text::new(
            name.clone(),
            (24, y),
            text(12.0).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
    }
    Ok(())
}

fn bar_panel(area: &Area<'_>, panel: &Bars) -> std::result::Result<(), String> {
    let (width, _) = area.dim_in_pixel();
    let (plot, key) = area.split_horizontally(width.saturating_sub(key_width(panel)));
    bar_key(&key, &panel.legend)?;
    let n = panel.groups.len();
    let k = panel.legend.len().max(1);
    let top = panel
        .groups
        .iter()
        .enumerate()
        .flat_map(|(g, (_, v))| {
            v.iter().enumerate().map(move |(i, &v)| {
                let e = panel
                    .errors
                    .as_ref()
                    .and_then(|e| e.get(g)?.get(i).copied())
                    .unwrap_or(0.0);
                v + e.max(0.0)
            })
        })
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    // At least three groups' room, so that one group's bars keep a bar's width.
    let pad = (3.0 - n as f64).max(0.0) / 2.0;
    // Room above the tallest bar for its value (the key is beside the plot, not in it).
    let y_max = if top <= 1.0 && top > 0.3 {
        1.1
    } else {
        (top * 1.15).max(0.01)
    };
    let mut chart = ChartBuilder::on(&plot)
        .caption(panel.title.clone(), text(15.0))
        .margin_right(10)
        .x_label_area_size(30)
        .y_label_area_size(56)
        .build_cartesian_2d(-pad..n as f64 + pad, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(LIGHT.mix(0.5))
        .label_style(text(12.0))
        .axis_desc_style(text(12.0))
        .y_desc(panel.y_label.clone())
        .y_labels(6)
        .x_labels(0)
        .y_label_formatter(&|v| format_tick(*v))
        .draw()
        .map_err(err)?;
    // Group names under the axis, centred on their group.
    chart
        .draw_series(panel.groups.iter().enumerate().map(|(g, (name, _))| {
            EmptyElement::at((g as f64 + 0.5, 0.0))
                + Text::new(
                    name.clone(),
                    (0, 8),
                    text(12.0).pos(Pos::new(HPos::Center, VPos::Top)),
                )
        }))
        .map_err(err)?;
    let width = 0.8 / k as f64;
    for (g, (_, values)) in panel.groups.iter().enumerate() {
        for (i, &v) in values.iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let x0 = g as f64 + 0.1 + i as f64 * width;
            let x1 = x0 + width * 0.92;
            let style = colour(i).filled();
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x1, v.max(0.0))],
                    style,
                )))
                .map_err(err)?;
            let e = panel
                .errors
                .as_ref()
                .and_then(|e| e.get(g)?.get(i).copied())
                .filter(|e| e.is_finite() && *e > 0.0);
            let xm = (x0 + x1) / 2.0;
            if let Some(e) = e {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(xm, (v - e).max(0.0)), (xm, v + e)],
                        BLACK.stroke_width(1),
                    )))
                    .map_err(err)?;
            }
            chart
                .draw_series(std::iter::once(Text::new(
                    format_value(v),
                    (xm, v.max(0.0) + e.unwrap_or(0.0) + y_max * 0.01),
                    text(11.0).pos(Pos::new(HPos::Center, VPos::Bottom)),
                )))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// The legend of the series labelled so far, in the upper right corner.
fn legend<'a, 'b, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<X, Y>>,
) -> std::result::Result<(), String>
where
    'b: 'a,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(text(12.0))
        .background_style(WHITE.mix(0.9))
        .border_style(LIGHT)
        .draw()
        .map_err(err)
}

/// One precision–recall panel: the 101-point interpolated precision per class and over all
/// classes, with their AP.
#[derive(Debug, Clone)]
pub struct PrPanel {
    /// Title above the panel.
    pub title: String,
    /// `(class name, AP, precision at recall 0, 0.01, …, 1)` of each class with ground truth.
    pub classes: Vec<(String, f64, Vec<f64>)>,
    /// The mean over classes: `(AP, precision per recall threshold)`.
    pub mean: Option<(f64, Vec<f64>)>,
}

/// Precision–recall panels side by side.
pub fn write_pr_curves(path: &Path, caption: &str, panels: &[PrPanel]) -> Result<()> {
    let (pw, ph) = (480u32, 420u32);
    let size = (pw * panels.len().max(1) as u32, ph + 30);
    write(path, size, |root| {
        let (head, body) = root.split_vertically(30);
        head.draw(&Text::new(caption.to_string(), (8, 8), text(15.0)))
            .map_err(err)?;
        let areas = body.split_evenly((1, panels.len().max(1)));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            let area = area.margin(4, 4, 4, 4);
            let Some((mean_ap, mean)) = &panel.mean else {
                note(
                    &area,
                    &panel.title,
                    "no ground truth: no class of this evaluation has a labelled instance",
                )?;
                continue;
            };
            let mut chart = ChartBuilder::on(&area)
                .caption(panel.title.clone(), text(15.0))
                .margin_right(12)
                .x_label_area_size(34)
                .y_label_area_size(46)
                .build_cartesian_2d(0.0..1.0, 0.0..1.05)
                .map_err(err)?;
            chart
                .configure_mesh()
                .light_line_style(LIGHT.mix(0.5))
                .label_style(text(11.0))
                .axis_desc_style(text(12.0))
                .x_desc("recall")
                .y_desc("precision")
                .x_label_formatter(&|v| format_tick(*v))
                .y_label_formatter(&|v| format_tick(*v))
                .draw()
                .map_err(err)?;
            let curve = |p: &[f64]| -> Vec<(f64, f64)> {
                let n = p.len().max(2) - 1;
                p.iter()
                    .enumerate()
                    .map(|(r, &v)| (r as f64 / n as f64, v.max(0.0)))
                    .collect()
            };
            let named = panel.classes.len() > 1 && panel.classes.len() <= 8;
            for (i, (name, ap, p)) in panel.classes.iter().enumerate() {
                if panel.classes.len() == 1 {
                    break;
                }
                let style = if named {
                    colour(i).stroke_width(1)
                } else {
                    GREY.mix(0.6).stroke_width(1)
                };
                let series = chart
                    .draw_series(LineSeries::new(curve(p), style))
                    .map_err(err)?;
                if named {
                    series
                        .label(format!("{name} {ap:.3}"))
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 14, y)], colour(i).stroke_width(2))
                        });
                } else if i == 0 {
                    series
                        .label(format!("each of {} classes", panel.classes.len()))
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], GREY));
                }
            }
            chart
                .draw_series(LineSeries::new(curve(mean), BLACK.stroke_width(3)))
                .map_err(err)?
                .label(match &panel.classes[..] {
                    [(name, _, _)] => format!("{name} {mean_ap:.3}"),
                    _ => format!("all classes {mean_ap:.3}"),
                })
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], BLACK.stroke_width(3))
                });
            legend(&mut chart)?;
        }
        Ok(())
    })
}

/// A confusion matrix normalised by true class (each row sums to 1): rows are true classes,
/// columns predicted ones; `counts` is row-major, `classes.len()` squared.
pub fn write_confusion(path: &Path, title: &str, classes: &[String], counts: &[u64]) -> Result<()> {
    let n = classes.len();
    let longest = classes.iter().map(|c| c.chars().count()).max().unwrap_or(1) as u32;
    let label_w = longest * 8 + 14;
    let cell = if n <= 12 {
        (longest * 8 + 10).clamp(44, 96)
    } else {
        (720 / n as u32).max(8)
    };
    let side = cell * n as u32;
    let rotated = n > 12;
    let bottom = if rotated { label_w + 30 } else { 54 };
    // Wide enough for the title (about 9 px per character at 15 px).
    let size = (
        (label_w + side + 40).max(title.chars().count() as u32 * 9 + 24),
        side + bottom + 40,
    );
    let names: Vec<String> = classes.to_vec();
    let last = (n as u32).saturating_sub(1);
    write(path, size, |root| {
        if n == 0 {
            return note(root, title, "no class");
        }
        let mut chart = ChartBuilder::on(root)
            .caption(title, text(15.0))
            .margin(8)
            .x_label_area_size(bottom - 10)
            .y_label_area_size(label_w)
            // Integer ranges are closed in plotters: 0..=n-1 is n segments.
            .build_cartesian_2d((0..last).into_segmented(), (0..last).into_segmented())
            .map_err(err)?;
        let name_of = |v: &SegmentValue<u32>, flip: bool| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                let i = if flip {
                    (n as u32).saturating_sub(1 + i)
                } else {
                    *i
                };
                let name = names.get(i as usize).cloned().unwrap_or_default();
                if rotated && !flip {
                    // plotters centres a rotated label on its tick: as many spaces before
                    // the name (the font is monospaced) put the name below the axis.
                    format!("{}{name}", " ".repeat(name.chars().count()))
                } else {
                    name
                }
            }
            SegmentValue::Last => String::new(),
        };
        let x_style = if rotated {
            text(11.0).transform(FontTransform::Rotate90)
        } else {
            text(12.0)
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(n)
            .y_labels(n)
            .x_label_style(x_style)
            .y_label_style(text(if rotated { 11.0 } else { 12.0 }))
            .axis_desc_style(text(12.0))
            .x_desc("predicted")
            .y_desc("true")
            .x_label_formatter(&|v| name_of(v, false))
            .y_label_formatter(&|v| name_of(v, true))
            .draw()
            .map_err(err)?;
        for t in 0..n {
            let row = &counts[t * n..(t + 1) * n];
            let total: u64 = row.iter().sum();
            let y = (n - 1 - t) as u32;
            for (p, &c) in row.iter().enumerate() {
                let share = if total > 0 {
                    c as f64 / total as f64
                } else {
                    f64::NAN
                };
                let fill = if share.is_finite() {
                    let s = share.clamp(0.0, 1.0);
                    RGBColor(
                        (255.0 - 225.0 * s) as u8,
                        (255.0 - 165.0 * s) as u8,
                        (255.0 - 55.0 * s) as u8,
                    )
                } else {
                    RGBColor(240, 240, 240)
                };
                let x = p as u32;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [
                            (SegmentValue::Exact(x), SegmentValue::Exact(y)),
                            (SegmentValue::Exact(x + 1), SegmentValue::Exact(y + 1)),
                        ],
                        fill.filled(),
                    )))
                    .map_err(err)?;
                if n <= 12 {
                    let label = if share.is_finite() {
                        format!("{share:.2}")
                    } else {
                        "–".into()
                    };
                    let colour = if share > 0.6 { WHITE } else { BLACK };
                    chart
                        .draw_series(std::iter::once(Text::new(
                            label,
                            (SegmentValue::CenterOf(x), SegmentValue::CenterOf(y)),
                            text(12.0)
                                .color(&colour)
                                .pos(Pos::new(HPos::Center, VPos::Center)),
                        )))
                        .map_err(err)?;
                }
            }
        }
        Ok(())
    })
}

/// The coordinate type of a plain f64 axis, for callers that build their own charts.
pub type Linear = RangedCoordf64;

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mustard-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn pixels(path: &Path) -> RgbImage {
        image::open(path).unwrap().to_rgb8()
    }

    fn has(img: &RgbImage, c: RGBColor) -> bool {
        img.pixels().any(|p| p.0 == [c.0, c.1, c.2])
    }

    #[test]
    fn smoothing_keeps_a_constant_and_pulls_an_outlier_in() {
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 2.0)).collect();
        for (a, b) in smooth(&flat).iter().zip(&flat) {
            assert!((a.1 - b.1).abs() < 1e-12);
        }
        let mut spike = flat.clone();
        spike[5].1 = 12.0;
        let s = smooth(&spike);
        assert!(s[5].1 < 12.0 && s[5].1 > 2.0, "{s:?}");
        assert_eq!(format_tick(0.5), "0.5");
        assert_eq!(format_tick(0.25), "0.25");
        assert_eq!(format_tick(1.0), "1");
        assert_eq!(format_tick(2.5), "2.5");
        assert_eq!(format_tick(-0.04), "-0.04");
        assert_eq!(format_tick(0.0125), "0.013");
        assert_eq!(format_tick(250.0), "250");
        assert_eq!(format_tick(2e-4), "2e-4");
        assert_eq!(format_tick(3.0), "3");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(0.011), "0.011");
        assert_eq!(format_value(0.734), "0.73");
    }

    #[test]
    fn every_chart_is_written_at_its_size_with_its_colours() {
        let path = temp("panels.png");
        let panel = |title: &str, points: Vec<(f64, f64)>| Panel {
            title: title.into(),
            x_label: "epoch".into(),
            points,
            empty: "not validated".into(),
            log: true,
            smooth: true,
        };
        write_panels(
            &path,
            "run: points are epochs",
            &[
                panel(
                    "loss",
                    (1..=10).map(|e| (e as f64, 10.0 / e as f64)).collect(),
                ),
                panel("validation", vec![(1.0, f64::NAN)]),
            ],
            2,
        )
        .unwrap();
        let img = pixels(&path);
        assert_eq!(img.dimensions(), (680, 260));
        assert!(has(&img, colour(4)), "the trend");

        let path = temp("bars.png");
        let bars = Bars {
            title: "bars".into(),
            y_label: "metric".into(),
            legend: vec!["a".into(), "b".into()],
            groups: vec![
                ("one".into(), vec![0.5, f64::NAN]),
                ("two".into(), vec![0.2, 0.9]),
            ],
            errors: Some(vec![vec![0.05, f64::NAN], vec![0.0, 0.1]]),
            empty: String::new(),
        };
        write_bars(&path, &[bars]).unwrap();
        let img = pixels(&path);
        assert_eq!(img.dimensions(), (560, 330));
        assert!(has(&img, colour(0)) && has(&img, colour(1)));

        // A crowded key (seven long entries, bars up to 1.0) sits right of the plot: in its
        // strip each colour is only its swatch, so no bar and no bar's value lies under it.
        let legend: Vec<String> = (0..7).map(|i| format!("teacher number {i}")).collect();
        let crowded = Bars {
            title: "crowded".into(),
            y_label: "metric".into(),
            legend: legend.clone(),
            groups: (0..4)
                .map(|g| {
                    (
                        format!("group {g}"),
                        (0..7).map(|i| 0.9 + 0.01 * (g + i) as f64).collect(),
                    )
                })
                .collect(),
            errors: None,
            empty: String::new(),
        };
        let key = key_width(&crowded);
        assert_eq!(
            key,
            16 * 15 / 2 + 34,
            "\"teacher number 0\" is 16 characters"
        );
        write_bars(&path, &[crowded]).unwrap();
        let img = pixels(&path);
        assert_eq!(img.dimensions(), (4 * (7 * 38 + 20) + 90 + key, 330));
        let x0 = img.width() - 6 - key;
        for i in 0..7u32 {
            let c = colour(i as usize);
            let (mut seen, y) = (0, 6 + 40 + 18 * i);
            for (x, py, p) in img.enumerate_pixels() {
                if x >= x0 && p.0 == [c.0, c.1, c.2] {
                    assert!(
                        (x0 + 6..x0 + 18).contains(&x) && (y - 5..y + 5).contains(&py),
                        "colour {i} at ({x}, {py})"
                    );
                    seen += 1;
                }
            }
            assert_eq!(seen, 12 * 10, "swatch {i}");
        }

        let path = temp("pr.png");
        let curve: Vec<f64> = (0..=100).map(|r| 1.0 - r as f64 / 200.0).collect();
        write_pr_curves(
            &path,
            "PR",
            &[
                PrPanel {
                    title: "IoU 0.5".into(),
                    classes: vec![
                        ("a".into(), 0.7, curve.clone()),
                        ("b".into(), 0.8, curve.clone()),
                    ],
                    mean: Some((0.75, curve)),
                },
                PrPanel {
                    title: "IoU 0.5:0.95".into(),
                    classes: Vec::new(),
                    mean: None,
                },
            ],
        )
        .unwrap();
        let img = pixels(&path);
        assert_eq!(img.dimensions(), (960, 450));
        assert!(has(&img, colour(0)) && has(&img, colour(1)));

        let path = temp("confusion.png");
        let names: Vec<String> = ["background", "shape", "person"].map(String::from).to_vec();
        write_confusion(&path, "confusion", &names, &[8, 2, 0, 1, 9, 0, 0, 0, 0]).unwrap();
        let img = pixels(&path);
        assert_eq!(img.dimensions(), (404, 364));
        // The 0.9 cell: 255 − 225·0.9, 255 − 165·0.9, 255 − 55·0.9.
        assert!(img.pixels().any(|p| p.0 == [52, 106, 205]));
        if std::env::var_os("MUSTARD_KEEP_CHARTS").is_none() {
            let _ = std::fs::remove_dir_all(path.parent().unwrap());
        }
    }
}

#[cfg(test)]
mod wide {
    use super::*;

    #[test]
    fn many_classes_get_rotated_labels_and_no_cell_text() {
        let dir = std::env::temp_dir().join(format!("mustard-charts-wide-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("confusion.png");
        let names: Vec<String> = (0..20).map(|i| format!("class number {i}")).collect();
        let counts: Vec<u64> = (0..400)
            .map(|i| if i % 21 == 0 { 9 } else { (i % 3) as u64 })
            .collect();
        write_confusion(&path, "confusion of twenty classes", &names, &counts).unwrap();
        let (w, h) = image::image_dimensions(&path).unwrap();
        assert_eq!((w, h), (894, 924));
        if std::env::var_os("MUSTARD_KEEP_CHARTS").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
