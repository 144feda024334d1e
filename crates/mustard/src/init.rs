//! Seeded, order-independent initialisation: every variable is drawn from a generator derived
//! from the run's seed and the variable's name, so the same config and seed give the same
//! model whatever the construction order (candle's own initialisers use a global, unseeded
//! generator).

use mustard_core::candle_core::{DType, Device, Shape, Tensor, Var};
use mustard_core::candle_nn::init::NormalOrUniform;
use mustard_core::candle_nn::var_builder::SimpleBackend;
use mustard_core::candle_nn::{Init, VarBuilder, VarMap};
use mustard_core::rng::Rng;

/// A [`VarMap`] whose new variables are initialised from `(seed, name)`.
struct Seeded {
    varmap: VarMap,
    seed: u64,
}

/// FNV-1a of a name.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Values of `init` for `shape`, drawn from `rng` (the same formulas as candle's `Init::var`).
fn sample(init: Init, shape: &Shape, rng: &mut Rng) -> Vec<f64> {
    let n = shape.elem_count();
    let uniform =
        |rng: &mut Rng, lo: f64, hi: f64| (0..n).map(|_| rng.range(lo, hi)).collect::<Vec<_>>();
    let normal = |rng: &mut Rng, mean: f64, std: f64| {
        (0..n)
            .map(|_| mean + std * rng.normal())
            .collect::<Vec<_>>()
    };
    match init {
        Init::Const(c) => vec![c; n],
        Init::Uniform { lo, up } => uniform(rng, lo, up),
        Init::Randn { mean, stdev } => normal(rng, mean, stdev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(rng, -bound, bound)
                }
                NormalOrUniform::Normal => normal(rng, 0.0, std),
            }
        }
    }
}

impl SimpleBackend for Seeded {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> mustard_core::candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("VarMap lock poisoned");
        if let Some(var) = data.get(name) {
            if var.shape() != &shape {
                mustard_core::candle_core::bail!(
                    "shape mismatch on {name}: {shape:?} <> {:?}",
                    var.shape()
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let mut rng = Rng::derive(self.seed, &[name_hash(name)]);
        let values = sample(init, &shape, &mut rng);
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> mustard_core::candle_core::Result<Tensor> {
        mustard_core::candle_core::bail!("`{name}`: a seeded builder creates variables, use `get`")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .contains_key(name)
    }
}

/// A builder that creates the variables of `varmap` from `seed`.
pub fn seeded(varmap: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(Seeded {
            varmap: varmap.clone(),
            seed,
        }),
        dtype,
        device.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_and_name_give_the_same_values_in_any_order() {
        let (a, b) = (VarMap::new(), VarMap::new());
        let dev = Device::Cpu;
        let init = Init::Uniform { lo: -1.0, up: 1.0 };
        let va = seeded(&a, 7, DType::F32, &dev);
        let x1 = va.get_with_hints((2, 3), "x", init).unwrap();
        let y1 = va.get_with_hints(4, "y", init).unwrap();
        let vb = seeded(&b, 7, DType::F32, &dev);
        let y2 = vb.get_with_hints(4, "y", init).unwrap();
        let x2 = vb.get_with_hints((2, 3), "x", init).unwrap();
        assert_eq!(x1.to_vec2::<f32>().unwrap(), x2.to_vec2::<f32>().unwrap());
        assert_eq!(y1.to_vec1::<f32>().unwrap(), y2.to_vec1::<f32>().unwrap());
        assert_ne!(
            x1.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..4],
            y1.to_vec1::<f32>().unwrap()[..]
        );
        let other = seeded(&VarMap::new(), 8, DType::F32, &dev)
            .get_with_hints(4, "y", init)
            .unwrap();
        assert_ne!(
            other.to_vec1::<f32>().unwrap(),
            y1.to_vec1::<f32>().unwrap()
        );
        assert!(a.data().lock().unwrap()["x"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|v| (-1.0..1.0).contains(v)));
    }
}
