//! How the process keeps memory it frees.
//!
//! A network allocates a fresh buffer for every activation and frees it a few operations later.
//! glibc hands blocks above 128 KiB (or above a threshold it raises as blocks are freed) to
//! `mmap`, and returns the free top of its heap to the kernel; the next activation of the same
//! size then faults in new pages, which the kernel zeroes first. For one 512x512 image through
//! the MCN network at two threads that churn cost about 20% of the forward pass
//! (`docs/PERFORMANCE.md`), with the page-fault handling serialised behind the process's memory
//! map.

/// Keeps memory freed by the process for reuse instead of returning it to the kernel: blocks of
/// every size come from the heap (`mmap` is not used for large blocks), and the heap is trimmed
/// only when 1 GiB of it is free. Call it once at start-up, before the threads allocate.
///
/// An earlier form raised glibc's mmap threshold to its ceiling, 32 MiB, and left larger
/// blocks to `mmap`; the MCN network's training step at batch 8 makes a dozen tensors above it
/// (the stem's output and its gradients, the heads' joined hidden map), and their pages,
/// faulted in and zeroed again at every step, were 63 000 page faults per step, about 6% of
/// it on a 2-core VM. Freed blocks are coalesced and reused, so the peak grows little (1306
/// against 1284 MiB on that step).
///
/// Returns whether the allocator accepted the settings: glibc on Linux does; elsewhere this does
/// nothing and returns `false`.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        // From glibc's <malloc.h>.
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_MAX: c_int = -4;
        // SAFETY: `mallopt` only sets allocator parameters and may be called at any time; both
        // values are inside the ranges glibc accepts.
        unsafe { mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(super::retain_freed_memory());
        // Allocation still works, above and below the new threshold.
        let big = vec![1u8; 40 << 20];
        let small = vec![2u8; 1 << 20];
        assert_eq!(big[(40 << 20) - 1] as usize + small[0] as usize, 3);
    }
}
