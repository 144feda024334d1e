use candle_core::{ModuleT, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use super::snapshot;
use crate::{Error, Result};

/// Hyperparameters of [`BatchNorm2d`] (PyTorch defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNorm2dConfig {
    /// Added to the variance.
    pub eps: f64,
    /// Weight of the new batch statistics in the running averages.
    pub momentum: f64,
}

impl Default for BatchNorm2dConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

/// Batch normalisation over `(N, H, W)` per channel.
///
/// - training (`forward_t(x, true)`): normalises with the batch statistics and updates the
///   running mean and the unbiased running variance, as PyTorch does;
/// - evaluation (`forward_t(x, false)`): normalises with the running statistics;
/// - frozen ([`BatchNorm2d::freeze`]): always the running statistics, and γ, β get no gradient.
///
/// The running statistics are stored as `running_mean` / `running_var` under the layer's prefix
/// so that they are saved with the weights; they are not parameters (see
/// [`crate::optim::param_groups`]).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    config: BatchNorm2dConfig,
    frozen: bool,
}

impl BatchNorm2d {
    /// Creates (or loads) `weight`, `bias`, `running_mean` and `running_var` under `vb`.
    pub fn new(channels: usize, config: BatchNorm2dConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let running_mean =
            Var::from_tensor(&vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?)?;
        let running_var =
            Var::from_tensor(&vb.get_with_hints(channels, "running_var", Init::Const(1.0))?)?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            config,
            frozen: false,
        })
    }

    /// A copy for inference: γ, β and the running statistics copied as they are now, without
    /// gradients (later changes of the variables do not reach it).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self {
            weight: snapshot(&self.weight)?,
            bias: snapshot(&self.bias)?,
            running_mean: Var::from_tensor(&snapshot(self.running_mean.as_tensor())?)?,
            running_var: Var::from_tensor(&snapshot(self.running_var.as_tensor())?)?,
            config: self.config,
            frozen: self.frozen,
        })
    }

    /// Uses the running statistics in training too and stops γ, β from training.
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// Whether the layer is frozen.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// The running mean, `(C,)`.
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The running variance, `(C,)`.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// Folds the layer into a scale and shift per channel: `y = x · scale + shift` in evaluation.
    pub fn scale_shift(&self) -> Result<(Tensor, Tensor)> {
        let inv_std = (self.running_var.as_tensor() + self.config.eps)?
            .sqrt()?
            .recip()?;
        let scale = (&self.weight * inv_std)?;
        let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
        Ok((scale, shift))
    }

    /// Appends this layer in evaluation mode to `g` as a `BatchNormalization` node reading
    /// `x`; returns its output.
    pub fn onnx(&self, g: &mut crate::onnx::Graph, x: &str, name: &str) -> Result<String> {
        let scale = g.weight(&format!("{name}.weight"), &self.weight)?;
        let bias = g.weight(&format!("{name}.bias"), &self.bias)?;
        let mean = g.weight(
            &format!("{name}.running_mean"),
            self.running_mean.as_tensor(),
        )?;
        let var = g.weight(&format!("{name}.running_var"), self.running_var.as_tensor())?;
        Ok(g.node(
            "BatchNormalization",
            name,
            &[x, &scale, &bias, &mean, &var],
            vec![("epsilon", crate::onnx::Attr::Float(self.config.eps as f32))],
        ))
    }

    fn forward_impl(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (n, c, h, w) = x
            .dims4()
            .map_err(|_| Error::shape("batch_norm2d", "input", x.shape(), "(N, C, H, W)"))?;
        if c != self.weight.dim(0)? {
            return Err(Error::shape(
                "batch_norm2d",
                "input",
                x.shape(),
                format!("{} channels", self.weight.dim(0)?),
            ));
        }
        let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1));
        if !train || self.frozen {
            let (scale, shift) = self.scale_shift()?;
            let (scale, shift) = if self.frozen {
                (scale.detach(), shift.detach())
            } else {
                (scale, shift)
            };
            return Ok(x
                .broadcast_mul(&per_channel(&scale)?)?
                .broadcast_add(&per_channel(&shift)?)?);
        }
        let count = n * h * w;
        if count < 2 {
            return Err(Error::shape(
                "batch_norm2d",
                "input",
                x.shape(),
                "more than one value per channel in training",
            ));
        }
        let (y, stats) =
            crate::ops::batch_norm_train(x, &self.weight, &self.bias, self.config.eps)?;
        // Running statistics: PyTorch uses the unbiased variance here.
        let m = self.config.momentum;
        let mean = stats.mean.to_dtype(self.running_mean.dtype())?;
        // Over every process's values when BatchNorm is synchronised (crate::dist).
        let count = stats.count;
        let unbiased = (stats.var.to_dtype(self.running_var.dtype())? * (count / (count - 1.0)))?;
        let rm = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(y)
    }
}

