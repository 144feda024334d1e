//! The embedded default dataset: procedurally drawn scenes that label every task exactly.
//!
//! Each scene has a textured background plane receding from 4 m (bottom) to 8 m (top) and
//! 1–`max_objects` objects, each at its own depth between 1.2 and 3.6 m, drawn far to near so
//! nearer objects occlude farther ones. Objects are circles, squares and triangles (random
//! colours, sizes and rotations, size shrinking with depth) and stick-figure people with the 17
//! COCO joints. From the drawing come, exactly:
//!
//! - instance masks of the visible part (compressed RLE), their boxes and areas;
//! - person keypoints: `v = 2` where the joint is visible, `1` where a nearer object covers it,
//!   `0` (at 0, 0) outside the image;
//! - a semantic label map (0 background, `i + 1` for category `i`), a depth map in millimetres;
//! - an image-level label: the category of the scene's main object, which is drawn nearest,
//!   largest and near the centre (as the object an ImageNet photo is named after).
//!
//! Everything is a function of the seed and the image index.

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, Rgb, RgbImage};
use mustard_core::rng::Rng;
use mustard_eval::rle::Rle;
use rayon::prelude::*;

use crate::coco::{
    self, Annotation, Category, CocoFile, ImageRecord, Segmentation, COCO_KEYPOINTS, COCO_SKELETON,
};
use crate::imageio::{self, DepthMap};
use crate::{Error, Result, Task};

/// Names of the categories, in order (ids 1..=4).
pub const CATEGORIES: [&str; 4] = ["circle", "square", "triangle", "person"];
const PERSON: usize = 3;
/// Depth map unit: millimetres.
pub const DEPTH_SCALE: f64 = 0.001;

/// What to generate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SynthConfig {
    /// Image side in pixels.
    pub size: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Most objects per scene.
    pub max_objects: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            size: 256,
            seed: 0,
            max_objects: 6,
        }
    }
}

/// One annotated object of a scene.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneObject {
    /// Category index into [`CATEGORIES`].
    pub class: usize,
    /// Visible mask.
    pub mask: Rle,
    /// `[x, y, w, h]` of the visible mask.
    pub bbox: [f64; 4],
    /// Distance in metres.
    pub depth: f64,
    /// `[x, y, v] × 17` for people.
    pub keypoints: Option<Vec<f64>>,
}

/// A rendered scene with every label.
#[derive(Debug, Clone)]
pub struct Scene {
    /// Pixels.
    pub image: RgbImage,
    /// Semantic train ids.
    pub semantic: GrayImage,
    /// Depth in metres.
    pub depth: DepthMap,
    /// Visible objects, far to near.
    pub objects: Vec<SceneObject>,
    /// The category of the main (nearest, largest, central) object (index into [`CATEGORIES`]).
    pub label: u32,
    /// Whether the background is the family's second texture: a checkerboard (else stripes);
    /// downstream, dots (else waves).
    pub checker: bool,
    /// The main object's colour (RGB).
    pub main_colour: [f64; 3],
}

impl Scene {
    /// The segmentation map in the MuST splits' taxonomy ([`SEG_CLASSES`]): the background by
    /// its texture (stuff classes), the shapes merged into one class, people.
    pub fn stuff_map(&self) -> GrayImage {
        let background = u8::from(self.checker);
        GrayImage::from_fn(self.semantic.width(), self.semantic.height(), |x, y| {
            Luma([match self.semantic.get_pixel(x, y).0[0] as usize {
                0 => background,
                c if c == PERSON + 1 => 3,
                _ => 2,
            }])
        })
    }

    /// The segmentation map of the downstream family ([`DOWNSTREAM_SEG_CLASSES`]): the
    /// background by its texture, each shape its own class.
    pub fn downstream_map(&self) -> GrayImage {
        let background = u8::from(self.checker);
        GrayImage::from_fn(self.semantic.width(), self.semantic.height(), |x, y| {
            Luma([match self.semantic.get_pixel(x, y).0[0] {
                0 => background,
                c => c + 1,
            }])
        })
    }

    /// The image-level label in the MuST splits' taxonomy ([`COLOUR_LABELS`]): the strongest
    /// channel of the main object's colour.
    pub fn colour_label(&self) -> u32 {
        let c = self.main_colour;
        (0..3).max_by(|&a, &b| c[a].total_cmp(&c[b])).unwrap_or(0) as u32
    }
}

/// Segmentation classes of the MuST splits: two stuff classes (the background's texture) and
/// two merged object classes.
pub const SEG_CLASSES: [&str; 4] = ["stripes", "checks", "shape", "person"];
/// Image-level classes of the MuST splits: the main object's strongest colour channel.
pub const COLOUR_LABELS: [&str; 3] = ["red", "green", "blue"];
/// Detection categories of the MuST splits: the shapes, not people.
pub const SHAPES: usize = 3;

type Polygon = Vec<f64>;

