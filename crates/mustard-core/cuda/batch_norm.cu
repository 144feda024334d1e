// Training BatchNorm of (N, C, H, W) maps on CUDA, the arithmetic of the CPU kernels of
// src/ops/batchnorm.rs: statistics and gradient sums accumulated in double, one block per
// channel (a tree over the block's 256 partial sums, so the order of those sums differs from the
// CPU's running sum: results agree to double rounding, not bit for bit); the element-wise passes
// round as the CPU does, operation by operation (explicit _rn intrinsics: no fused
// multiply-add).

#define THREADS 256

__device__ inline float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ inline double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ inline float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ inline double add_rn(double a, double b) { return __dadd_rn(a, b); }

// The sum of every thread's `v` in the block, returned to every thread (the variance pass
// needs the mean in all of them).
__device__ double block_sum(double v, double* shared) {
    int t = threadIdx.x;
    shared[t] = v;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (t < s) shared[t] = __dadd_rn(shared[t], shared[t + s]);
        __syncthreads();
    }
    double total = shared[0];
    __syncthreads();
    return total;
}

// This thread's part of the sum of channel blockIdx.x: plane by plane, each thread a stride of
// the plane (no division per element).
template <typename T>
__device__ double thread_sum(const T* x, int n, int c, long long hw) {
    int ch = blockIdx.x;
    double sum = 0.0;
    for (int img = 0; img < n; ++img) {
        const T* plane = x + ((long long)img * c + ch) * hw;
        for (long long j = threadIdx.x; j < hw; j += THREADS) {
            sum = __dadd_rn(sum, (double)plane[j]);
        }
    }
    return sum;
}

// This thread's part of the squared deviations from `mean` of channel blockIdx.x.
template <typename T>
__device__ double thread_squares(const T* x, double mean, int n, int c, long long hw) {
    int ch = blockIdx.x;
    double sq = 0.0;
    for (int img = 0; img < n; ++img) {
        const T* plane = x + ((long long)img * c + ch) * hw;
        for (long long j = threadIdx.x; j < hw; j += THREADS) {
            double d = __dsub_rn((double)plane[j], mean);
            sq = __dadd_rn(sq, __dmul_rn(d, d));
        }
    }
    return sq;
}

// Per channel (block) the mean and the biased variance (two passes, as the CPU kernel), written
// as T to stats[ch] and stats[C + ch].
template <typename T>
__device__ void channel_stats(const T* x, T* stats, int n, int c, long long hw) {
    __shared__ double shared[THREADS];
    int ch = blockIdx.x;
    long long count = (long long)n * hw;
    double mean = __ddiv_rn(block_sum(thread_sum(x, n, c, hw), shared), (double)count);
    double var = __ddiv_rn(block_sum(thread_squares(x, mean, n, c, hw), shared), (double)count);
    if (threadIdx.x == 0) {
        stats[ch] = (T)mean;
        stats[c + ch] = (T)var;
    }
}

// BatchNorm synchronised over processes, in three launches with a sum over the processes after
// each of the first two (src/ops/cuda.rs): the same passes as channel_stats, over every
// process's values.
//
// 1. Per channel this process's sum, in double, to sums[ch]; sums[c] = this process's values
//    per channel (summed over the processes with the sums: the global count).
template <typename T>
__device__ void synced_sums(const T* x, double* sums, int n, int c, long long hw) {
    __shared__ double shared[THREADS];
    int ch = blockIdx.x;
    double sum = block_sum(thread_sum(x, n, c, hw), shared);
    if (threadIdx.x == 0) {
        sums[ch] = sum;
        if (ch == 0) sums[c] = (double)((long long)n * hw);
    }
}

// 2. Per channel this process's squared deviations from the global mean sums[ch] / sums[c].
template <typename T>
__device__ void synced_squares(const T* x, const double* sums, double* squares, int n, int c,
                               long long hw) {
    __shared__ double shared[THREADS];
    int ch = blockIdx.x;
    double mean = __ddiv_rn(sums[ch], sums[c]);
    double sq = block_sum(thread_squares(x, mean, n, c, hw), shared);
    if (threadIdx.x == 0) squares[ch] = sq;
}

// 3. The global mean and biased variance as T (one thread per channel).
template <typename T>
__device__ void synced_stats(const double* sums, const double* squares, T* stats, int c) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    stats[ch] = (T)__ddiv_rn(sums[ch], sums[c]);
    stats[c + ch] = (T)__ddiv_rn(squares[ch], sums[c]);
}

