// CUDA kernels run on the CPU, for tests on machines without a GPU: each block in turn, its
// threads as std::threads that meet at __syncthreads(); __shared__ variables are static, which
// is per block because one block runs at a time. Kernels that never call __syncthreads() can run
// their threads one after another (`threads = false`), which is much faster.
//
// What this checks: the index arithmetic, bounds, reductions and the order of every sum of a
// kernel, compiled by a host C++ compiler from the same source nvcc compiles. What it does not:
// warp-level intrinsics, memory-model races the GPU would expose, speed.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* emulate_barrier = nullptr;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__

inline void __syncthreads() { emulate_barrier->arrive_and_wait(); }

using std::max;
using std::min;

// Arithmetic with round-to-nearest and no contraction, as on the device.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __ddiv_rn(double a, double b) { return a / b; }

// Runs `kernel` (a closure calling the __global__ function) on a grid of `grid` blocks of
// `block` threads.
template <class F>
void emulate_launch(unsigned grid, unsigned block, bool threads, F kernel) {
    gridDim = dim3{grid, 1, 1};
    blockDim = dim3{block, 1, 1};
    for (unsigned b = 0; b < grid; ++b) {
        if (!threads) {
            blockIdx = dim3{b, 1, 1};
            for (unsigned t = 0; t < block; ++t) {
                threadIdx = dim3{t, 1, 1};
                kernel();
            }
            continue;
        }
        std::barrier<> bar(block);
        emulate_barrier = &bar;
        std::vector<std::thread> pool;
        pool.reserve(block);
        for (unsigned t = 0; t < block; ++t) {
            pool.emplace_back([&, b, t] {
                blockIdx = dim3{b, 1, 1};
                threadIdx = dim3{t, 1, 1};
                kernel();
            });
        }
        for (auto& th : pool) th.join();
        emulate_barrier = nullptr;
    }
}