fn regular_polygon(cx: f64, cy: f64, r: f64, n: usize, angle: f64) -> Polygon {
    (0..n)
        .flat_map(|k| {
            let a = angle + 2.0 * std::f64::consts::PI * k as f64 / n as f64;
            [cx + r * a.cos(), cy + r * a.sin()]
        })
        .collect()
}

/// A thick segment from `a` to `b` as a quadrilateral.
fn limb(a: (f64, f64), b: (f64, f64), half_width: f64) -> Polygon {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len = (dx * dx + dy * dy).sqrt().max(1e-6);
    let (nx, ny) = (-dy / len * half_width, dx / len * half_width);
    vec![
        a.0 + nx,
        a.1 + ny,
        b.0 + nx,
        b.1 + ny,
        b.0 - nx,
        b.1 - ny,
        a.0 - nx,
        a.1 - ny,
    ]
}

/// The 17 joints of a stick figure of height `h` standing at `(cx, top)`, in COCO order.
fn person_joints(cx: f64, top: f64, h: f64, rng: &mut Rng) -> Vec<(f64, f64)> {
    let at = |x: f64, y: f64| (cx + x * h, top + y * h);
    let swing = |rng: &mut Rng, base: f64| base + rng.range(-0.6, 0.6);
    let (sl, sr) = (at(-0.13, 0.2), at(0.13, 0.2));
    let (hl, hr) = (at(-0.08, 0.52), at(0.08, 0.52));
    // Arms and legs: two segments each, at random angles (radians from straight down).
    let chain = |rng: &mut Rng, start: (f64, f64), base: f64, len: f64| {
        let a1 = swing(rng, base);
        let mid = (start.0 + len * a1.sin() * h, start.1 + len * a1.cos() * h);
        let a2 = swing(rng, a1);
        (
            mid,
            (mid.0 + len * a2.sin() * h, mid.1 + len * a2.cos() * h),
        )
    };
    let (el, wl) = chain(rng, sl, -0.4, 0.16);
    let (er, wr) = chain(rng, sr, 0.4, 0.16);
    let (kl, al) = chain(rng, hl, -0.1, 0.23);
    let (kr, ar) = chain(rng, hr, 0.1, 0.23);
    vec![
        at(0.0, 0.07),
        at(-0.03, 0.05),
        at(0.03, 0.05),
        at(-0.06, 0.07),
        at(0.06, 0.07),
        sl,
        sr,
        el,
        er,
        wl,
        wr,
        hl,
        hr,
        kl,
        kr,
        al,
        ar,
    ]
}

/// The body of a stick figure: head, torso, limbs and joint disks (so every joint is inside).
fn person_polygons(joints: &[(f64, f64)], h: f64) -> Vec<Polygon> {
    let w = 0.035 * h;
    let mut polys = vec![regular_polygon(
        joints[0].0,
        joints[0].1 - 0.01 * h,
        0.085 * h,
        16,
        0.0,
    )];
    let (sl, sr, hl, hr) = (joints[5], joints[6], joints[11], joints[12]);
    polys.push(vec![sl.0, sl.1, sr.0, sr.1, hr.0, hr.1, hl.0, hl.1]);
    for [a, b] in [
        [5, 7],
        [7, 9],
        [6, 8],
        [8, 10],
        [11, 13],
        [13, 15],
        [12, 14],
        [14, 16],
    ] {
        polys.push(limb(joints[a], joints[b], w));
    }
    for &(x, y) in &joints[5..] {
        polys.push(regular_polygon(x, y, w * 1.2, 8, 0.0));
    }
    polys
}

fn random_colour(rng: &mut Rng) -> [f64; 3] {
    [
        rng.range(30.0, 230.0),
        rng.range(30.0, 230.0),
        rng.range(30.0, 230.0),
    ]
}

/// An object colour at least [`MIN_CONTRAST`] away (Euclidean RGB) from the background's.
fn object_colour(rng: &mut Rng, background: [f64; 3]) -> [f64; 3] {
    let mut colour = random_colour(rng);
    for _ in 0..32 {
        let d2: f64 = (0..3).map(|c| (colour[c] - background[c]).powi(2)).sum();
        if d2 >= MIN_CONTRAST * MIN_CONTRAST {
            break;
        }
        colour = random_colour(rng);
    }
    colour
}

/// Least RGB distance between an object's colour and the background's.
const MIN_CONTRAST: f64 = 90.0;

/// Which scenes: the main family (teachers, student, MCN) or the downstream family that no
/// teacher or student sees, for the transfer test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Circles, squares, triangles and people over stripes or checkerboards.
    Main,
    /// Pentagons, stars and crosses ([`DOWNSTREAM_CATEGORIES`]), no people, over waves or
    /// dots: new objects, new backgrounds, new image-level labels.
    Downstream,
}

