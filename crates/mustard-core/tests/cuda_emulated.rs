//! mustard's CUDA kernels (`cuda/*.cu`), compiled by the host C++ compiler with
//! `cuda/emulate/emulate.hpp` and run on the CPU, against the CPU kernels of the same ops: the
//! index arithmetic, bounds, block reductions and rounding of the very source nvcc compiles,
//! checked on machines without a GPU (`tests/cuda.rs` runs the PTX on a GPU when there is one).
//! Bit for bit where a kernel does the CPU kernel's arithmetic in the CPU kernel's order
//! (max-pooling; BatchNorm's element-wise passes); BatchNorm's per-channel sums are a tree over
//! 256 threads instead of a running sum, in double, so they agree to double rounding.
//!
//! Skipped, with the reason printed, when no C++20 compiler (`$CXX`, else `c++`) is found,
//! unless `MUSTARD_REQUIRE_EMULATION=1`.

mod parity;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{DType, Tensor, Var};
use mustard_core::ops::{self, MaxPool2dConfig};

/// An input file of double values (the kernels' `const double*` parameters).
struct F64(Vec<f64>);

/// The emulation driver, compiled once per test binary; `None` when there is no compiler.
fn driver() -> Option<&'static Path> {
    static DRIVER: OnceLock<Option<PathBuf>> = OnceLock::new();
    DRIVER
        .get_or_init(|| {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mustard-cuda-emulated");
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda/emulate/driver.cpp");
            let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
            let compile = |extra: &[&str]| {
                Command::new(&cxx)
                    .args([
                        "-std=c++20",
                        "-O1",
                        "-pthread",
                        "-Wall",
                        "-Werror",
                        "-x",
                        "c++",
                    ])
                    .args(extra)
                    .arg(&source)
                    .arg("-o")
                    .arg(&out)
                    .output()
            };
            // Out-of-bounds accesses and undefined behaviour fail the run where the compiler
            // has the sanitizers; without them, the plain build still checks every value.
            let sanitized = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"];
            let result = match compile(&sanitized) {
                Ok(o) if o.status.success() => Ok(o),
                _ => compile(&[]),
            };
            match result {
                Ok(o) if o.status.success() => Some(out),
                Ok(o) => panic!(
                    "{cxx} failed on {}:\n{}",
                    source.display(),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) if std::env::var_os("MUSTARD_REQUIRE_EMULATION").is_some() => {
                    panic!("MUSTARD_REQUIRE_EMULATION is set but {cxx} cannot run: {e}")
                }
                Err(e) => {
                    eprintln!("skipped: no C++ compiler to emulate the CUDA kernels ({cxx}: {e})");
                    None
                }
            }
        })
        .as_deref()
}

/// Raw little-endian bytes of a tensor's values.
fn bytes(t: &Tensor) -> Vec<u8> {
    match t.dtype() {
        DType::F32 => t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => t
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => panic!("no emulation for {other:?}"),
    }
}

/// Values as f64 bit patterns of their own type (so that −0 and NaN payloads compare too).
fn bits(t: &Tensor) -> Vec<u64> {
    bytes(t)
        .chunks(t.dtype().size_in_bytes())
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect()
}

/// Runs `kernel` of the emulated module on `inputs` with integer arguments `ints`; the output
/// has `len` values of the inputs' type.
fn emulate(driver: &Path, kernel: &str, inputs: &[&Tensor], ints: &[i64], len: usize) -> Vec<u64> {
    emulate_with(driver, kernel, inputs, &[], ints, len)
}

/// [`emulate`] with double-valued inputs after the tensors.
fn emulate_with(
    driver: &Path,
    kernel: &str,
    inputs: &[&Tensor],
    doubles: &[&F64],
    ints: &[i64],
    len: usize,
) -> Vec<u64> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "emulated-{}-{kernel}-{}",
        std::process::id(),
        ints.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join("_")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(driver);
    let out = dir.join("out.bin");
    cmd.arg(kernel).arg(&out).arg(len.to_string());
    for (i, t) in inputs.iter().enumerate() {
        let path = dir.join(format!("in{i}.bin"));
        std::fs::write(&path, bytes(t)).unwrap();
        cmd.arg(path);
    }
    for (i, d) in doubles.iter().enumerate() {
        let path = dir.join(format!("f64-{i}.bin"));
        let raw: Vec<u8> = d.0.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, raw).unwrap();
        cmd.arg(format!("f64:{}", path.display()));
    }
    cmd.arg("--").args(ints.iter().map(|i| i.to_string()));
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{kernel}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let raw = std::fs::read(&out).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let size = inputs[0].dtype().size_in_bytes();
    assert_eq!(raw.len(), len * size, "{kernel}: output length");
    raw.chunks(size)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect()
}

