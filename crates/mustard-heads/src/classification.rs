//! Image classification from the pooled C5 map.

use mustard_core::candle_core::{DType, Device, Module, Tensor};
use mustard_core::candle_nn::ops::softmax;
use mustard_core::candle_nn::VarBuilder;
use mustard_core::loss::{cross_entropy, soft_cross_entropy};
use mustard_core::nn::Linear;
use mustard_core::{Error, Result};

/// Hyperparameters of classification.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassificationConfig {
    /// Number of classes.
    pub num_classes: usize,
}

/// The label of one image.
#[derive(Debug, Clone, PartialEq)]
pub enum ClassTarget {
    /// A class index.
    Hard(u32),
    /// A probability per class (pseudo-labels).
    Soft(Vec<f32>),
}

/// A batch of image labels.
#[derive(Debug, Clone)]
pub struct ClassificationBatch {
    /// `(B, C)` target distributions (one-hot for hard labels, zero rows for unlabelled images).
    pub probs: Tensor,
    /// `(B,)` 1 where the image is labelled.
    pub presence: Tensor,
}

impl ClassificationBatch {
    /// The same targets on `device` (a no-op on the device they are on).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.map(&|t| Ok(t.to_device(device)?))
    }

    /// Every tensor of the targets passed through `f`.
    pub fn map(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            probs: f(&self.probs)?,
            presence: f(&self.presence)?,
        })
    }
}

/// Stacks image labels; `None` marks an unlabelled image.
pub fn collate(
    labels: &[Option<ClassTarget>],
    num_classes: usize,
    device: &Device,
) -> Result<ClassificationBatch> {
    let mut probs = vec![0f32; labels.len() * num_classes];
    let mut presence = vec![0f32; labels.len()];
    for (i, l) in labels.iter().enumerate() {
        let row = &mut probs[i * num_classes..(i + 1) * num_classes];
        match l {
            None => continue,
            Some(ClassTarget::Hard(c)) if (*c as usize) < num_classes => row[*c as usize] = 1.0,
            Some(ClassTarget::Soft(p)) if p.len() == num_classes => row.copy_from_slice(p),
            Some(other) => {
                return Err(Error::InvalidConfig {
                    what: "classification collate",
                    reason: format!(
                        "label {other:?} of image {i} does not fit {num_classes} classes"
                    ),
                })
            }
        }
        presence[i] = 1.0;
    }
    Ok(ClassificationBatch {
        probs: Tensor::from_vec(probs, (labels.len(), num_classes), device)?,
        presence: Tensor::from_vec(presence, labels.len(), device)?,
    })
}

/// The classification head: global average pool → Linear.
#[derive(Debug, Clone)]
pub struct ClassificationHead {
    fc: Linear,
    config: ClassificationConfig,
}

impl ClassificationHead {
    /// Builds (or loads) the head under `vb` (`fc.*`, as torchvision names it).
    pub fn new(
        in_channels: usize,
        config: &ClassificationConfig,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        Ok(Self {
            fc: Linear::new(in_channels, config.num_classes, vb.pp("fc"))?,
            config: config.clone(),
        })
    }

    /// A copy for inference: the classifier's weights copied as they are now.
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self {
            fc: self.fc.for_inference()?,
            config: self.config.clone(),
        })
    }

    /// # Shapes
    /// `(B, C₅, h, w)` → `(B, num_classes)` logits.
    pub fn forward(&self, c5: &Tensor) -> Result<Tensor> {
        Ok(self.fc.forward(&c5.mean((2, 3))?)?)
    }

    /// Appends the head to `g` under `prefix`, reading C5: logits `(N, classes)`.
    pub fn onnx(
        &self,
        g: &mut mustard_core::onnx::Graph,
        c5: &str,
        prefix: &str,
    ) -> Result<String> {
        let pooled = g.spatial_mean(c5, &format!("{prefix}.pool"));
        self.fc.onnx(g, &pooled, &format!("{prefix}.fc"))
    }

    /// Soft-target cross-entropy (equal to cross-entropy for one-hot rows) over labelled images.
    pub fn loss(&self, logits: &Tensor, t: &ClassificationBatch) -> Result<Tensor> {
        let present: Vec<u32> = t
            .presence
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .enumerate()
            .filter(|(_, &p)| p > 0.0)
            .map(|(i, _)| i as u32)
            .collect();
        if present.is_empty() {
            // No image to count here; the other processes of a data-parallel step still sum
            // their counts with this one's (the losses below count once each).
            mustard_core::dist::global_sum_f64(0.0)?;
            return Ok(logits.sum_all()?.affine(0.0, 0.0)?);
        }
        let idx = Tensor::new(present.as_slice(), logits.device())?;
        let (x, p) = (
            logits.index_select(&idx, 0)?,
            t.probs.index_select(&idx, 0)?,
        );
        let hard = p
            .max(1)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .all(|&m| m == 1.0);
        if hard {
            cross_entropy(&x, &p.argmax(1)?, u32::MAX)
        } else {
            soft_cross_entropy(&x, &p)
        }
    }

    /// Class probabilities per image.
    pub fn decode(&self, logits: &Tensor) -> Result<Vec<Vec<f32>>> {
        Ok(softmax(logits, 1)?.to_vec2::<f32>()?)
    }

    /// The configuration.
    pub fn config(&self) -> &ClassificationConfig {
        &self.config
    }
}