/// Names of the downstream family's categories (ids 1..=3).
pub const DOWNSTREAM_CATEGORIES: [&str; 3] = ["pentagon", "star", "cross"];
/// Segmentation classes of the downstream family: two stuff classes (the background's texture)
/// and each shape.
pub const DOWNSTREAM_SEG_CLASSES: [&str; 5] = ["waves", "dots", "pentagon", "star", "cross"];

/// A star with five points.
fn star(cx: f64, cy: f64, r: f64, angle: f64) -> Polygon {
    (0..10)
        .flat_map(|k| {
            let a = angle + std::f64::consts::PI * k as f64 / 5.0;
            let rk = if k % 2 == 0 { r } else { 0.45 * r };
            [cx + rk * a.cos(), cy + rk * a.sin()]
        })
        .collect()
}

/// A plus-shaped cross whose arms are a third of its width.
fn cross(cx: f64, cy: f64, r: f64, angle: f64) -> Polygon {
    let t = r / 3.0;
    let corners = [
        (t, r),
        (t, t),
        (r, t),
        (r, -t),
        (t, -t),
        (t, -r),
        (-t, -r),
        (-t, -t),
        (-r, -t),
        (-r, t),
        (-t, t),
        (-t, r),
    ];
    let (sin, cos) = angle.sin_cos();
    corners
        .iter()
        .flat_map(|&(x, y)| [cx + x * cos - y * sin, cy + x * sin + y * cos])
        .collect()
}

/// Renders scene `index` of `config`.
pub fn render(config: &SynthConfig, index: u64) -> Result<Scene> {
    render_family(config, index, Family::Main)
}

