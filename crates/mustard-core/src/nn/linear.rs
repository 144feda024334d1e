use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::{default_init, snapshot};
use crate::Result;

/// A fully connected layer with PyTorch's weight layout `(out, in)`.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// Creates (or loads) `weight` and `bias` under `vb`.
    pub fn new(in_features: usize, out_features: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let init = default_init(in_features);
        let weight = vb.get_with_hints((out_features, in_features), "weight", init)?;
        let bias = vb.get_with_hints(out_features, "bias", init)?;
        Ok(Self {
            inner: candle_nn::Linear::new(weight, Some(bias)),
        })
    }

    /// A copy for inference: the weight and bias copied as they are now, without gradients
    /// (later changes of the variables do not reach it).
    pub fn for_inference(&self) -> Result<Self> {
        let weight = snapshot(self.inner.weight())?;
        let bias = self.inner.bias().map(snapshot).transpose()?;
        Ok(Self {
            inner: candle_nn::Linear::new(weight, bias),
        })
    }

    /// The weight, `(out, in)`.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// Appends this layer to `g` as a `Gemm` node reading a `(N, in)` value `x`; returns its
    /// output.
    pub fn onnx(&self, g: &mut crate::onnx::Graph, x: &str, name: &str) -> Result<String> {
        let weight = g.weight(&format!("{name}.weight"), self.inner.weight())?;
        let bias = match self.inner.bias() {
            Some(b) => g.weight(&format!("{name}.bias"), b)?,
            None => String::new(),
        };
        let inputs: Vec<&str> = [x, weight.as_str(), bias.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        Ok(g.node(
            "Gemm",
            name,
            &inputs,
            vec![("transB", crate::onnx::Attr::Int(1))],
        ))
    }
}

impl Module for Linear {
    /// # Shapes
    /// `(…, in)` → `(…, out)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.inner.forward(x)
    }
}