// y = x·scale + shift per channel, scale = γ·inv_std and shift = β − mean·scale formed in
// double and rounded to T, as the CPU kernel does.
template <typename T>
__device__ void normalize(const T* x, const T* gamma, const T* beta, const double* mean,
                          const double* inv_std, T* y, long long len, int c, long long hw) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    int ch = (int)((i / hw) % c);
    double scale = __dmul_rn((double)gamma[ch], inv_std[ch]);
    double shift = __dsub_rn((double)beta[ch], __dmul_rn(mean[ch], scale));
    y[i] = add_rn(mul_rn(x[i], (T)scale), (T)shift);
}

// Per channel Σ dy and Σ dy·x̂ (double); dγ = Σ dy·x̂ and dβ = Σ dy rounded to T into the tail of
// the packed output `out` (len + 2C values), the double sums into `sums` (2C) for the next pass.
template <typename T>
__device__ void grad_sums(const T* x, const T* dy, const double* mean, const double* inv_std,
                          T* out, double* sums, int n, int c, long long hw) {
    __shared__ double shared[THREADS];
    int ch = blockIdx.x;
    long long count = (long long)n * hw;
    double sdy = 0.0, sdyx = 0.0;
    for (int img = 0; img < n; ++img) {
        long long base = ((long long)img * c + ch) * hw;
        for (long long j = threadIdx.x; j < hw; j += THREADS) {
            double g = (double)dy[base + j];
            sdy = __dadd_rn(sdy, g);
            double d = __dsub_rn((double)x[base + j], mean[ch]);
            sdyx = __dadd_rn(sdyx, __dmul_rn(__dmul_rn(g, d), inv_std[ch]));
        }
    }
    sdy = block_sum(sdy, shared);
    sdyx = block_sum(sdyx, shared);
    if (threadIdx.x == 0) {
        long long len = count * c;
        sums[ch] = sdy;
        sums[c + ch] = sdyx;
        out[len + ch] = (T)sdyx;
        out[len + c + ch] = (T)sdy;
    }
}

// dx = γ·inv_std · (dy − Σdy/count − x̂·Σdy·x̂/count), in double, rounded to T.
template <typename T>
__device__ void grad_input(const T* x, const T* dy, const double* mean, const double* inv_std,
                           const double* gamma, const double* sums, T* out, long long len, int c,
                           long long hw, long long count) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    int ch = (int)((i / hw) % c);
    double k = __dmul_rn(gamma[ch], inv_std[ch]);
    double xhat = __dmul_rn(__dsub_rn((double)x[i], mean[ch]), inv_std[ch]);
    double n = (double)count;
    double inner = __dsub_rn(__dsub_rn((double)dy[i], __ddiv_rn(sums[ch], n)),
                             __ddiv_rn(__dmul_rn(xhat, sums[c + ch]), n));
    out[i] = (T)__dmul_rn(k, inner);
}

// Launched as src/ops/cuda.rs does: the per-channel kernels with one block of THREADS per
// channel, the element-wise ones with one thread per element in blocks of THREADS.
#define ENTRY(SUFFIX, T)                                                                            \
    extern "C" __global__ void __launch_bounds__(THREADS) mustard_bn_stats_##SUFFIX(                \
        const T* x, T* stats, int n, int c, long long hw) {                                         \
        channel_stats<T>(x, stats, n, c, hw);                                                       \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(THREADS) mustard_bn_synced_sums_##SUFFIX(          \
        const T* x, double* sums, int n, int c, long long hw) {                                     \
        synced_sums<T>(x, sums, n, c, hw);                                                          \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(THREADS) mustard_bn_synced_squares_##SUFFIX(       \
        const T* x, const double* sums, double* squares, int n, int c, long long hw) {              \
        synced_squares<T>(x, sums, squares, n, c, hw);                                              \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(THREADS) mustard_bn_synced_stats_##SUFFIX(         \
        const double* sums, const double* squares, T* stats, int c) {                               \
        synced_stats<T>(sums, squares, stats, c);                                                   \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(THREADS) mustard_bn_normalize_##SUFFIX(            \
        const T* x, const T* gamma, const T* beta, const double* mean, const double* inv_std,       \
        T* y, long long len, int c, long long hw) {                                                 \
        normalize<T>(x, gamma, beta, mean, inv_std, y, len, c, hw);                                 \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(THREADS) mustard_bn_grad_sums_##SUFFIX(            \
        const T* x, const T* dy, const double* mean, const double* inv_std, T* out, double* sums,   \
        int n, int c, long long hw) {                                                               \
        grad_sums<T>(x, dy, mean, inv_std, out, sums, n, c, hw);                                    \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(THREADS) mustard_bn_grad_input_##SUFFIX(           \
        const T* x, const T* dy, const double* mean, const double* inv_std, const double* gamma,    \
        const double* sums, T* out, long long len, int c, long long hw, long long count) {          \
        grad_input<T>(x, dy, mean, inv_std, gamma, sums, out, len, c, hw, count);                   \
    }

ENTRY(f32, float)
ENTRY(f64, double)