/// Renders scene `index` of `config` in `family` (the downstream family draws from its own
/// random stream, so its scenes share nothing with the main ones).
pub fn render_family(config: &SynthConfig, index: u64, family: Family) -> Result<Scene> {
    let downstream = family == Family::Downstream;
    let s = config.size;
    if s < 32 {
        return Err(Error::config(
            "synth size",
            format!("{s} is smaller than 32 pixels"),
        ));
    }
    let sf = s as f64;
    let mut rng = if downstream {
        Rng::derive(config.seed, &[index, 1])
    } else {
        Rng::derive(config.seed, &[index])
    };
    // Background: two nearby colours (a low-contrast texture, so that the objects, not the
    // pattern, are the salient edges), a stripe or checker texture, and a receding depth plane.
    let bg_a = random_colour(&mut rng);
    let bg_b = bg_a.map(|c| (c + rng.range(-35.0, 35.0)).clamp(0.0, 255.0));
    let period = rng.range(6.0, 24.0);
    let checker = rng.chance(0.5);
    let angle = rng.range(0.0, std::f64::consts::PI);
    let mut image = RgbImage::from_fn(s, s, |x, y| {
        let (u, v) = (
            x as f64 * angle.cos() + y as f64 * angle.sin(),
            -(x as f64) * angle.sin() + y as f64 * angle.cos(),
        );
        let t = match (downstream, checker) {
            (false, true) => {
                (((u / period).floor() + (v / period).floor()) as i64).rem_euclid(2) as f64
            }
            (false, false) => 0.5 + 0.5 * (u / period * std::f64::consts::PI).sin(),
            // Dots: a grid of discs.
            (true, true) => {
                let (fu, fv) = (
                    (u / period).fract().abs() - 0.5,
                    (v / period).fract().abs() - 0.5,
                );
                f64::from(fu * fu + fv * fv < 0.09)
            }
            // Waves: a product of two crossed sines.
            (true, false) => {
                let w = (u / period * std::f64::consts::PI).sin() * (v / period * 0.7).sin();
                0.5 + 0.5 * w
            }
        };
        Rgb([0, 1, 2].map(|c| (bg_a[c] * t + bg_b[c] * (1.0 - t)) as u8))
    });
    let mut depth = DepthMap::from_fn(s, s, |_, y| {
        Luma([(8.0 - 4.0 * (y as f64 + 0.5) / sf) as f32])
    });
    let mut owner: Vec<Option<usize>> = vec![None; (s * s) as usize];

    let count = 1 + rng.below(config.max_objects.max(1));
    struct Drawn {
        class: usize,
        depth: f64,
        polygons: Vec<Polygon>,
        joints: Option<Vec<(f64, f64)>>,
        colour: [f64; 3],
    }
    // Object 0 is the scene's main object (its category is the image-level label): nearest,
    // largest and central; the others stand behind it.
    let mut drawn: Vec<Drawn> = (0..count)
        .map(|k| {
            let class = if downstream {
                rng.below(DOWNSTREAM_CATEGORIES.len())
            } else {
                rng.below(CATEGORIES.len())
            };
            let (z, extent, (cx, cy)) = if k == 0 {
                let z = rng.range(1.2, 1.5);
                let extent = sf * rng.range(0.24, 0.32) * 2.0 / z;
                (
                    z,
                    extent,
                    (rng.range(0.3, 0.7) * sf, rng.range(0.3, 0.7) * sf),
                )
            } else {
                let z = rng.range(1.6, 3.6);
                let extent = sf * rng.range(0.22, 0.42) * 2.0 / z;
                (
                    z,
                    extent,
                    (rng.range(0.1, 0.9) * sf, rng.range(0.1, 0.9) * sf),
                )
            };
            let turn = rng.range(0.0, std::f64::consts::TAU);
            let (polygons, joints) = match (downstream, class) {
                (true, 0) => (vec![regular_polygon(cx, cy, extent * 0.55, 5, turn)], None),
                (true, 1) => (vec![star(cx, cy, extent * 0.6, turn)], None),
                (true, _) => (vec![cross(cx, cy, extent * 0.5, turn)], None),
                (false, 0) => (vec![regular_polygon(cx, cy, extent / 2.0, 32, 0.0)], None),
                (false, 1) => (
                    vec![regular_polygon(
                        cx,
                        cy,
                        extent / 2.0 * std::f64::consts::SQRT_2,
                        4,
                        turn,
                    )],
                    None,
                ),
                (false, 2) => (vec![regular_polygon(cx, cy, extent * 0.6, 3, turn)], None),
                (false, _) => {
                    let h = extent * 1.6;
                    let joints = person_joints(cx, cy - h / 2.0, h, &mut rng);
                    (person_polygons(&joints, h), Some(joints))
                }
            };
            Drawn {
                class,
                depth: z,
                polygons,
                joints,
                colour: object_colour(&mut rng, bg_a),
            }
        })
        .collect();
    let label = drawn[0].class as u32;
    let main_colour = drawn[0].colour;
    drawn.sort_by(|a, b| b.depth.total_cmp(&a.depth));

    let mut semantic = GrayImage::new(s, s);
    for (k, d) in drawn.iter().enumerate() {
        let mask = Rle::from_polygons(&d.polygons, s, s)
            .map_err(|e| Error::config("synth", e.to_string()))?;
        let pixels = mask.decode_row_major();
        let shade = d.colour;
        for (i, &m) in pixels.iter().enumerate() {
            if m == 0 {
                continue;
            }
            let (x, y) = (i as u32 % s, i as u32 / s);
            // Light texture on objects: a gentle ripple so flat colour alone is not the cue.
            let ripple = 1.0 + 0.06 * ((x as f64 * 0.7 + y as f64 * 0.45 + k as f64).sin());
            image.put_pixel(
                x,
                y,
                Rgb(shade.map(|c| (c * ripple).clamp(0.0, 255.0) as u8)),
            );
            depth.put_pixel(x, y, Luma([d.depth as f32]));
            semantic.put_pixel(x, y, Luma([d.class as u8 + 1]));
            owner[i] = Some(k);
        }
    }
    let mut objects = Vec::new();
    for (k, d) in drawn.iter().enumerate() {
        let visible: Vec<u8> = owner.iter().map(|o| u8::from(*o == Some(k))).collect();
        let mask = Rle::encode_row_major(&visible, s, s)
            .map_err(|e| Error::config("synth", e.to_string()))?;
        let area = mask.area();
        if area == 0 {
            continue;
        }
        let keypoints = d.joints.as_ref().map(|joints| {
            joints
                .iter()
                .flat_map(|&(x, y)| {
                    if x < 0.0 || y < 0.0 || x >= sf || y >= sf {
                        return [0.0, 0.0, 0.0];
                    }
                    let i = (y as u32 * s + x as u32) as usize;
                    [x, y, if owner[i] == Some(k) { 2.0 } else { 1.0 }]
                })
                .collect()
        });
        objects.push(SceneObject {
            class: d.class,
            mask: mask.clone(),
            bbox: mask.to_bbox(),
            depth: d.depth,
            keypoints,
        });
    }
    Ok(Scene {
        image,
        semantic,
        depth,
        objects,
        label,
        checker,
        main_colour,
    })
}

/// Which images go where.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Splits {
    /// Images of each single-task labelled split (one split per task).
    pub per_task: usize,
    /// Images of the unlabelled split.
    pub unlabeled: usize,
    /// Images of the test split (one file per task, over the same images).
    pub test: usize,
}

/// The files `write` produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Dataset files by split name (`all`, `detection`, …, `unlabeled`, `test_detection`, …).
    pub files: Vec<(String, PathBuf)>,
    /// Images rendered.
    pub images: usize,
}

fn category(id: u64, name: &str, person: bool) -> Category {
    Category {
        id,
        name: name.to_string(),
        supercategory: Some(if person { "person" } else { "shape" }.into()),
        keypoints: person.then(|| COCO_KEYPOINTS.iter().map(|s| s.to_string()).collect()),
        skeleton: person.then(|| COCO_SKELETON.to_vec()),
    }
}

/// The categories of the all-task taxonomy ([`CATEGORIES`], ids 1–4, people with the 17 COCO
/// joints).
pub fn categories() -> Vec<Category> {
    CATEGORIES
        .iter()
        .enumerate()
        .map(|(i, name)| category(i as u64 + 1, name, i == PERSON))
        .collect()
}

