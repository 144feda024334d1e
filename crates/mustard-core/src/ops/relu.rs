use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::conv::ReluGradOp;
use super::Real;
use crate::Result;

/// `max(x, 0)` with a one-pass backward: the output gradient where the output is positive.
///
/// candle's ReLU backward builds a zero tensor, compares, converts the mask to floats and
/// multiplies (four passes and three allocations); this one reads the saved output once. The
/// gradient at exactly 0 is 0, as in PyTorch. NaN stays NaN. Other devices and dtypes use
/// candle's ReLU.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if super::cpu_kernels(x)
        && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
    {
        Ok(x.contiguous()?.apply_op1(Relu)?)
    } else {
        Ok(x.relu()?)
    }
}

struct Relu;

fn relu_kernel<T: Real>(x: &[T]) -> Vec<T> {
    super::map(x, |v| if v < T::ZERO { T::ZERO } else { v })
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "mustard.relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = run_typed!(self.name(), &[(s, l)], |x| relu_kernel(x[0]));
        Ok((out, l.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(res, &ReluGradOp)?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn values_and_gradient_equal_candles_away_from_zero() {
        let v: Vec<f64> = (0..60).map(|i| ((i * 37) % 23) as f64 - 11.5).collect();
        let x = Var::from_tensor(&Tensor::from_vec(v, (3, 4, 5), &Device::Cpu).unwrap()).unwrap();
        let w = Tensor::arange(0f64, 60.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4, 5))
            .unwrap();
        let ours = relu(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().relu().unwrap();
        assert_eq!(
            ours.to_vec3::<f64>().unwrap(),
            theirs.to_vec3::<f64>().unwrap()
        );
        let g1 = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&theirs * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (g1, g2) = (g1.get(&x).unwrap(), g2.get(&x).unwrap());
        assert_eq!(g1.to_vec3::<f64>().unwrap(), g2.to_vec3::<f64>().unwrap());
        // Gradient: w where x > 0, else 0.
        assert_eq!(g1.flatten_all().unwrap().to_vec1::<f64>().unwrap()[2], 0.0);
    }

    #[test]
    fn gradient_is_zero_at_zero_and_nan_passes() {
        let x = Var::from_tensor(
            &Tensor::new(&[0f32, -0.0, 2.0, f32::NAN, -3.0], &Device::Cpu).unwrap(),
        )
        .unwrap();
        let y = relu(x.as_tensor()).unwrap();
        let y_values = y.to_vec1::<f32>().unwrap();
        assert_eq!(&y_values[..3], &[0.0, 0.0, 2.0]);
        assert!(y_values[3].is_nan());
        assert_eq!(y_values[4], 0.0);
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(&x).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, vec![0.0, 0.0, 1.0, 0.0, 0.0]);
    }
}
