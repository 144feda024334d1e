//! Every preset value in one place: the `quick` and `full` configs of a training run, of the
//! MultiTask-CenterNet study and of the MuST pipeline. The command line's help does not restate
//! them; `runs/<name>/config.toml` (and `runs/must/config.toml`, `runs/mcn/config.toml`) shows
//! what a run used.

use mustard_backbone::ResNetPreset;
use mustard_core::DeviceSpec;
use mustard_data::synth::{self, Splits};
use mustard_data::Task;
use mustard_pseudo::Thresholds;

use crate::config::{
    default_loss_weights, Classes, Config, DataConfig, ModelConfig, NeckConfig, Numerics, Preset,
    SynthData, TrainConfig,
};
use crate::mcn::{every_combination, singles_and_joint, McnConfig};
use crate::must::{MustConfig, MustData, StudentRecipe, Transfer};

impl Config {
    /// Tiny model, small synthetic set: minutes on 2 CPU cores.
    pub fn quick(name: &str) -> Self {
        Config {
            name: name.to_string(),
            seed: 0,
            device: DeviceSpec::Cpu,
            numerics: Numerics::default(),
            model: ModelConfig {
                backbone: ResNetPreset::Tiny,
                neck: NeckConfig::Fpn {
                    channels: 32,
                    fuse: true,
                },
                head_conv: 32,
                ..ModelConfig::all_tasks()
            },
            data: DataConfig::synthetic(SynthData {
                train_images: 256,
                val_images: 48,
                size: 96,
                seed: 0,
            }),
            train: TrainConfig {
                // 96 px buys ~1.8x the steps of 128 px in the same time, which the tiny model
                // needs more than resolution.
                input_size: 96,
                batch_size: 16,
                epochs: 12,
                // Measured on the synthetic scenes (quick MCN budget): 1e-3 learns faster than
                // 5e-4 in a few hundred steps.
                lr: 1e-3,
                warmup_steps: 30,
                // Half-strength augmentation; at full strength a few hundred steps of the tiny
                // model barely move past the class prior.
                augment_strength: 0.5,
                ema: None,
                ema_ramp: 100.0,
                patience: None,
                ..TrainConfig::common()
            },
        }
    }

    /// ResNet-18 + FPN at 256 px on a larger synthetic set.
    pub fn full(name: &str) -> Self {
        Config {
            name: name.to_string(),
            seed: 0,
            device: DeviceSpec::Cpu,
            numerics: Numerics::default(),
            model: ModelConfig {
                backbone: ResNetPreset::R18,
                neck: NeckConfig::Fpn {
                    channels: 128,
                    fuse: true,
                },
                head_conv: 64,
                ..ModelConfig::all_tasks()
            },
            data: DataConfig::synthetic(SynthData {
                train_images: 4000,
                val_images: 500,
                size: 256,
                seed: 0,
            }),
            train: TrainConfig {
                input_size: 256,
                batch_size: 32,
                epochs: 70,
                lr: 5e-4,
                warmup_steps: 500,
                augment_strength: 1.0,
                ema: Some(0.9998),
                ema_ramp: 2000.0,
                patience: None,
                ..TrainConfig::common()
            },
        }
    }

    /// The budget of every model of the MultiTask-CenterNet study.
    pub fn mcn(preset: Preset) -> Self {
        let mut config = Config::preset(preset, "mcn");
        match preset {
            Preset::Quick => {
                // 432 steps of 8 images at 96 px per model (142–173 s for the four models on 2
                // cores before the one-pass loss kernels).
                config.train.epochs = 18;
                config.train.batch_size = 8;
                config.data.synth.train_images = 192;
            }
            Preset::Study => {
                // 7 models x 3 seeds at 128 px: 912 steps of 8 images each. At 360 steps
                // keypoint AP stayed at 0.002-0.003 for every model (2026-12-01).
                config.train.epochs = 19;
                config.train.batch_size = 8;
                config.data.synth.train_images = 384;
                config.data.synth.val_images = 96;
            }
            Preset::Full => {}
        }
        config
    }

    /// The quick model at 128 px (pose is measurable from 128 px on, docs/SYNTHETIC.md).
    pub fn study(name: &str) -> Self {
        let mut config = Config::quick(name);
        config.train.input_size = 128;
        config.data.synth.size = 128;
        config
    }
}

