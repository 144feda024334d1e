//! The label store: round trips, completeness checks, refusals and the student source.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::GrayImage;
use mustard_data::imageio::DepthMap;
use mustard_data::synth::{self, Splits, SynthConfig};
use mustard_data::{Dataset, Label, Source, Task};
use mustard_pseudo::store::{fingerprint, FORMAT};
use mustard_pseudo::{
    ImageLabels, Manifest, PseudoBox, PseudoSource, ShardSpec, ShardState, Store, Thresholds,
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mustard-pseudo-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `n` unlabelled 64x64 synthetic images.
fn unlabelled(dir: &Path, n: usize) -> Dataset {
    let written = synth::write(
        &dir.join("data"),
        &SynthConfig {
            size: 64,
            seed: 3,
            max_objects: 3,
        },
        0,
        Some(&Splits {
            per_task: 1,
            unlabeled: n,
            test: 1,
        }),
    )
    .unwrap();
    let path = &written
        .files
        .iter()
        .find(|(n, _)| n == "unlabeled")
        .unwrap()
        .1;
    Dataset::open(path, None).unwrap()
}

fn manifest(ds: &Dataset) -> Manifest {
    Manifest {
        format: FORMAT,
        source: ds.path().to_path_buf(),
        images: ds.len(),
        fingerprint: fingerprint(ds),
        shard_size: 2,
        tasks: Task::ALL.to_vec(),
        teachers: Vec::new(),
        thresholds: Thresholds::default(),
        input_size: 64,
        categories: synth::categories(),
        detection_categories: None,
        seg_classes: Vec::new(),
        label_names: ds.file().label_names.clone(),
    }
}

/// Distinct labels for image `i`.
fn labels(i: usize, joints: usize, person: usize) -> ImageLabels {
    let f = i as f32;
    ImageLabels {
        tasks: Task::ALL.iter().copied().collect(),
        boxes: vec![PseudoBox {
            bbox: [f, 2.0, f + 10.0, 20.0],
            score: 0.75,
            class: i % 3,
            keypoints: None,
        }],
        people: (0..i % 2)
            .map(|_| PseudoBox {
                bbox: [30.0, 30.0, 40.0, 60.0],
                score: 0.6,
                class: person,
                keypoints: Some(
                    (0..joints)
                        .map(|j| [30.0 + j as f32 * 0.5, 35.0, 2.0])
                        .collect(),
                ),
            })
            .collect(),
        semantic: Some(GrayImage::from_fn(64, 64, |x, _| {
            image::Luma([if x < 32 { i as u8 } else { 255 }])
        })),
        depth: Some(DepthMap::from_fn(64, 64, |x, y| {
            image::Luma([1.0 + (x + y) as f32 / 100.0 + f])
        })),
        classes: Some(vec![0.1 * f, 1.0 - 0.1 * f]),
    }
}

fn fill(store: &Store, ds: &Dataset, skip: &[usize]) {
    let m = store.manifest().clone();
    let person = m.person().unwrap();
    for k in 0..m.shards() {
        if skip.contains(&k) {
            continue;
        }
        let range = m.range(k);
        let ids: Vec<u64> = range.clone().map(|i| ds.image(i).id).collect();
        let labels: Vec<ImageLabels> = range.map(|i| labels(i, m.joints(), person)).collect();
        store.write_shard(k, &ids, &labels).unwrap();
    }
}

#[test]
fn shards_round_trip_and_states_are_detected() {
    let dir = scratch("roundtrip");
    let ds = unlabelled(&dir, 5);
    let store = Store::create(&dir.join("labels"), manifest(&ds)).unwrap();
    assert_eq!(store.manifest().shards(), 3);
    assert_eq!(store.manifest().range(2), 4..5);
    fill(&store, &ds, &[1]);
    let states = store.status();
    assert!(matches!(states[0], ShardState::Complete(_)));
    assert_eq!(states[1], ShardState::Missing);
    let person = store.manifest().person().unwrap();
    let joints = store.manifest().joints();
    assert_eq!(joints, 17);
    let read = store.read_shard(2).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].0, ds.image(4).id);
    assert_eq!(read[0].1, labels(4, joints, person));
    let read = store.read_shard(0).unwrap();
    assert_eq!(read[1].1, labels(1, joints, person));

    // A flipped byte, a truncated file and a missing file are all noticed.
    let path = store.shard_path(0);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    // The quick check trusts the recorded checksum; the full one reads the file.
    assert!(matches!(store.check_recorded(0), ShardState::Complete(_)));
    assert_eq!(
        store.check(0),
        ShardState::Broken(format!(
            "{}: checksum differs from its record",
            path.display()
        ))
    );
    std::fs::write(&path, &bytes[..10]).unwrap();
    let want = format!(
        "{}: 10 bytes, the record says {}",
        path.display(),
        bytes.len()
    );
    assert_eq!(store.check(0), ShardState::Broken(want));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        store.check(0),
        ShardState::Broken(format!("{} is missing", path.display()))
    );
    let err = PseudoSource::open(store.dir(), None)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: {} is missing; run `mustard pseudo-label` again to redo it",
            path.display(),
            path.display()
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_store_for_other_settings_is_refused() {
    let dir = scratch("refuse");
    let ds = unlabelled(&dir, 5);
    let m = manifest(&ds);
    Store::create(&dir.join("labels"), m.clone()).unwrap();
    // Reopening with the same plan (through another path) is fine.
    let mut same = m.clone();
    same.source = PathBuf::from("elsewhere.json");
    Store::create(&dir.join("labels"), same).unwrap();
    let mut other = m;
    other.thresholds.detection = 0.3;
    let err = Store::create(&dir.join("labels"), other)
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("manifest.json: this store was made with a different thresholds.detection (0.3 now, 0.5 stored); choose another output folder or delete this one"),
        "{err}"
    );
    let err = Store::open(&dir.join("nothing")).unwrap_err().to_string();
    assert!(
        err.ends_with(
            "nothing/manifest.json: no pseudo-label store here (manifest.json is missing)"
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shard_specs_parse_and_partition() {
    let s: ShardSpec = "1/3".parse().unwrap();
    assert_eq!(s, ShardSpec { index: 1, count: 3 });
    let owned: Vec<usize> = (0..8).filter(|&k| s.owns(k)).collect();
    assert_eq!(owned, vec![1, 4, 7]);
    for bad in ["3/3", "1", "a/2", "0/0"] {
        assert_eq!(
            bad.parse::<ShardSpec>().unwrap_err(),
            format!("--shard {bad:?}: expected i/N with 0 <= i < N, e.g. 0/4, or auto")
        );
    }
}

#[test]
fn the_source_yields_images_with_their_pseudo_labels() {
    let dir = scratch("source");
    let ds = unlabelled(&dir, 5);
    let store = Store::create(&dir.join("labels"), manifest(&ds)).unwrap();
    fill(&store, &ds, &[]);
    let source = PseudoSource::open(store.dir(), Some(Arc::new(ds.clone()))).unwrap();
    assert_eq!(source.len(), 5);
    // The store's label spaces, not the unlabelled file's (which has none).
    assert!(ds.categories().is_empty());
    assert_eq!(source.categories(), synth::categories());
    assert_eq!(
        source.flip_pairs().len(),
        8,
        "the COCO left/right joint pairs"
    );
    let person = store.manifest().person().unwrap();
    for i in [0, 3] {
        let s = source.load(i).unwrap();
        let want = labels(i, 17, person);
        assert_eq!(s.image_id, ds.image(i).id);
        assert_eq!(s.tasks, want.tasks);
        assert_eq!(s.objects, want.objects(Some(person)));
        assert_eq!(s.objects.len(), 1 + i % 2);
        assert_eq!(s.semantic.as_ref(), want.semantic.as_ref());
        assert_eq!(s.depth.as_ref(), want.depth.as_ref());
        assert_eq!(s.label, Some(Label::Soft(want.classes.unwrap())));
        assert_eq!(s.image.dimensions(), (64, 64));
    }
    // A different image list is refused.
    let other = unlabelled(&scratch("source-other"), 4);
    let err = PseudoSource::open(store.dir(), Some(Arc::new(other)))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("the store labels a different image list"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
