//! Decoding on the device path (what CUDA and Metal run: suppression and chunk maxima on the
//! device, only the candidate chunks and the gathered sizes, offsets and joints copied) gives
//! the same detections and keypoints, bit for bit, as the CPU scan. Its own test binary: the
//! kernels are a process-wide setting.

use mustard_core::candle_core::{Device, Tensor};
use mustard_core::ops::Kernels;
use mustard_heads::detection::{self, DetectionOutput};
use mustard_heads::pose::{self, PoseOutput};

/// Raw outputs with values from a fixed generator; `levels` quantises the heatmap logits so
/// that scores tie.
fn map(shape: (usize, usize, usize, usize), seed: u64, scale: f32, levels: u64) -> Tensor {
    let mut s = seed;
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % levels) as f32 / levels as f32 * scale - scale / 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn detection_output(b: usize, c: usize, (h, w): (usize, usize), seed: u64) -> DetectionOutput {
    DetectionOutput {
        hm: map((b, c, h, w), seed, 12.0, 40),
        wh: map((b, 2, h, w), seed + 1, 20.0, 1 << 20),
        reg: map((b, 2, h, w), seed + 2, 1.0, 1 << 20),
    }
}

#[test]
fn decoding_on_the_device_path_equals_the_cpu_scan() {
    let det = detection_output(3, 7, (40, 36), 5);
    let person = PoseOutput {
        det: detection_output(2, 1, (24, 28), 9),
        hps: map((2, 2 * 5, 24, 28), 12, 16.0, 1 << 20),
        hm_hp: map((2, 5, 24, 28), 13, 12.0, 30),
        hp_offset: map((2, 2, 24, 28), 14, 1.0, 1 << 20),
    };
    let mut runs = Vec::new();
    for kernels in [Kernels::Fast, Kernels::Portable] {
        kernels.apply();
        runs.push((
            detection::decode(&det, 100).unwrap(),
            pose::decode(&person, 20, 0.1).unwrap(),
        ));
    }
    Kernels::Fast.apply();
    let ((fast_det, fast_pose), (port_det, port_pose)) = (&runs[0], &runs[1]);
    assert_eq!(fast_det.len(), 3);
    assert!(fast_det.iter().all(|d| d.len() == 100));
    assert_eq!(fast_det, port_det);
    assert_eq!(fast_pose.len(), 2);
    assert!(fast_pose.iter().all(|d| d.len() == 20));
    // Some joints snapped to a heatmap peak (score above the threshold), some kept the
    // regressed position: both branches are compared.
    let joints: Vec<f32> = fast_pose
        .iter()
        .flatten()
        .flat_map(|d| d.payload.iter().map(|j| j[2]))
        .collect();
    assert!(joints.iter().any(|&s| s > 0.1) && joints.contains(&0.0));
    assert_eq!(fast_pose, port_pose);
}