impl ModuleT for BatchNorm2d {
    /// # Shapes
    /// `(N, C, H, W)` → `(N, C, H, W)`.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.forward_impl(x, train).map_err(|e| match e {
            Error::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    use super::*;

    fn layer() -> (VarMap, BatchNorm2d) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
        (
            varmap.clone(),
            BatchNorm2d::new(1, BatchNorm2dConfig::default(), vb).unwrap(),
        )
    }

    #[test]
    fn training_normalises_and_updates_the_running_statistics_like_pytorch() {
        let (varmap, bn) = layer();
        let x = Tensor::new(&[[[[1.0f64, 2.0], [3.0, 6.0]]]], &Device::Cpu).unwrap();
        let y = bn
            .forward_t(&x, true)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        // mean 3, biased variance 3.5, unbiased 14/3.
        let s = (3.5f64 + 1e-5).sqrt();
        for (got, v) in y.iter().zip([1.0, 2.0, 3.0, 6.0]) {
            assert!((got - (v - 3.0) / s).abs() < 1e-12);
        }
        assert!((bn.running_mean().to_vec1::<f64>().unwrap()[0] - 0.3).abs() < 1e-12);
        assert!(
            (bn.running_var().to_vec1::<f64>().unwrap()[0] - (0.9 + 0.1 * 14.0 / 3.0)).abs()
                < 1e-12
        );
        // The statistics live in the VarMap, so they are saved with the weights.
        let stored = varmap.data().lock().unwrap()["running_mean"]
            .as_tensor()
            .to_vec1::<f64>()
            .unwrap();
        assert!((stored[0] - 0.3).abs() < 1e-12);
        // Evaluation uses the running statistics and changes nothing.
        let e = bn
            .forward_t(&x, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let rv = 0.9 + 0.1 * 14.0 / 3.0;
        assert!((e[0] - (1.0 - 0.3) / (rv + 1e-5f64).sqrt()).abs() < 1e-12);
        assert!((bn.running_mean().to_vec1::<f64>().unwrap()[0] - 0.3).abs() < 1e-12);
    }

    #[test]
    fn frozen_layers_use_running_statistics_and_get_no_gradient() {
        let (varmap, mut bn) = layer();
        bn.freeze();
        let x =
            Var::from_tensor(&Tensor::new(&[[[[1.0f64, 2.0], [3.0, 6.0]]]], &Device::Cpu).unwrap())
                .unwrap();
        let y = bn.forward_t(x.as_tensor(), true).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f64>().unwrap()[3],
            6.0 / (1.0f64 + 1e-5).sqrt()
        );
        let grads = y.sum_all().unwrap().backward().unwrap();
        let weight = varmap.data().lock().unwrap()["weight"].clone();
        assert!(grads.get(weight.as_tensor()).is_none());
        assert!(grads.get(x.as_tensor()).is_some());
        assert_eq!(bn.running_mean().to_vec1::<f64>().unwrap(), [0.0]);
    }

    #[test]
    fn wrong_channel_count_is_an_error() {
        let (_, bn) = layer();
        let x = Tensor::zeros((1, 2, 2, 2), DType::F64, &Device::Cpu).unwrap();
        assert_eq!(
            bn.forward_t(&x, true).unwrap_err().to_string(),
            "batch_norm2d: input has shape [1, 2, 2, 2], expected 1 channels"
        );
    }
}