/// One rendered image: its record in the all-task taxonomy, its objects, and its labels in the
/// MuST splits' taxonomies.
struct Rendered {
    record: ImageRecord,
    annotations: Vec<Annotation>,
    /// The image-level label of the split taxonomy: the main object's colour (main family) or
    /// category (downstream).
    split_label: u32,
}

fn render_one(
    out: &Path,
    config: &SynthConfig,
    i: usize,
    split: bool,
    family: Family,
) -> Result<Rendered> {
    let scene = render_family(config, i as u64, family)?;
    let id = i as u64 + 1;
    let name = format!("{id:06}.png");
    imageio::write_rgb(&out.join("images").join(&name), &scene.image)?;
    imageio::write_labels(&out.join("semantic").join(&name), &scene.semantic)?;
    if split {
        let map = match family {
            Family::Main => scene.stuff_map(),
            Family::Downstream => scene.downstream_map(),
        };
        imageio::write_labels(&out.join("stuff").join(&name), &map)?;
    }
    imageio::write_depth(&out.join("depth").join(&name), &scene.depth, DEPTH_SCALE)?;
    let record = ImageRecord {
        id,
        file_name: format!("images/{name}"),
        width: config.size,
        height: config.size,
        seg_file: Some(format!("semantic/{name}")),
        depth_file: Some(format!("depth/{name}")),
        depth_scale: Some(DEPTH_SCALE),
        label: Some(scene.label),
        tasks: Some(Task::ALL.to_vec()),
    };
    let annotations = scene
        .objects
        .iter()
        .enumerate()
        .map(|(k, o)| Annotation {
            id: id * 1000 + k as u64,
            image_id: id,
            category_id: o.class as u64 + 1,
            bbox: Some(o.bbox),
            area: Some(o.mask.area() as f64),
            iscrowd: 0,
            segmentation: Some(Segmentation::from_rle(&o.mask)),
            num_keypoints: o
                .keypoints
                .as_ref()
                .map(|k| k.chunks(3).filter(|j| j[2] > 0.0).count() as u32),
            keypoints: o.keypoints.clone(),
        })
        .collect();
    Ok(Rendered {
        record,
        annotations,
        split_label: match family {
            Family::Main => scene.colour_label(),
            Family::Downstream => scene.label,
        },
    })
}

/// Every label of every task, in the all-task taxonomy (`instances.json`).
fn all_tasks(images: &[Rendered]) -> CocoFile {
    CocoFile {
        categories: categories(),
        label_names: CATEGORIES.iter().map(|s| s.to_string()).collect(),
        images: images.iter().map(|r| r.record.clone()).collect(),
        annotations: images
            .iter()
            .flat_map(|r| r.annotations.iter().cloned())
            .collect(),
        ..Default::default()
    }
}

/// The labels of one task (`None`: none, the unlabelled split) in the MuST splits' taxonomy of
/// that task: detection of the shapes, people with keypoints, stuff-and-merged segmentation
/// ([`SEG_CLASSES`]), depth, and the main object's colour ([`COLOUR_LABELS`]).
fn one_task(images: &[Rendered], task: Option<Task>, family: Family) -> CocoFile {
    let mut file = CocoFile::default();
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match (family, task) {
        (Family::Main, Some(Task::Detection)) => file.categories = categories()[..SHAPES].to_vec(),
        (Family::Main, Some(Task::Pose)) => {
            file.categories = vec![category(1, CATEGORIES[PERSON], true)]
        }
        (Family::Main, Some(Task::Segmentation)) => file.seg_classes = names(&SEG_CLASSES),
        (Family::Main, Some(Task::Classification)) => file.label_names = names(&COLOUR_LABELS),
        (Family::Downstream, Some(Task::Detection)) => {
            file.categories = DOWNSTREAM_CATEGORIES
                .iter()
                .enumerate()
                .map(|(i, name)| category(i as u64 + 1, name, false))
                .collect()
        }
        (Family::Downstream, Some(Task::Segmentation)) => {
            file.seg_classes = names(&DOWNSTREAM_SEG_CLASSES)
        }
        (Family::Downstream, Some(Task::Classification)) => {
            file.label_names = names(&DOWNSTREAM_CATEGORIES)
        }
        _ => {}
    }
    for r in images {
        let mut record = ImageRecord {
            seg_file: None,
            depth_file: None,
            depth_scale: None,
            label: None,
            tasks: Some(task.into_iter().collect()),
            ..r.record.clone()
        };
        match task {
            Some(Task::Segmentation) => {
                record.seg_file = r
                    .record
                    .seg_file
                    .as_ref()
                    .map(|f| f.replace("semantic/", "stuff/"))
            }
            Some(Task::Depth) => {
                record.depth_file = r.record.depth_file.clone();
                record.depth_scale = r.record.depth_scale;
            }
            Some(Task::Classification) => record.label = Some(r.split_label),
            _ => {}
        }
        for a in &r.annotations {
            let person = family == Family::Main && a.category_id as usize == PERSON + 1;
            let keep = match task {
                Some(Task::Detection) => !person,
                Some(Task::Pose) => person,
                _ => false,
            };
            if keep {
                file.annotations.push(Annotation {
                    category_id: if person { 1 } else { a.category_id },
                    segmentation: None,
                    keypoints: a.keypoints.clone().filter(|_| person),
                    num_keypoints: a.num_keypoints.filter(|_| person),
                    ..a.clone()
                });
            }
        }
        file.images.push(record);
    }
    file
}

