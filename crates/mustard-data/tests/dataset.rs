//! A synthetic dataset on disk, checked, corrupted record by record, loaded and iterated.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use mustard_data::coco::{self, RleCounts, RleJson, Segmentation};
use mustard_data::synth::{self, SynthConfig};
use mustard_data::{BatchEncoder, CheckDepth, Dataset, Loader, LoaderConfig, Sample, Task};

fn synth_dir(name: &str, images: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mustard-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    synth::write(
        &dir,
        &SynthConfig {
            size: 64,
            seed: 11,
            max_objects: 4,
        },
        images,
        None,
    )
    .unwrap();
    dir
}

#[test]
fn a_clean_synthetic_dataset_checks_clean_and_loads_every_task() -> Result<()> {
    let dir = synth_dir("clean", 6);
    let ds = Dataset::open(&dir.join("instances.json"), None)?;
    let report = ds.check();
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        (
            report.images,
            report.per_task[&Task::Depth],
            report.per_task[&Task::Pose]
        ),
        (6, 6, 6)
    );
    let text = report.to_string();
    assert!(
        text.contains("6 images") && text.ends_with("no problems found\n"),
        "{text}"
    );
    let ds = ds.require_clean(false, |_| {})?;
    for i in 0..ds.len() {
        let s = ds.load(i)?;
        assert_eq!(s.size(), (64, 64));
        assert_eq!(s.tasks.iter().count(), 5);
        assert_eq!(s.semantic.as_ref().unwrap().dimensions(), (64, 64));
        let depth = s.depth.as_ref().unwrap();
        assert!(
            depth.as_raw().iter().all(|&d| (1.2..=8.0).contains(&d)),
            "depth in metres"
        );
        let record = &ds
            .file()
            .annotations
            .iter()
            .filter(|a| a.image_id == s.image_id)
            .collect::<Vec<_>>();
        assert_eq!(s.objects.len(), record.len());
        for (o, a) in s.objects.iter().zip(record) {
            let [x, y, w, h] = a.bbox.unwrap();
            assert_eq!(o.bbox, [x as f32, y as f32, (x + w) as f32, (y + h) as f32]);
            assert_eq!(o.keypoints.is_some(), a.category_id == 4);
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn every_kind_of_bad_record_is_reported_with_its_id_and_file() -> Result<()> {
    let dir = synth_dir("bad", 4);
    let json = dir.join("instances.json");
    let mut file = coco::read(&json)?;
    // Image problems.
    file.images[0].file_name = "../outside.png".into();
    file.images[1].width = 65;
    std::fs::write(dir.join("images/broken.png"), b"\x89PNG\r\n\x1a\ntruncated")?;
    file.images[2].file_name = "images/broken.png".into();
    let mut dup = file.images[3].clone();
    dup.file_name = "images/missing.png".into();
    file.images.push(dup);
    // Annotation problems, on image 4 (still clean otherwise).
    let base = file
        .annotations
        .iter()
        .position(|a| a.image_id == 4)
        .unwrap();
    let dup_id = file.annotations[base].id;
    let mut bad = |f: &dyn Fn(&mut coco::Annotation)| {
        let mut a = file.annotations[base].clone();
        a.id = 90_000 + file.annotations.len() as u64;
        f(&mut a);
        file.annotations.push(a);
    };
    bad(&|a| a.bbox = Some([-1.0, 2.0, 3.0, 4.0]));
    bad(&|a| a.bbox = Some([60.0, 2.0, 10.0, 4.0]));
    bad(&|a| a.category_id = 77);
    bad(&|a| {
        a.category_id = 4;
        a.keypoints = Some(vec![1.0; 50]);
    });
    bad(&|a| {
        a.segmentation = Some(Segmentation::Rle(RleJson {
            size: [64, 64],
            counts: RleCounts::Uncompressed(vec![10, 20]),
        }))
    });
    bad(&|a| a.image_id = 555);
    bad(&|a| a.id = dup_id);
    coco::write(&file, &json)?;

    let ds = Dataset::open(&json, None)?;
    let report = ds.check();
    let mut lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    let root = |p: &str| dir.join(p).display().to_string();
    let broken = format!(
        "image 3 [{}]: file_name cannot be decoded: ",
        root("images/broken.png")
    );
    assert!(lines[5].starts_with(&broken), "{}", lines[5]);
    lines[5] = broken;
    let first = file.annotations.len() as u64 - 7 + 90_000;
    let image2_ann = file
        .annotations
        .iter()
        .find(|a| a.image_id == 2)
        .unwrap()
        .id;
    assert_eq!(
        lines,
        [
            "image 4: duplicate id (also images[3])".to_string(),
            "image 1 [../outside.png]: file_name escapes the image root (absolute path or `..`)".to_string(),
            format!("image 2 [{}]: file_name is 64x64, the record says 65x64", root("images/000002.png")),
            format!("image 2 [{}]: seg_file is 64x64, the record says 65x64", root("semantic/000002.png")),
            format!("image 2 [{}]: depth_file is 64x64, the record says 65x64", root("depth/000002.png")),
            format!("image 3 [{}]: file_name cannot be decoded: ", root("images/broken.png")),
            format!("image 4 [{}]: file_name does not exist", root("images/missing.png")),
            format!("annotation {image2_ann} (image 2): segmentation: RLE size [64, 64] differs from the image's [64, 65]"),
            format!("annotation {first} (image 4): bbox [-1.0, 2.0, 3.0, 4.0] has a negative value"),
            format!("annotation {} (image 4): bbox [60.0, 2.0, 10.0, 4.0] extends outside the 64x64 image", first + 1),
            format!("annotation {} (image 4): category id 77 does not exist", first + 2),
            format!("annotation {} (image 4): keypoints has 50 values, category person has 17 joints (expected 51)", first + 3),
            format!(
                "annotation {} (image 4): segmentation: invalid mask: counts add up to 30, expected height * width = 64 * 64 = 4096",
                first + 4
            ),
            format!("annotation {} (image 555): image id 555 does not exist", first + 5),
            format!("annotation {dup_id} (image 4): duplicate id (also annotations[{base}])"),
        ]
    );
    // Training refuses it…
    let err = Dataset::open(&json, None)?
        .require_clean(false, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "{}: 15 bad record(s); run `mustard data check`",
            json.display()
        )),
        "{err}"
    );
    // …unless asked to skip, which logs every record and keeps the good ones.
    let mut logged = 0;
    let ds = Dataset::open(&json, None)?.require_clean(true, |_| logged += 1)?;
    assert_eq!(logged, 15);
    assert_eq!(ds.len(), 1, "only image 4 (the first one) survives");
    let s = ds.load(0)?;
    assert_eq!(s.image_id, 4);
    assert_eq!(
        s.objects.len(),
        file.annotations.iter().filter(|a| a.image_id == 4).count() - 7 + 1
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// What the probe records of a sample: image id, pixel sum, first box.
type Seen = (u64, u64, Option<[f32; 4]>);

/// An encoder that records what it saw.
struct Probe(AtomicUsize);

impl BatchEncoder for Probe {
    type Item = Seen;
    type Batch = Vec<Seen>;

    fn encode(&self, s: Sample) -> mustard_data::Result<Self::Item> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let sum = s.image.as_raw().iter().map(|&v| v as u64).sum();
        Ok((s.image_id, sum, s.objects.first().map(|o| o.bbox)))
    }

    fn collate(&self, items: Vec<Self::Item>) -> mustard_data::Result<Self::Batch> {
        Ok(items)
    }
}

fn run_epoch(dir: &Path, threads: usize, epoch: u64) -> Vec<Vec<Seen>> {
    let ds = Arc::new(Dataset::open(&dir.join("instances.json"), None).unwrap());
    let config = LoaderConfig {
        threads: Some(threads),
        ..LoaderConfig::train(3, 32, 99)
    };
    let loader = Loader::new(ds, Arc::new(Probe(AtomicUsize::new(0))), config).unwrap();
    loader.epoch(epoch).map(|b| b.unwrap()).collect()
}

#[test]
fn batches_do_not_depend_on_the_thread_count_and_prefetch_is_bounded() -> Result<()> {
    let dir = synth_dir("loader", 10);
    let one = run_epoch(&dir, 1, 0);
    let two = run_epoch(&dir, 2, 0);
    assert_eq!(one.len(), 3, "10 images, batch 3, drop_last");
    assert_eq!(one, two);
    assert_ne!(
        run_epoch(&dir, 2, 1),
        one,
        "another epoch, another order and augmentation"
    );

    let ds = Arc::new(Dataset::open(&dir.join("instances.json"), None)?);
    let probe = Arc::new(Probe(AtomicUsize::new(0)));
    let config = LoaderConfig {
        prefetch: 1,
        threads: Some(2),
        ..LoaderConfig::train(2, 32, 1)
    };
    let loader = Loader::new(ds, probe.clone(), config)?;
    let mut epoch = loader.epoch(0);
    let first = epoch.next().unwrap()?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    // One batch taken, one waiting in the channel, one built and blocked on send: at most 3.
    let encoded = probe.0.load(Ordering::SeqCst);
    assert!(encoded <= 3 * 2, "the producer ran {encoded} samples ahead");
    assert_eq!(first.len(), 2);
    assert_eq!(epoch.count(), 4);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn opening_reads_headers_and_a_deep_check_finds_what_only_decoding_shows() -> Result<()> {
    let dir = synth_dir("depth", 3);
    let json = dir.join("instances.json");
    // Image 2 keeps a valid header and its end but loses half its pixels; image 3's label map
    // is RGB.
    let image = dir.join("images/000002.png");
    broken_inside(&image)?;
    let ds = Dataset::open(&json, None)?;
    let seg = dir.join(ds.image(2).seg_file.clone().expect("a label map"));
    mustard_data::imageio::write_rgb(&seg, &image::RgbImage::new(64, 64))?;
    let calls = AtomicUsize::new(0);
    let headers = ds.check_with(CheckDepth::Headers, &|| {
        calls.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(
        calls.load(Ordering::Relaxed),
        3,
        "one call per image record"
    );
    let lines: Vec<String> = headers.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [format!(
            "image 3 [{}]: seg_file cannot be decoded: a label map must be a single-channel 8-bit PNG",
            seg.display()
        )]
    );
    let deep = ds.check();
    let lines: Vec<String> = deep.problems.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!(
            "image 2 [{}]: file_name cannot be decoded: ",
            image.display()
        )),
        "{lines:?}"
    );
    // Opening for training reads headers only: the truncated image passes until it is loaded.
    let opened = Dataset::open(&json, None)?.require_clean(true, |_| {})?;
    assert_eq!(opened.len(), 2);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Keeps a PNG's header and its `IEND` chunk but drops the second half of its pixel data: the
/// header check passes, decoding fails.
fn broken_inside(png: &Path) -> Result<()> {
    let bytes = std::fs::read(png)?;
    let mut cut = bytes[..bytes.len() / 2].to_vec();
    cut.extend_from_slice(&bytes[bytes.len() - 12..]);
    std::fs::write(png, cut)?;
    Ok(())
}

/// A file cut short is a bad record from its header alone; `--skip-bad` leaves it out when
/// opening.
#[test]
fn a_truncated_image_is_a_bad_record_from_the_header_check() -> Result<()> {
    let dir = synth_dir("cut", 4);
    let json = dir.join("instances.json");
    let image = dir.join("images/000003.png");
    let bytes = std::fs::read(&image)?;
    std::fs::write(&image, &bytes[..bytes.len() / 2])?;
    let ds = Dataset::open(&json, None)?;
    let lines: Vec<String> = ds
        .check_with(CheckDepth::Headers, &|| {})
        .problems
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        lines,
        [format!(
            "image 3 [{}]: file_name cannot be decoded: truncated: the PNG data ends before its IEND chunk",
            image.display()
        )]
    );
    assert_eq!(ds.require_clean(true, |_| {})?.len(), 3);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// An image broken past its header fails the epoch naming it and the flag; with `skip_bad` it
/// is left out of its batch, named once over two epochs, and the other batches are unchanged.
#[test]
fn an_image_broken_inside_is_left_out_mid_epoch_with_skip_bad() -> Result<()> {
    let dir = synth_dir("inside", 6);
    let clean = |skip_bad| -> Result<Vec<Vec<Seen>>> {
        let ds = Arc::new(Dataset::open(&dir.join("instances.json"), None)?);
        let config = LoaderConfig {
            threads: Some(2),
            skip_bad,
            ..LoaderConfig::train(2, 32, 5)
        };
        let loader = Loader::new(ds, Arc::new(Probe(AtomicUsize::new(0))), config)?;
        Ok(loader.epoch(0).collect::<mustard_data::Result<Vec<_>>>()?)
    };
    let before = clean(false)?;
    let image = dir.join("images/000004.png");
    broken_inside(&image)?;

    let ds =
        Arc::new(Dataset::open(&dir.join("instances.json"), None)?.require_clean(false, |_| {})?);
    let strict = Loader::new(
        ds.clone(),
        Arc::new(Probe(AtomicUsize::new(0))),
        LoaderConfig {
            threads: Some(2),
            ..LoaderConfig::train(2, 32, 5)
        },
    )?;
    let err = strict
        .epoch(0)
        .find_map(|b| b.err())
        .expect("the broken image fails its batch");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}: ", image.display()))
            && text.ends_with(" (pass --skip-bad to leave out images that cannot be read)"),
        "{text}"
    );

    let loader = Loader::new(
        ds,
        Arc::new(Probe(AtomicUsize::new(0))),
        LoaderConfig {
            threads: Some(2),
            skip_bad: true,
            ..LoaderConfig::train(2, 32, 5)
        },
    )?;
    let after: Vec<Vec<Seen>> = loader.epoch(0).collect::<mustard_data::Result<_>>()?;
    let skipped = loader.take_skipped();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].0, 3, "image id 4 is sample 3");
    assert!(skipped[0].1.starts_with(&format!("{}: ", image.display())));
    // The same batches, but image 4 left out of its own.
    let without: Vec<Vec<Seen>> = before
        .iter()
        .map(|b| b.iter().filter(|s| s.0 != 4).cloned().collect())
        .collect();
    assert_eq!(after, without);
    assert_eq!(after.iter().map(Vec::len).sum::<usize>(), 5);
    // A second epoch leaves it out again without naming it again.
    let second: Vec<Vec<Seen>> = loader.epoch(1).collect::<mustard_data::Result<_>>()?;
    assert_eq!(second.iter().map(Vec::len).sum::<usize>(), 5);
    assert!(loader.take_skipped().is_empty());
    assert_eq!(loader.skipped().len(), 1);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A batch whose every image is left out is passed over and counted.
#[test]
fn a_batch_of_unreadable_images_is_passed_over_and_counted() -> Result<()> {
    let dir = synth_dir("allbad", 4);
    for i in 1..=2 {
        broken_inside(&dir.join(format!("images/00000{i}.png")))?;
    }
    let ds = Arc::new(Dataset::open(&dir.join("instances.json"), None)?);
    let config = LoaderConfig {
        threads: Some(1),
        skip_bad: true,
        ..LoaderConfig::eval(2, 32)
    };
    let loader = Loader::new(ds, Arc::new(Probe(AtomicUsize::new(0))), config)?;
    let mut epoch = loader.epoch(0);
    let batches: Vec<Vec<Seen>> = epoch.by_ref().collect::<mustard_data::Result<_>>()?;
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].iter().map(|s| s.0).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(epoch.empty_batches(), 1);
    assert_eq!(loader.skipped().len(), 2);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