/// Asserts equal bit patterns, naming the first difference and how many there are.
fn same_bits(emulated: &[u64], cpu: &[u64], what: &str) {
    assert_eq!(emulated.len(), cpu.len(), "{what}: lengths");
    let differ: Vec<usize> = (0..cpu.len()).filter(|&i| emulated[i] != cpu[i]).collect();
    if let Some(&i) = differ.first() {
        panic!(
            "{what}: {} of {} values differ, the first at {i}: bits {:#x} emulated, {:#x} on the CPU",
            differ.len(),
            cpu.len(),
            emulated[i],
            cpu[i]
        );
    }
}

/// Max-pooling forward and backward, emulated, against the CPU kernel.
fn max_pool_case(driver: &Path, x: &Tensor, config: MaxPool2dConfig) {
    let (n, c, h, w) = x.dims4().unwrap();
    let var = Var::from_tensor(x).unwrap();
    let y = ops::max_pool2d(var.as_tensor(), config).unwrap();
    let (_, _, oh, ow) = y.dims4().unwrap();
    let probe = parity::input(y.dims(), 99, x.dtype());
    let dx = (&y * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
        .get(&var)
        .unwrap()
        .clone();
    let suffix = if x.dtype() == DType::F32 {
        "f32"
    } else {
        "f64"
    };
    let ints = [
        (n * c) as i64,
        h as i64,
        w as i64,
        oh as i64,
        ow as i64,
        config.kernel as i64,
        config.stride as i64,
        config.padding as i64,
    ];
    let what = format!("{:?} {suffix} {config:?}", x.dims());
    let fwd = emulate(
        driver,
        &format!("mustard_max_pool_{suffix}"),
        &[x],
        &ints,
        y.elem_count(),
    );
    same_bits(&fwd, &bits(&y), &format!("forward, {what}"));
    let bwd = emulate(
        driver,
        &format!("mustard_max_pool_bwd_{suffix}"),
        &[x, &probe],
        &ints,
        x.elem_count(),
    );
    same_bits(&bwd, &bits(&dx), &format!("backward, {what}"));
}

#[test]
fn emulated_max_pool_kernels_equal_the_cpu_kernel_bit_for_bit() {
    let Some(driver) = driver() else {
        return;
    };
    for dtype in [DType::F32, DType::F64] {
        let x = parity::input(&[2, 3, 9, 10], 1, dtype);
        let ties = parity::ties(&[2, 3, 11, 9], 7, dtype);
        for (kernel, stride, padding) in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 2), (1, 1, 0)] {
            let config = MaxPool2dConfig {
                kernel,
                stride,
                padding,
            };
            max_pool_case(driver, &x, config);
            max_pool_case(driver, &ties, config);
        }
    }
}

/// The values of bit patterns of `dtype`, as f64.
fn values(bits: &[u64], dtype: DType) -> Vec<f64> {
    bits.iter()
        .map(|&b| match dtype {
            DType::F32 => f32::from_bits(b as u32) as f64,
            _ => f64::from_bits(b),
        })
        .collect()
}