/// Every task's true labels in the MuST splits' taxonomies at once (`unlabeled_truth.json`): the
/// shapes (1–3) and people with keypoints (4), the stuff-and-merged segmentation, depth and the
/// colour label — what perfect teachers would say of the unlabelled images, for measuring the
/// pseudo-labels and a student trained on the truth.
fn must_truth(images: &[Rendered]) -> CocoFile {
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    CocoFile {
        categories: categories(),
        seg_classes: names(&SEG_CLASSES),
        label_names: names(&COLOUR_LABELS),
        images: images
            .iter()
            .map(|r| ImageRecord {
                seg_file: r
                    .record
                    .seg_file
                    .as_ref()
                    .map(|f| f.replace("semantic/", "stuff/")),
                label: Some(r.split_label),
                ..r.record.clone()
            })
            .collect(),
        annotations: images
            .iter()
            .flat_map(|r| r.annotations.iter())
            .map(|a| Annotation {
                segmentation: None,
                ..a.clone()
            })
            .collect(),
        ..Default::default()
    }
}

/// Renders `images` scenes into `out` (`images/`, `semantic/`, `depth/`, in parallel) and writes
/// `instances.json` labelling every task. With `splits`, the images are instead divided as MuST
/// uses them, each task in its own label space (the taxonomies of `docs/SYNTHETIC.md`): one
/// single-task split per task (`train_<task>.json`), `unlabeled.json` (images only) with its
/// labels in every taxonomy beside it (`unlabeled_truth.json`, never trained on by `must`) and
/// one test file per task over the same held-out images (`test_<task>.json`); `images` is then
/// ignored.
pub fn write(
    out: &Path,
    config: &SynthConfig,
    images: usize,
    splits: Option<&Splits>,
) -> Result<Written> {
    let total = match splits {
        Some(s) => s.per_task * Task::ALL.len() + s.unlabeled + s.test,
        None => images,
    };
    if total == 0 {
        return Err(Error::config("synth", "nothing to generate: 0 images"));
    }
    let mut dirs = vec!["images", "semantic", "depth"];
    if splits.is_some() {
        dirs.push("stuff");
    }
    for dir in dirs {
        std::fs::create_dir_all(out.join(dir)).map_err(|e| Error::io(out.join(dir), e))?;
    }
    let rendered: Vec<Rendered> = (0..total)
        .into_par_iter()
        .map(|i| render_one(out, config, i, splits.is_some(), Family::Main))
        .collect::<Result<_>>()?;
    let mut files = Vec::new();
    let mut save = |name: String, file: CocoFile| -> Result<()> {
        let path = out.join(format!("{name}.json"));
        coco::write(&file, &path)?;
        files.push((name.trim_start_matches("train_").to_string(), path));
        Ok(())
    };
    match splits {
        None => save("instances".into(), all_tasks(&rendered))?,
        Some(s) => {
            let mut start = 0;
            for task in Task::ALL {
                let images = &rendered[start..start + s.per_task];
                save(
                    format!("train_{task}"),
                    one_task(images, Some(task), Family::Main),
                )?;
                start += s.per_task;
            }
            let unlabeled = &rendered[start..start + s.unlabeled];
            save("unlabeled".into(), one_task(unlabeled, None, Family::Main))?;
            save("unlabeled_truth".into(), must_truth(unlabeled))?;
            start += s.unlabeled;
            for task in Task::ALL {
                let images = &rendered[start..start + s.test];
                save(
                    format!("test_{task}"),
                    one_task(images, Some(task), Family::Main),
                )?;
            }
        }
    }
    Ok(Written {
        files,
        images: total,
    })
}

/// The tasks of the downstream family.
pub const DOWNSTREAM_TASKS: [Task; 4] = [
    Task::Detection,
    Task::Segmentation,
    Task::Depth,
    Task::Classification,
];

