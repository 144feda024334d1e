//! Folder datasets in the exact layouts of the real ones (file names, bit depths, palettes),
//! written by the tests themselves: ADE20K, Cityscapes, Pascal VOC, a 16-bit label map, NYU v2
//! and KITTI depth.

use std::path::{Path, PathBuf};

use image::{GrayImage, ImageBuffer, Luma, RgbImage};
use mustard_data::{CheckDepth, Dataset, Task};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mustard-folders-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_image(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 * 9, y as u8 * 7, 128]))
        .save(path)
        .unwrap();
}

/// A 4x2 label map of the given raw values, row by row.
fn write_grey(path: &Path, values: [u8; 8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    GrayImage::from_raw(4, 2, values.to_vec())
        .unwrap()
        .save(path)
        .unwrap();
}

fn spec(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("dataset.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn semantic(ds: &Dataset, i: usize) -> Vec<u8> {
    ds.load(i).unwrap().semantic.unwrap().into_raw()
}

#[test]
fn ade20k_reduces_zero_and_names_its_classes() {
    let dir = temp("ade");
    let root = dir.join("ADEChallengeData2016");
    write_image(&root.join("images/validation/ADE_val_00000001.jpg"), 4, 2);
    write_grey(
        &root.join("annotations/validation/ADE_val_00000001.png"),
        [0, 1, 2, 3, 150, 151, 0, 1],
    );
    let names: Vec<String> = (1..=150).map(|k| format!("class{k}")).collect();
    std::fs::write(dir.join("objectInfo150.txt"), names.join("\n")).unwrap();
    let path = spec(
        &dir,
        r#"images = "ADEChallengeData2016/images/validation"
labels = "ADEChallengeData2016/annotations/validation"
classes = "objectInfo150.txt"
reduce_zero = true
"#,
    );
    let ds = Dataset::open_path(&path, None).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.file().seg_classes.len(), 150);
    assert_eq!(
        ds.file().images[0].file_name,
        "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg"
    );
    assert!(ds.tasks(0).contains(Task::Segmentation));
    // 0 ("other") is ignored, v is class v - 1, 151 is no class.
    assert_eq!(semantic(&ds, 0), [255, 0, 1, 2, 149, 255, 255, 0]);
    assert!(ds.check_with(CheckDepth::Decode, &|| {}).is_clean());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cityscapes_label_ids_become_train_ids_per_city() {
    let dir = temp("cityscapes");
    write_image(
        &dir.join("leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"),
        4,
        2,
    );
    write_grey(
        &dir.join("gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"),
        [7, 8, 26, 0, 1, 7, 33, 255],
    );
    let path = spec(
        &dir,
        r#"images = "leftImg8bit/val"
labels = "gtFine/val"
label_strip = "_leftImg8bit"
label_suffix = "_gtFine_labelIds"
class_names = ["road", "sidewalk", "car", "bicycle"]
ids = { "7" = 0, "8" = 1, "26" = 2, "33" = 3 }
"#,
    );
    let ds = Dataset::open_path(&path, None).unwrap();
    assert_eq!(
        ds.file().images[0].seg_file.as_deref(),
        Some("gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png")
    );
    assert_eq!(semantic(&ds, 0), [0, 1, 2, 255, 255, 0, 3, 255]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pascal_voc_palette_indices_are_read_not_their_colours() {
    let dir = temp("voc");
    let voc = dir.join("VOCdevkit/VOC2012");
    write_image(&voc.join("JPEGImages/2007_000032.jpg"), 4, 2);
    // VOC's palette PNG: index 0 background (black), 1 aeroplane (128, 0, 0), 255 the border.
    let label = voc.join("SegmentationClass/2007_000032.png");
    std::fs::create_dir_all(label.parent().unwrap()).unwrap();
    let mut palette = vec![0u8; 256 * 3];
    palette[3..6].copy_from_slice(&[128, 0, 0]);
    palette[15 * 3..15 * 3 + 3].copy_from_slice(&[192, 128, 128]);
    palette[255 * 3..].copy_from_slice(&[224, 224, 192]);
    let file = std::fs::File::create(&label).unwrap();
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), 4, 2);
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_palette(palette);
    let mut writer = encoder.write_header().unwrap();
    writer
        .write_image_data(&[0, 1, 1, 255, 15, 15, 0, 255])
        .unwrap();
    writer.finish().unwrap();
    let names: Vec<String> = (0..21).map(|k| format!("voc{k}")).collect();
    let path = spec(
        &dir,
        &format!(
            "images = \"VOCdevkit/VOC2012/JPEGImages\"\nlabels = \"VOCdevkit/VOC2012/SegmentationClass\"\nclass_names = {names:?}\nignore = 255\n"
        ),
    );
    let ds = Dataset::open_path(&path, None).unwrap();
    assert_eq!(semantic(&ds, 0), [0, 1, 1, 255, 15, 15, 0, 255]);
    assert!(ds.check_with(CheckDepth::Headers, &|| {}).is_clean());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sixteen_bit_label_maps_and_what_is_refused() {
    let dir = temp("sixteen");
    write_image(&dir.join("images/a.png"), 4, 2);
    write_image(&dir.join("images/b.png"), 4, 2);
    std::fs::create_dir_all(dir.join("labels")).unwrap();
    ImageBuffer::<Luma<u16>, Vec<u16>>::from_raw(4, 2, vec![0, 1, 2, 300, 65535, 1, 2, 0])
        .unwrap()
        .save(dir.join("labels/a.png"))
        .unwrap();
    // b has no label map: it is not labelled for segmentation.
    let path = spec(
        &dir,
        "images = \"images\"\nlabels = \"labels\"\nclass_names = [\"x\", \"y\", \"z\"]\nignore = 0\n",
    );
    let ds = Dataset::open_path(&path, None).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(semantic(&ds, 0), [255, 1, 2, 255, 255, 1, 2, 255]);
    assert!(!ds.tasks(1).contains(Task::Segmentation));
    // An RGB label map is named with what it should be.
    RgbImage::new(4, 2).save(dir.join("labels/b.png")).unwrap();
    let ds = Dataset::open_path(&path, None).unwrap();
    let report = ds.check_with(CheckDepth::Headers, &|| {});
    assert_eq!(report.problems.len(), 1, "{report}");
    assert_eq!(
        report.problems[0].message,
        format!(
            "seg_file cannot be decoded: a label map must be a PNG of 8- or 16-bit grey values or 8-bit palette indices, not Rgb at 8 bits"
        )
    );
    // Labels without class names, and ids beyond the classes, are refused naming the file.
    let path = spec(&dir, "images = \"images\"\nlabels = \"labels\"\n");
    assert_eq!(
        Dataset::open_path(&path, None).unwrap_err().to_string(),
        format!(
            "{}: labels need their class names: `classes` (a file) or `class_names`",
            path.display()
        )
    );
    let path = spec(
        &dir,
        "images = \"images\"\nlabels = \"labels\"\nclass_names = [\"x\"]\nids = { \"7\" = 3 }\n",
    );
    assert_eq!(
        Dataset::open_path(&path, None).unwrap_err().to_string(),
        format!(
            "{}: ids: value 7 maps to class 3, but there are 1 classes",
            path.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nyu_millimetres_and_kitti_sixteenths_pair_with_images_by_stem() {
    let dir = temp("depth");
    write_image(&dir.join("rgb/0001.jpg"), 4, 2);
    std::fs::create_dir_all(dir.join("nyu")).unwrap();
    std::fs::create_dir_all(dir.join("kitti")).unwrap();
    let raw = vec![0u16, 1000, 2500, 65535, 256, 512, 0, 10];
    for sub in ["nyu", "kitti"] {
        ImageBuffer::<Luma<u16>, Vec<u16>>::from_raw(4, 2, raw.clone())
            .unwrap()
            .save(dir.join(sub).join("0001.png"))
            .unwrap();
    }
    let nyu = spec(
        &dir,
        "images = \"rgb\"\ndepth = \"nyu\"\ndepth_scale = 0.001\n",
    );
    let ds = Dataset::open_path(&nyu, None).unwrap();
    assert!(ds.tasks(0).contains(Task::Depth));
    let depth = ds.load(0).unwrap().depth.unwrap().into_raw();
    let want: Vec<f32> = raw.iter().map(|&v| (f64::from(v) * 0.001) as f32).collect();
    assert_eq!(depth, want);
    std::fs::rename(&nyu, dir.join("nyu.toml")).unwrap();
    let kitti = spec(
        &dir,
        "images = \"rgb\"\ndepth = \"kitti\"\ndepth_scale = 0.00390625\n",
    );
    let depth = Dataset::open_path(&kitti, None)
        .unwrap()
        .load(0)
        .unwrap()
        .depth
        .unwrap()
        .into_raw();
    assert_eq!(depth[..4], [0.0, 3.90625, 9.765625, 65535.0 / 256.0]);
    assert_eq!(depth[6], 0.0, "0 stays 'no measurement'");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn classification_lists_in_csv_and_json() {
    let dir = temp("lists");
    for name in ["train/n01440764_1.JPEG.jpg", "train/b.jpg", "train/c.jpg"] {
        write_image(&dir.join(name), 4, 2);
    }
    let csv = dir.join("train.csv");
    std::fs::write(
        &csv,
        "file,label\ntrain/n01440764_1.JPEG.jpg,10\ntrain/b.jpg,2\n\ntrain/c.jpg,10\n",
    )
    .unwrap();
    let ds = Dataset::open_path(&csv, None).unwrap();
    // Numeric labels are ordered as numbers, not as text ("10" after "2").
    assert_eq!(ds.file().label_names, ["2", "10"]);
    let labels: Vec<Option<u32>> = ds.file().images.iter().map(|r| r.label).collect();
    assert_eq!(labels, [Some(1), Some(0), Some(1)]);
    assert!(ds.tasks(0).contains(Task::Classification));
    let json = dir.join("train.json");
    std::fs::write(
        &json,
        r#"[{"file": "train/b.jpg", "label": "tench"}, {"file": "train/c.jpg", "label": "goldfish"}]"#,
    )
    .unwrap();
    let ds = Dataset::open_path(&json, None).unwrap();
    assert_eq!(ds.file().label_names, ["goldfish", "tench"]);
    assert_eq!(ds.file().images[0].label, Some(1));
    // A missing image names the list, the line and the file.
    std::fs::write(&csv, "train/b.jpg,1\ntrain/missing.jpg,2\n").unwrap();
    assert_eq!(
        Dataset::open_path(&csv, None).unwrap_err().to_string(),
        format!(
            "{}: line 2: {}: No such file or directory (os error 2)",
            csv.display(),
            dir.join("train/missing.jpg").display()
        )
    );
    std::fs::write(&csv, "train/b.jpg;1\n").unwrap();
    assert_eq!(
        Dataset::open_path(&csv, None).unwrap_err().to_string(),
        format!(
            "{}: line 1: \"train/b.jpg;1\" is not `file,label`",
            csv.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn coco_layout_annotations_apart_from_images_with_stuff_maps() {
    // coco/annotations/instances_val2017.json + person_keypoints_val2017.json, images in
    // coco/val2017/, COCO-Stuff's 8-bit maps (id − 1, 255 unlabelled) in coco/stuffthingmaps/val2017/.
    let dir = temp("coco");
    let coco = dir.join("coco");
    write_image(&coco.join("val2017/000000000139.jpg"), 4, 2);
    write_grey(
        &coco.join("stuffthingmaps/val2017/000000000139.png"),
        [0, 0, 255, 1, 1, 2, 2, 255],
    );
    std::fs::create_dir_all(coco.join("annotations")).unwrap();
    std::fs::write(
        coco.join("annotations/instances_val2017.json"),
        r#"{"images": [{"id": 139, "file_name": "000000000139.jpg", "width": 4, "height": 2}],
            "annotations": [{"id": 1, "image_id": 139, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4}],
            "categories": [{"id": 1, "name": "person"}]}"#,
    )
    .unwrap();
    std::fs::write(
        coco.join("annotations/person_keypoints_val2017.json"),
        r#"{"images": [{"id": 139, "file_name": "000000000139.jpg", "width": 4, "height": 2}],
            "annotations": [{"id": 1, "image_id": 139, "category_id": 1, "bbox": [0, 0, 2, 2],
                             "keypoints": [1, 1, 2], "num_keypoints": 1}],
            "categories": [{"id": 1, "name": "person", "keypoints": ["nose"], "skeleton": []}]}"#,
    )
    .unwrap();
    let path = spec(
        &coco,
        r#"coco = "annotations/instances_val2017.json,annotations/person_keypoints_val2017.json"
images = "val2017"
labels = "stuffthingmaps/val2017"
class_names = ["person", "bicycle", "car"]
ignore = 255
"#,
    );
    let ds = Dataset::open_path(&path, None).unwrap();
    assert_eq!(ds.len(), 1);
    let tasks = ds.tasks(0);
    for task in [Task::Detection, Task::Pose, Task::Segmentation] {
        assert!(tasks.contains(task), "{task}");
    }
    let sample = ds.load(0).unwrap();
    assert_eq!(sample.objects.len(), 1);
    assert!(sample.objects[0].keypoints.is_some());
    assert_eq!(
        sample.semantic.unwrap().into_raw(),
        [0, 0, 255, 1, 1, 2, 2, 255]
    );
    assert!(ds.check_with(CheckDepth::Headers, &|| {}).is_clean());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn coco_panoptic_reads_as_semantic_classes_and_thing_boxes() {
    let dir = temp("panoptic");
    let coco = dir.join("coco");
    write_image(&coco.join("val2017/000000000139.jpg"), 4, 2);
    // Segment ids as the panoptic PNG encodes them: id = R + 256 G + 256² B.
    let (person, wall, void) = ([7u8, 0, 0], [136u8, 19, 0], [0u8, 0, 0]);
    let png = coco.join("annotations/panoptic_val2017/000000000139.png");
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    let pixels = [person, person, wall, void, person, wall, wall, [9, 0, 0]];
    RgbImage::from_fn(4, 2, |x, y| image::Rgb(pixels[(y * 4 + x) as usize]))
        .save(&png)
        .unwrap();
    std::fs::write(
        coco.join("annotations/panoptic_val2017.json"),
        r#"{"images": [{"id": 139, "file_name": "000000000139.jpg", "width": 4, "height": 2}],
            "annotations": [{"image_id": 139, "file_name": "000000000139.png", "segments_info": [
                {"id": 7, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 2, 2], "area": 3},
                {"id": 5000, "category_id": 199, "iscrowd": 0, "bbox": [1, 0, 3, 2], "area": 3}]}],
            "categories": [{"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
                           {"id": 199, "name": "wall-other-merged", "isthing": 0}]}"#,
    )
    .unwrap();
    let path = spec(
        &coco,
        "panoptic = \"annotations/panoptic_val2017.json\"\npanoptic_maps = \"annotations/panoptic_val2017\"\nimages = \"val2017\"\n",
    );
    let ds = Dataset::open_path(&path, None).unwrap();
    assert_eq!(ds.file().seg_classes, ["person", "wall-other-merged"]);
    let names: Vec<&str> = ds.categories().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["person"], "stuff is not detected");
    assert!(ds.tasks(0).contains(Task::Detection) && ds.tasks(0).contains(Task::Segmentation));
    let sample = ds.load(0).unwrap();
    assert_eq!(sample.objects.len(), 1);
    assert_eq!(sample.objects[0].bbox, [0.0, 0.0, 2.0, 2.0]);
    // Void (0) and a segment the image does not list (9) are ignored.
    assert_eq!(
        sample.semantic.unwrap().into_raw(),
        [0, 0, 1, 255, 0, 1, 1, 255]
    );
    assert!(ds.check_with(CheckDepth::Decode, &|| {}).is_clean());
    std::fs::remove_dir_all(&dir).unwrap();
}