/// Asserts `emulated` within `tolerance` of `cpu`, relative to the largest magnitude of `cpu`.
fn close(emulated: &[f64], cpu: &[f64], tolerance: f64, what: &str) {
    assert_eq!(emulated.len(), cpu.len(), "{what}: lengths");
    let scale = cpu.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
    let (i, worst) = (0..cpu.len())
        .map(|i| (i, (emulated[i] - cpu[i]).abs() / scale))
        .fold((0, 0f64), |a, b| if b.1 > a.1 { b } else { a });
    assert!(
        worst <= tolerance,
        "{what}: {worst:e} relative at {i} ({} emulated, {} on the CPU), above {tolerance:e}",
        emulated[i],
        cpu[i]
    );
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Training BatchNorm by the CPU op on seeded inputs, and its gradients against a seeded probe
/// of the output: what the emulated kernels are held to.
struct BatchNormReference {
    eps: f64,
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    y: Tensor,
    stats: ops::BatchStats,
    probe: Tensor,
    /// The gradients of x, γ and β.
    dx: Tensor,
    dgamma: Tensor,
    dbeta: Tensor,
}

fn batch_norm_reference(
    (n, c, h, w): (usize, usize, usize, usize),
    dtype: DType,
) -> BatchNormReference {
    let eps = 1e-5;
    let x = parity::input(&[n, c, h, w], 3, dtype)
        .affine(3.0, 0.5)
        .unwrap();
    let gamma = parity::input(&[c], 4, dtype);
    let beta = parity::input(&[c], 5, dtype);
    let (xv, gv, bv) = (
        Var::from_tensor(&x).unwrap(),
        Var::from_tensor(&gamma).unwrap(),
        Var::from_tensor(&beta).unwrap(),
    );
    let (y, stats) =
        ops::batch_norm_train(xv.as_tensor(), gv.as_tensor(), bv.as_tensor(), eps).unwrap();
    let probe = parity::input(y.dims(), 99, dtype);
    let grads = (&y * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grad = |v: &Var| grads.get(v).unwrap().clone();
    BatchNormReference {
        eps,
        dx: grad(&xv),
        dgamma: grad(&gv),
        dbeta: grad(&bv),
        x,
        gamma,
        beta,
        y,
        stats,
        probe,
    }
}

/// Training BatchNorm's three CUDA passes, emulated, against the CPU op: statistics, the
/// normalisation (given the CPU's statistics, as the op passes them) and the backward.
fn batch_norm_case(driver: &Path, shape: (usize, usize, usize, usize), dtype: DType) {
    let (n, c, h, w) = shape;
    let BatchNormReference {
        eps,
        x,
        gamma,
        beta,
        y,
        stats,
        probe,
        dx,
        dgamma,
        dbeta,
    } = batch_norm_reference(shape, dtype);
    let suffix = if dtype == DType::F32 { "f32" } else { "f64" };
    let what = format!("{shape:?} {suffix}");
    let dims = [n as i64, c as i64, (h * w) as i64];
    // Sums in another order, in double: the statistics agree to a rounding of T.
    let tolerance = if dtype == DType::F32 { 2e-7 } else { 1e-14 };
    let emulated = values(
        &emulate(
            driver,
            &format!("mustard_bn_stats_{suffix}"),
            &[&x],
            &dims,
            2 * c,
        ),
        dtype,
    );
    close(
        &emulated[..c],
        &flat(&stats.mean),
        tolerance,
        &format!("mean, {what}"),
    );
    close(
        &emulated[c..],
        &flat(&stats.var),
        tolerance,
        &format!("variance, {what}"),
    );
    // What the op hands the element-wise kernels: its statistics, read back as double.
    let mean = F64(flat(&stats.mean));
    let inv_std = F64(flat(&stats.var)
        .iter()
        .map(|v| 1.0 / (v + eps).sqrt())
        .collect());
    let len = n * c * h * w;
    let normalized = emulate_with(
        driver,
        &format!("mustard_bn_normalize_{suffix}"),
        &[&x, &gamma, &beta],
        &[&mean, &inv_std],
        &[len as i64, c as i64, (h * w) as i64],
        len,
    );
    same_bits(&normalized, &bits(&y), &format!("normalisation, {what}"));
    let packed = values(
        &emulate_with(
            driver,
            &format!("bn_backward_{suffix}"),
            &[&x, &probe],
            &[&mean, &inv_std, &F64(flat(&gamma))],
            &dims,
            len + 2 * c,
        ),
        dtype,
    );
    let tolerance = if dtype == DType::F32 { 2e-7 } else { 1e-13 };
    close(
        &packed[..len],
        &flat(&dx),
        tolerance,
        &format!("dx, {what}"),
    );
    close(
        &packed[len..len + c],
        &flat(&dgamma),
        tolerance,
        &format!("dgamma, {what}"),
    );
    close(
        &packed[len + c..],
        &flat(&dbeta),
        tolerance,
        &format!("dbeta, {what}"),
    );
}

#[test]
fn emulated_batch_norm_kernels_agree_with_the_cpu_kernel() {
    let Some(driver) = driver() else {
        return;
    };
    for dtype in [DType::F32, DType::F64] {
        // Fewer values per channel than threads, a few per thread, and many.
        for shape in [(2, 3, 3, 4), (2, 3, 9, 10), (4, 5, 17, 13), (3, 2, 40, 36)] {
            batch_norm_case(driver, shape, dtype);
        }
    }
}

/// BatchNorm synchronised over processes (`mustard_bn_synced_*` and the backward with its sums
/// all-reduced), emulated with the batch split into `split` images per process: one process
/// gives the statistics of `mustard_bn_stats_*` bit for bit; several give the CPU op's
/// statistics and gradients of the whole batch, as one process would.
fn synced_batch_norm_case(
    driver: &Path,
    shape: (usize, usize, usize, usize),
    dtype: DType,
    split: &[usize],
) {
    let (n, c, h, w) = shape;
    assert_eq!(split.iter().sum::<usize>(), n);
    let BatchNormReference {
        eps,
        x,
        gamma,
        stats,
        probe,
        dx: want_dx,
        dgamma: want_dgamma,
        dbeta: want_dbeta,
        ..
    } = batch_norm_reference(shape, dtype);
    let suffix = if dtype == DType::F32 { "f32" } else { "f64" };
    let what = format!("{shape:?} {suffix} over {split:?}");
    let mut starts = vec![0];
    for s in split {
        starts.push(starts.last().unwrap() + s);
    }
    let part = |t: &Tensor, p: usize| {
        t.narrow(0, starts[p], split[p])
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let xs: Vec<Tensor> = (0..split.len()).map(|p| part(&x, p)).collect();
    let dys: Vec<Tensor> = (0..split.len()).map(|p| part(&probe, p)).collect();
    let hw = (h * w) as i64;
    let mut ints = vec![c as i64, hw];
    ints.extend(split.iter().map(|&s| s as i64));
    let emulated = emulate(
        driver,
        &format!("bn_synced_stats_{suffix}"),
        &xs.iter().collect::<Vec<_>>(),
        &ints,
        2 * c,
    );
    if split.len() == 1 {
        let single = emulate(
            driver,
            &format!("mustard_bn_stats_{suffix}"),
            &[&x],
            &[n as i64, c as i64, hw],
            2 * c,
        );
        same_bits(&emulated, &single, &format!("statistics, {what}"));
    }
    let emulated = values(&emulated, dtype);
    let tolerance = if dtype == DType::F32 { 2e-7 } else { 1e-14 };
    close(
        &emulated[..c],
        &flat(&stats.mean),
        tolerance,
        &format!("mean, {what}"),
    );
    close(
        &emulated[c..],
        &flat(&stats.var),
        tolerance,
        &format!("variance, {what}"),
    );
    let mean = F64(flat(&stats.mean));
    let inv_std = F64(flat(&stats.var)
        .iter()
        .map(|v| 1.0 / (v + eps).sqrt())
        .collect());
    let mut inputs = Vec::new();
    for p in 0..split.len() {
        inputs.push(&xs[p]);
        inputs.push(&dys[p]);
    }
    let len = n * c * h * w;
    let packed = values(
        &emulate_with(
            driver,
            &format!("bn_synced_backward_{suffix}"),
            &inputs,
            &[&mean, &inv_std, &F64(flat(&gamma))],
            &ints,
            len + 2 * c * split.len(),
        ),
        dtype,
    );
    // Each process's input gradient is its part of the one-process gradient; its γ and β
    // gradients are its own sums, which add up to the one-process ones.
    let (mut dx, mut dgamma, mut dbeta) = (Vec::new(), vec![0.0; c], vec![0.0; c]);
    let mut at = 0;
    for &s in split {
        let elems = s * c * h * w;
        dx.extend_from_slice(&packed[at..at + elems]);
        for ch in 0..c {
            dgamma[ch] += packed[at + elems + ch];
            dbeta[ch] += packed[at + elems + c + ch];
        }
        at += elems + 2 * c;
    }
    let tolerance = if dtype == DType::F32 { 1e-6 } else { 1e-13 };
    close(&dx, &flat(&want_dx), tolerance, &format!("dx, {what}"));
    close(
        &dgamma,
        &flat(&want_dgamma),
        tolerance,
        &format!("dgamma, {what}"),
    );
    close(
        &dbeta,
        &flat(&want_dbeta),
        tolerance,
        &format!("dbeta, {what}"),
    );
}

#[test]
fn emulated_synced_batch_norm_of_several_processes_is_that_of_one() {
    let Some(driver) = driver() else {
        return;
    };
    for dtype in [DType::F32, DType::F64] {
        for (shape, split) in [
            ((3, 3, 9, 10), &[3][..]),
            ((3, 3, 9, 10), &[2, 1][..]),
            ((4, 5, 17, 13), &[2, 1, 1][..]),
            ((8, 2, 20, 18), &[3, 3, 2][..]),
        ] {
            synced_batch_norm_case(driver, shape, dtype, split);
        }
    }
}

/// The heatmap-peaks kernel, emulated, against suppression by `heatmap::nms` (max-pooling)
/// and a maximum per chunk of 256: the chunk table bit for bit, the maxima as values.
fn peak_chunks_case(driver: &Path, heat: &Tensor, radius: Option<usize>) {
    let (b, c, h, w) = heat.dims4().unwrap();
    let n = c * h * w;
    let chunks = n.div_ceil(256);
    let kept = match radius {
        Some(r) => mustard_core::heatmap::nms(heat, 2 * r + 1).unwrap(),
        None => heat.clone(),
    };
    let mut table = kept.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
    for row in &mut table {
        row.resize(chunks * 256, f32::NEG_INFINITY);
    }
    let cells: Vec<f32> = table.concat();
    let maxima: Vec<f32> = cells
        .chunks(256)
        .map(|c| {
            c.iter().fold(
                f32::NEG_INFINITY,
                |m, &v| if v > m || v.is_nan() { v } else { m },
            )
        })
        .collect();
    let ints = [
        b as i64,
        n as i64,
        chunks as i64,
        h as i64,
        w as i64,
        radius.map_or(-1, |r| r as i64),
    ];
    let out = emulate(
        driver,
        "mustard_peak_chunks_f32",
        &[heat],
        &ints,
        b * chunks * 257,
    );
    let what = format!("{:?}, radius {radius:?}", heat.dims());
    let cpu: Vec<u64> = cells.iter().map(|v| v.to_bits() as u64).collect();
    same_bits(&out[..cells.len()], &cpu, &format!("chunk table, {what}"));
    let emulated = values(&out[cells.len()..], DType::F32);
    assert_eq!(emulated.len(), maxima.len());
    for (i, (e, m)) in emulated.iter().zip(&maxima).enumerate() {
        assert!(
            *e == *m as f64 || (e.is_nan() && m.is_nan()),
            "chunk maxima, {what}: chunk {i}: {e} emulated, {m} expected"
        );
    }
}

#[test]
fn emulated_peak_kernel_equals_suppression_then_chunk_maxima() {
    let Some(driver) = driver() else {
        return;
    };
    for (i, shape) in [(2, 3, 9, 7), (2, 5, 17, 13), (1, 4, 16, 16)]
        .into_iter()
        .enumerate()
    {
        let heat = parity::awkward_map(shape, 21 + i as u64);
        for radius in [None, Some(1), Some(2)] {
            peak_chunks_case(driver, &heat, radius);
        }
    }
    // A NaN makes its chunk's maximum NaN, which sends the top-K to the host scan.
    let mut v = vec![0.25f32; 2 * 300];
    v[300 + 257] = f32::NAN;
    let heat = Tensor::from_vec(v, (2, 3, 10, 10), &candle_core::Device::Cpu).unwrap();
    let out = emulate(
        driver,
        "mustard_peak_chunks_f32",
        &[&heat],
        &[2, 300, 2, 10, 10, 1],
        2 * 2 * 257,
    );
    let maxima = values(&out[2 * 2 * 256..], DType::F32);
    assert_eq!(maxima[..3], [0.25, 0.25, 0.25]);
    assert!(maxima[3].is_nan(), "{maxima:?}");
}