impl McnConfig {
    /// The study of `preset`: the quick one compares each task alone with all three together
    /// on one seed; `study` and `full` train each task alone, each pair and all three, with 3
    /// seeds.
    pub fn preset(preset: Preset) -> Self {
        let (variants, seeds) = match preset {
            Preset::Quick => (singles_and_joint(), 1),
            Preset::Study | Preset::Full => (every_combination(), 3),
        };
        McnConfig {
            variants,
            seeds,
            base: Config::mcn(preset),
        }
    }
}

impl ModelConfig {
    /// Every task, a ResNet-18 with the fused FPN; no weights, classes filled by training.
    fn all_tasks() -> Self {
        ModelConfig {
            backbone: ResNetPreset::R18,
            pretrained: None,
            init_from: None,
            neck: NeckConfig::Fpn {
                channels: 128,
                fuse: true,
            },
            head_conv: 64,
            tasks: Task::ALL.to_vec(),
            loss_weights: default_loss_weights(),
            relative_depth: false,
            centre_targets: Default::default(),
            classes: Classes::default(),
        }
    }
}

impl DataConfig {
    /// The synthetic default of the given size.
    fn synthetic(synth: SynthData) -> Self {
        DataConfig {
            train: None,
            val: None,
            root: None,
            skip_bad: false,
            pseudo: None,
            real_labels: false,
            synth,
        }
    }
}

impl TrainConfig {
    /// The values both presets share.
    fn common() -> Self {
        TrainConfig {
            input_size: 256,
            batch_size: 32,
            epochs: 70,
            max_steps: None,
            lr: 5e-4,
            weight_decay: 1e-4,
            warmup_steps: 500,
            clip_grad_norm: Some(10.0),
            checkpoint_every: 100,
            augment: true,
            augment_strength: 1.0,
            workers: None,
            validate: true,
            ema: None,
            ema_ramp: 200.0,
            patience: None,
            sync_batch_norm: true,
        }
    }
}

impl MustConfig {
    /// The settings of `preset` on the synthetic default.
    pub fn preset(preset: Preset) -> Self {
        match preset {
            Preset::Quick => MustConfig::quick(),
            Preset::Full => MustConfig::full(),
            Preset::Study => MustConfig::study(),
        }
    }

    /// The tiny model on small synthetic splits: about 6 minutes on 2 cores (361 s on the Intel
    /// Xeon, 2026-12-06).
    pub fn quick() -> Self {
        let mut base = Config::quick("must");
        base.train.validate = false;
        base.train.batch_size = 8;
        MustConfig {
            tasks: Task::ALL.to_vec(),
            seeds: 1,
            data: MustData::Synthetic {
                splits: Splits {
                    per_task: 192,
                    unlabeled: 384,
                    // One image is 0.4 points of top-1 (1.6 at 64 images, too coarse to tell
                    // a 95% retention from noise); the scenes come after the training ones, so
                    // the test size leaves every trained model as it was.
                    test: 256,
                },
                size: base.data.synth.size,
                seed: base.data.synth.seed,
            },
            // 672 steps of 8 images per teacher (96 px), 816 for the student. At 20 student
            // epochs and the teachers' lr and loss weights the student kept 88–96% of the
            // detection, segmentation, depth and classification teachers' metrics (64 test
            // images); 28 epochs at lr 2e-3 with segmentation and classification weighted 2
            // and 3 kept 97–102% but classification only 90% once scored on 256 test images;
            // 34 epochs with classification weighted 4 kept 95–102% of all four (Intel Xeon,
            // README) until a change of rounding left detection at 84%; over 3 seeds, 50
            // epochs with detection weighted 2 kept 93% of detection and 96–99% of the others
            // (34 epochs: 85%), weighted 3 kept 95.6% (at 128 px: 89% -> 94%); weighted 4 keeps
            // 97.5% (at 128 px: 97.7%) and 95–100% of the others, above the pose teacher
            // (docs/STUDY.md; 3.5 left classification at 93%).
            teacher_epochs: 28,
            student_epochs: 50,
            student: StudentRecipe {
                lr: Some(2e-3),
                loss_weights: Some(
                    [
                        (Task::Detection, 4.0),
                        (Task::Pose, 1.0),
                        (Task::Segmentation, 2.0),
                        (Task::Depth, 1.0),
                        (Task::Classification, 4.0),
                    ]
                    .into_iter()
                    .collect(),
                ),
            },
            // A briefly trained tiny teacher rarely scores a box above SPEC's 0.5: at 0.5 the
            // quick detection teacher (box AP 0.10) kept 11 boxes on 384 images.
            thresholds: Thresholds {
                detection: 0.3,
                pose: 0.3,
                ..Thresholds::default()
            },
            shard_size: 64,
            transfer: Some(Transfer {
                tasks: vec![Task::Segmentation],
                images: 64,
                epochs: 20,
                from_teachers: false,
            }),
            base,
        }
    }

