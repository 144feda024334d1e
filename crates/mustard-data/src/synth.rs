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
    /// Whether the background is a checkerboard (else stripes).
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

/// Renders scene `index` of `config`.
pub fn render(config: &SynthConfig, index: u64) -> Result<Scene> {
    let s = config.size;
    if s < 32 {
        return Err(Error::config(
            "synth size",
            format!("{s} is smaller than 32 pixels"),
        ));
    }
    let sf = s as f64;
    let mut rng = Rng::derive(config.seed, &[index]);
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
        let t = if checker {
            (((u / period).floor() + (v / period).floor()) as i64).rem_euclid(2) as f64
        } else {
            0.5 + 0.5 * (u / period * std::f64::consts::PI).sin()
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
            let class = rng.below(CATEGORIES.len());
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
            let (polygons, joints) = match class {
                0 => (vec![regular_polygon(cx, cy, extent / 2.0, 32, 0.0)], None),
                1 => (
                    vec![regular_polygon(
                        cx,
                        cy,
                        extent / 2.0 * std::f64::consts::SQRT_2,
                        4,
                        turn,
                    )],
                    None,
                ),
                2 => (vec![regular_polygon(cx, cy, extent * 0.6, 3, turn)], None),
                _ => {
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
    colour_label: u32,
}

fn render_one(out: &Path, config: &SynthConfig, i: usize, split: bool) -> Result<Rendered> {
    let scene = render(config, i as u64)?;
    let id = i as u64 + 1;
    let name = format!("{id:06}.png");
    imageio::write_rgb(&out.join("images").join(&name), &scene.image)?;
    imageio::write_labels(&out.join("semantic").join(&name), &scene.semantic)?;
    if split {
        imageio::write_labels(&out.join("stuff").join(&name), &scene.stuff_map())?;
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
        colour_label: scene.colour_label(),
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
fn one_task(images: &[Rendered], task: Option<Task>) -> CocoFile {
    let mut file = CocoFile::default();
    match task {
        Some(Task::Detection) => file.categories = categories()[..SHAPES].to_vec(),
        Some(Task::Pose) => file.categories = vec![category(1, CATEGORIES[PERSON], true)],
        Some(Task::Segmentation) => file.seg_classes = SEG_CLASSES.map(String::from).to_vec(),
        Some(Task::Classification) => file.label_names = COLOUR_LABELS.map(String::from).to_vec(),
        Some(Task::Depth) | None => {}
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
            Some(Task::Classification) => record.label = Some(r.colour_label),
            _ => {}
        }
        for a in &r.annotations {
            let person = a.category_id as usize == PERSON + 1;
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

/// Renders `images` scenes into `out` (`images/`, `semantic/`, `depth/`, in parallel) and writes
/// `instances.json` labelling every task. With `splits`, the images are instead divided as MuST
/// uses them, each task in its own label space (the taxonomies of `docs/SYNTHETIC.md`): one
/// single-task split per task (`train_<task>.json`), `unlabeled.json` (images only) and one test
/// file per task over the same held-out images (`test_<task>.json`); `images` is then ignored.
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
        .map(|i| render_one(out, config, i, splits.is_some()))
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
                save(format!("train_{task}"), one_task(images, Some(task)))?;
                start += s.per_task;
            }
            save(
                "unlabeled".into(),
                one_task(&rendered[start..start + s.unlabeled], None),
            )?;
            start += s.unlabeled;
            for task in Task::ALL {
                let images = &rendered[start..start + s.test];
                save(format!("test_{task}"), one_task(images, Some(task)))?;
            }
        }
    }
    Ok(Written {
        files,
        images: total,
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
}
