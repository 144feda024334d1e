//! The constant prediction that reports are read against, on datasets small enough to work
//! out by hand.

use std::path::{Path, PathBuf};

use image::{GrayImage, RgbImage};
use mustard::baseline::constant_baseline;
use mustard::data::{Dataset, Task};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mustard-baseline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_image(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_pixel(4, 2, image::Rgb([10, 20, 30]))
        .save(path)
        .unwrap();
}

#[test]
fn classification_predicts_the_training_majority() {
    let dir = temp("cls");
    for name in ["a.png", "b.png", "c.png", "d.png"] {
        write_image(&dir.join(name));
    }
    std::fs::write(
        dir.join("train.csv"),
        "file,label\na.png,cat\nb.png,cat\nc.png,dog\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("test.csv"),
        "file,label\na.png,cat\nb.png,dog\nc.png,dog\nd.png,dog\n",
    )
    .unwrap();
    let train = Dataset::open_path(&dir.join("train.csv"), None).unwrap();
    let test = Dataset::open_path(&dir.join("test.csv"), None).unwrap();
    // "cat" wins the training set (2 of 3) and is right on 1 of 4 test images.
    assert_eq!(
        constant_baseline(Task::Classification, &train, &test).unwrap(),
        Some(0.25)
    );
    assert_eq!(
        constant_baseline(Task::Detection, &train, &test).unwrap(),
        Some(0.0),
        "no box: AP 0"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn segmentation_predicts_the_majority_pixel_class() {
    let dir = temp("seg");
    let maps = |split: &str, values: [u8; 8]| {
        write_image(&dir.join(split).join("images/x.png"));
        let path = dir.join(split).join("labels/x.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        GrayImage::from_raw(4, 2, values.to_vec())
            .unwrap()
            .save(&path)
            .unwrap();
        let spec = dir.join(format!("{split}.toml"));
        std::fs::write(
            &spec,
            format!(
                "images = \"{split}/images\"\nlabels = \"{split}/labels\"\nclass_names = [\"ground\", \"thing\"]\n"
            ),
        )
        .unwrap();
        Dataset::open_path(&spec, None).unwrap()
    };
    // Training: 5 ground pixels, 3 thing pixels (and one ignored, 255).
    let train = maps("train", [0, 0, 0, 0, 0, 1, 1, 255]);
    // Test: 2 ground, 6 thing. Predicting "ground" everywhere: IoU(ground) = 2 / 8,
    // IoU(thing) = 0 / 6, mIoU 0.125.
    let test = maps("test", [0, 0, 1, 1, 1, 1, 1, 1]);
    assert_eq!(
        constant_baseline(Task::Segmentation, &train, &test).unwrap(),
        Some(0.125)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