    /// The quick pipeline at 128 px (where pose is measurable), every model with 3 seeds, the
    /// transfer test on every downstream task from the student, from scratch and from each
    /// teacher. About 11 minutes per quiet seed on 2 cores (47 min for the three on the Intel
    /// Xeon with the cores partly shared, 2026-12-06; docs/STUDY.md).
    pub fn study() -> Self {
        let mut config = MustConfig::quick();
        config.base.train.input_size = 128;
        config.base.data.synth.size = 128;
        if let MustData::Synthetic { size, .. } = &mut config.data {
            *size = 128;
        }
        config.seeds = 3;
        if let Some(t) = &mut config.transfer {
            // 4 downstream tasks x 7 initialisations per seed: 80 steps each.
            t.tasks = synth::DOWNSTREAM_TASKS.to_vec();
            t.from_teachers = true;
            t.epochs = 10;
        }
        config
    }

    /// ResNet-18 + FPN at 256 px on larger synthetic splits.
    pub fn full() -> Self {
        let mut base = Config::full("must");
        base.train.validate = false;
        MustConfig {
            tasks: Task::ALL.to_vec(),
            seeds: 1,
            data: MustData::Synthetic {
                splits: Splits {
                    per_task: 4000,
                    unlabeled: 20000,
                    test: 500,
                },
                size: base.data.synth.size,
                seed: base.data.synth.seed,
            },
            teacher_epochs: 40,
            student_epochs: 30,
            student: StudentRecipe::default(),
            thresholds: Thresholds::default(),
            shard_size: 256,
            transfer: Some(Transfer {
                tasks: synth::DOWNSTREAM_TASKS.to_vec(),
                images: 500,
                epochs: 30,
                from_teachers: false,
            }),
            base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The presets as they were before they were gathered here, value by value.
    #[test]
    fn the_presets_keep_their_values() {
        let q = Config::quick("q");
        assert_eq!(
            (q.model.backbone, q.model.head_conv, q.train.input_size),
            (ResNetPreset::Tiny, 32, 96)
        );
        assert_eq!(
            (
                q.train.batch_size,
                q.train.epochs,
                q.train.lr,
                q.train.warmup_steps
            ),
            (16, 12, 1e-3, 30)
        );
        assert_eq!(
            (q.train.augment_strength, q.train.ema, q.train.ema_ramp),
            (0.5, None, 100.0)
        );
        assert_eq!(
            (
                q.data.synth.train_images,
                q.data.synth.val_images,
                q.data.synth.size
            ),
            (256, 48, 96)
        );
        let f = Config::full("f");
        assert_eq!(
            (f.model.backbone, f.model.head_conv, f.train.input_size),
            (ResNetPreset::R18, 64, 256)
        );
        assert_eq!(
            (
                f.train.batch_size,
                f.train.epochs,
                f.train.lr,
                f.train.warmup_steps
            ),
            (32, 70, 5e-4, 500)
        );
        assert_eq!(
            (f.train.augment_strength, f.train.ema, f.train.ema_ramp),
            (1.0, Some(0.9998), 2000.0)
        );
        for c in [&q, &f] {
            assert_eq!(c.train.clip_grad_norm, Some(10.0));
            assert_eq!(
                (c.train.weight_decay, c.train.checkpoint_every),
                (1e-4, 100)
            );
            assert!(c.train.augment && c.train.validate);
            assert_eq!(c.model.tasks, Task::ALL);
            c.validate().unwrap();
        }
        let m = Config::mcn(Preset::Quick);
        assert_eq!(
            (
                m.train.epochs,
                m.train.batch_size,
                m.data.synth.train_images
            ),
            (18, 8, 192)
        );
        let must = MustConfig::quick();
        assert_eq!(
            (must.base.train.batch_size, must.base.train.validate),
            (8, false)
        );
        assert_eq!(
            (must.teacher_epochs, must.student_epochs, must.shard_size),
            (28, 50, 64)
        );
        assert_eq!(must.student.lr, Some(2e-3));
        must.validate().unwrap();
        // The study is the quick recipe at 128 px over 3 seeds.
        let study = MustConfig::study();
        assert_eq!(
            (study.student_epochs, &study.student, study.seeds),
            (50, &must.student, 3)
        );
        assert!(
            matches!(study.data, MustData::Synthetic { ref splits, size, .. } if splits.test == 256 && size == 128)
        );
        MustConfig::full().validate().unwrap();
    }
}
