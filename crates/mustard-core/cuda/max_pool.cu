// Max-pooling of (N, C, H, W) maps on CUDA, the same arithmetic as the CPU kernel of
// src/ops/maxpool.rs: the first maximum of a window in scan order wins and a NaN wins at once;
// the backward gathers, for each input element, the gradients of the windows it won, in output
// order (no atomics: the sums are the CPU's, in the CPU's order).

struct Pool {
    int h, w, oh, ow, kernel, stride, padding;
};

// Index in the plane of the winning element of window (oy, ox), or -1 for a window wholly in
// the padding.
template <typename T>
__device__ int window_arg(const T* plane, const Pool p, int oy, int ox, T* best_out) {
    int y0 = oy * p.stride - p.padding, x0 = ox * p.stride - p.padding;
    int y1 = min(y0 + p.kernel, p.h), x1 = min(x0 + p.kernel, p.w);
    y0 = max(y0, 0);
    x0 = max(x0, 0);
    int arg = -1;
    T best = -INFINITY;
    for (int y = y0; y < y1; ++y) {
        for (int x = x0; x < x1; ++x) {
            T v = plane[y * p.w + x];
            if (arg < 0 || v > best || v != v) {
                best = v;
                arg = y * p.w + x;
                if (v != v) {
                    *best_out = best;
                    return arg;
                }
            }
        }
    }
    *best_out = best;
    return arg;
}

template <typename T>
__device__ void max_pool_fwd(const T* x, T* y, long long planes, const Pool p) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long per_plane = (long long)p.oh * p.ow;
    if (i >= planes * per_plane) return;
    long long plane = i / per_plane;
    int j = (int)(i % per_plane);
    T best;
    window_arg(x + plane * p.h * p.w, p, j / p.ow, j % p.ow, &best);
    y[i] = best;
}

template <typename T>
__device__ void max_pool_bwd(const T* input, const T* g, T* dx, long long planes, const Pool p) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long per_plane = (long long)p.h * p.w;
    if (i >= planes * per_plane) return;
    long long plane = i / per_plane;
    int at = (int)(i % per_plane);
    int y = at / p.w, x = at % p.w;
    const T* xp = input + plane * per_plane;
    const T* gp = g + plane * (long long)p.oh * p.ow;
    // The windows that contain (y, x): oy·s − p ≤ y < oy·s − p + k.
    int oy0 = max(0, (y + p.padding - p.kernel + p.stride) / p.stride);
    int oy1 = min(p.oh - 1, (y + p.padding) / p.stride);
    int ox0 = max(0, (x + p.padding - p.kernel + p.stride) / p.stride);
    int ox1 = min(p.ow - 1, (x + p.padding) / p.stride);
    T sum = 0;
    for (int oy = oy0; oy <= oy1; ++oy) {
        for (int ox = ox0; ox <= ox1; ++ox) {
            T best;
            if (window_arg(xp, p, oy, ox, &best) == at) {
                sum += gp[oy * p.ow + ox];
            }
        }
    }
    dx[i] = sum;
}

#define POOL_ARGS int h, int w, int oh, int ow, int kernel, int stride, int padding
#define POOL Pool{h, w, oh, ow, kernel, stride, padding}

extern "C" __global__ void __launch_bounds__(256) mustard_max_pool_f32(const float* x, float* y, long long planes, POOL_ARGS) {
    max_pool_fwd<float>(x, y, planes, POOL);
}
extern "C" __global__ void __launch_bounds__(256) mustard_max_pool_f64(const double* x, double* y, long long planes, POOL_ARGS) {
    max_pool_fwd<double>(x, y, planes, POOL);
}
extern "C" __global__ void __launch_bounds__(256) mustard_max_pool_bwd_f32(const float* x, const float* g, float* dx, long long planes, POOL_ARGS) {
    max_pool_bwd<float>(x, g, dx, planes, POOL);
}
extern "C" __global__ void __launch_bounds__(256) mustard_max_pool_bwd_f64(const double* x, const double* g, double* dx, long long planes, POOL_ARGS) {
    max_pool_bwd<double>(x, g, dx, planes, POOL);
}