/// Renders the downstream family ([`Family::Downstream`]: new shapes, backgrounds and
/// image-level labels) into `out`: for each of [`DOWNSTREAM_TASKS`], a small labelled
/// `train_<task>.json` of `train` images and `test_<task>.json` of `test` held-out images, all
/// tasks over the same images.
pub fn write_downstream(
    out: &Path,
    config: &SynthConfig,
    train: usize,
    test: usize,
) -> Result<Written> {
    if train == 0 || test == 0 {
        return Err(Error::config(
            "synth downstream",
            "the train and test splits need at least one image each",
        ));
    }
    for dir in ["images", "semantic", "depth", "stuff"] {
        std::fs::create_dir_all(out.join(dir)).map_err(|e| Error::io(out.join(dir), e))?;
    }
    let rendered: Vec<Rendered> = (0..train + test)
        .into_par_iter()
        .map(|i| render_one(out, config, i, true, Family::Downstream))
        .collect::<Result<_>>()?;
    let mut files = Vec::new();
    for (split, images) in [("train", &rendered[..train]), ("test", &rendered[train..])] {
        for task in DOWNSTREAM_TASKS {
            let name = format!("{split}_{task}");
            let path = out.join(format!("{name}.json"));
            coco::write(&one_task(images, Some(task), Family::Downstream), &path)?;
            files.push((name, path));
        }
    }
    Ok(Written {
        files,
        images: train + test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_and_labels_agree_with_the_drawing() {
        let config = SynthConfig {
            size: 96,
            seed: 5,
            max_objects: 5,
        };
        let a = render(&config, 3).unwrap();
        let b = render(&config, 3).unwrap();
        assert_eq!(a.image, b.image);
        assert_eq!(a.objects, b.objects);
        assert_ne!(render(&config, 4).unwrap().image, a.image);
        let mut people = 0;
        let mut labels = [0; CATEGORIES.len()];
        for index in 0..40 {
            let scene = render(&config, index).unwrap();
            let sem = scene.semantic.as_raw();
            for o in &scene.objects {
                // The visible mask is exactly the pixels of the semantic map with its class
                // owned by it: every mask pixel carries the object's class.
                let pixels = o.mask.decode_row_major();
                assert!(pixels
                    .iter()
                    .zip(sem)
                    .all(|(&m, &c)| m == 0 || c as usize == o.class + 1));
                assert_eq!(o.bbox, o.mask.to_bbox());
                if let Some(k) = &o.keypoints {
                    people += 1;
                    assert_eq!(k.len(), 51);
                    for j in k.chunks(3) {
                        if j[2] == 2.0 {
                            let i = (j[1] as u32 * 96 + j[0] as u32) as usize;
                            assert_eq!(pixels[i], 1, "a visible joint lies on the visible mask");
                        }
                    }
                }
            }
            let depth = scene.depth.as_raw();
            assert!(depth.iter().all(|&d| (1.2..=8.0).contains(&d)));
            // The label names the main object: the nearest, in front of every other one.
            let main = scene.objects.last().unwrap();
            assert_eq!(main.class as u32, scene.label);
            assert!(main.depth < 1.5);
            assert!(scene.objects[..scene.objects.len() - 1]
                .iter()
                .all(|o| o.depth >= 1.6));
            labels[scene.label as usize] += 1;
        }
        assert!(people > 5, "people appear in the scenes ({people})");
        assert_eq!(labels, [7, 6, 17, 10], "every category is a main object");
    }

    #[test]
    fn splits_carry_only_their_task_each_in_its_own_label_space() {
        let dir = std::env::temp_dir().join(format!("mustard-synth-{}", std::process::id()));
        let config = SynthConfig {
            size: 64,
            seed: 1,
            max_objects: 3,
        };
        let written = write(
            &dir,
            &config,
            0,
            Some(&Splits {
                per_task: 2,
                unlabeled: 3,
                test: 2,
            }),
        )
        .unwrap();
        let names: Vec<&str> = written.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "detection",
                "pose",
                "segmentation",
                "depth",
                "classification",
                "unlabeled",
                "unlabeled_truth",
                "test_detection",
                "test_pose",
                "test_segmentation",
                "test_depth",
                "test_classification"
            ]
        );
        assert_eq!(written.images, 15);
        let read = |name: &str| coco::read(&dir.join(format!("{name}.json"))).unwrap();
        let cat_names = |f: &CocoFile| {
            f.categories
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
        };
        let seg = read("train_segmentation");
        assert!(seg.annotations.is_empty() && seg.categories.is_empty());
        assert_eq!(seg.seg_classes, ["stripes", "checks", "shape", "person"]);
        assert!(seg
            .images
            .iter()
            .all(|r| r.seg_file.as_deref().unwrap().starts_with("stuff/")
                && r.depth_file.is_none()
                && r.label.is_none()
                && r.tasks == Some(vec![Task::Segmentation])));
        let pose = read("train_pose");
        assert_eq!(cat_names(&pose), ["person"]);
        assert_eq!(pose.categories[0].id, 1);
        assert!(pose
            .annotations
            .iter()
            .all(|a| a.category_id == 1 && a.keypoints.is_some() && a.segmentation.is_none()));
        let det = read("train_detection");
        assert_eq!(cat_names(&det), ["circle", "square", "triangle"]);
        assert!(!det.annotations.is_empty());
        assert!(det.annotations.iter().all(|a| a.keypoints.is_none()
            && a.segmentation.is_none()
            && (1..=3).contains(&a.category_id)));
        let cls = read("train_classification");
        assert_eq!(cls.label_names, ["red", "green", "blue"]);
        assert!(cls.images.iter().all(|r| r.label.is_some_and(|l| l < 3)));
        let unlabeled = read("unlabeled");
        assert!(
            unlabeled.annotations.is_empty()
                && unlabeled.images.iter().all(|r| r.tasks == Some(vec![]))
        );
        // The same images with every task's labels in the splits' taxonomies.
        let truth = read("unlabeled_truth");
        assert_eq!(
            truth.images.iter().map(|r| r.id).collect::<Vec<_>>(),
            [11, 12, 13]
        );
        assert_eq!(
            cat_names(&truth),
            ["circle", "square", "triangle", "person"]
        );
        assert_eq!(truth.seg_classes, seg.seg_classes);
        assert_eq!(truth.label_names, cls.label_names);
        assert!(truth
            .images
            .iter()
            .all(|r| r.tasks == Some(Task::ALL.to_vec())
                && r.seg_file.as_deref().unwrap().starts_with("stuff/")
                && r.depth_file.is_some()
                && r.label.is_some_and(|l| l < 3)));
        assert!(truth
            .annotations
            .iter()
            .all(|a| (a.category_id == 4) == a.keypoints.is_some()));
        for task in Task::ALL {
            let test = read(&format!("test_{task}"));
            assert_eq!(
                test.images.iter().map(|r| r.id).collect::<Vec<_>>(),
                [14, 15]
            );
            assert!(test.images.iter().all(|r| r.tasks == Some(vec![task])));
        }
        // The stuff map is the semantic map with the background named by its texture and the
        // shapes merged.
        let scene = render(&config, 13).unwrap();
        let stuff = imageio::read_labels(&dir.join("stuff/000014.png")).unwrap();
        assert_eq!(stuff, scene.stuff_map());
        for (s, c) in stuff.as_raw().iter().zip(scene.semantic.as_raw()) {
            let expected = match c {
                0 => u8::from(scene.checker),
                4 => 3,
                _ => 2,
            };
            assert_eq!(*s, expected);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_colour_labels_and_textures_are_balanced() {
        let config = SynthConfig {
            size: 64,
            seed: 0,
            max_objects: 6,
        };
        let (mut colours, mut checkers) = ([0; 3], 0);
        for index in 0..300 {
            let scene = render(&config, index).unwrap();
            colours[scene.colour_label() as usize] += 1;
            checkers += usize::from(scene.checker);
        }
        assert_eq!(colours, [103, 101, 96]);
        assert_eq!(checkers, 158);
    }

    #[test]
    fn the_downstream_family_shares_no_scene_shape_or_label_with_the_main_one() {
        let config = SynthConfig {
            size: 64,
            seed: 0,
            max_objects: 4,
        };
        let (mut classes, mut labels, mut dots) = ([0; 3], [0; 3], 0);
        for index in 0..60 {
            let main = render(&config, index).unwrap();
            let down = render_family(&config, index, Family::Downstream).unwrap();
            assert_ne!(main.image, down.image);
            assert!(down.objects.iter().all(|o| o.keypoints.is_none()));
            for o in &down.objects {
                classes[o.class] += 1;
            }
            labels[down.label as usize] += 1;
            dots += usize::from(down.checker);
            let map = down.downstream_map();
            for (m, c) in map.as_raw().iter().zip(down.semantic.as_raw()) {
                let expected = if *c == 0 {
                    u8::from(down.checker)
                } else {
                    c + 1
                };
                assert_eq!(*m, expected);
            }
        }
        assert_eq!(classes, [59, 47, 51]);
        assert_eq!(labels, [18, 20, 22]);
        assert_eq!(dots, 29);
        let dir = std::env::temp_dir().join(format!("mustard-downstream-{}", std::process::id()));
        let written = write_downstream(&dir, &config, 3, 2).unwrap();
        let names: Vec<&str> = written.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "train_detection",
                "train_segmentation",
                "train_depth",
                "train_classification",
                "test_detection",
                "test_segmentation",
                "test_depth",
                "test_classification"
            ]
        );
        let det = coco::read(&dir.join("test_detection.json")).unwrap();
        let cats: Vec<&str> = det.categories.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(cats, ["pentagon", "star", "cross"]);
        assert_eq!(det.images.iter().map(|r| r.id).collect::<Vec<_>>(), [4, 5]);
        let seg = coco::read(&dir.join("train_segmentation.json")).unwrap();
        assert_eq!(
            seg.seg_classes,
            ["waves", "dots", "pentagon", "star", "cross"]
        );
        let cls = coco::read(&dir.join("train_classification.json")).unwrap();
        assert_eq!(cls.label_names, ["pentagon", "star", "cross"]);
        assert!(write_downstream(&dir, &config, 0, 2).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
