// Heatmap peaks on CUDA, for the top-K of src/heatmap.rs (`select_on_device`): one block of
// CHUNK threads per chunk of CHUNK values of an image's flattened (C, H, W) map. Each thread
// suppresses its value unless it is the maximum of its (2r + 1)² window in its plane (clipped at
// the borders; suppressed values become +0, as in `heatmap::nms`), writes the kept value to its
// row of the chunk table (−∞ past the end of the map), and the block writes the chunk's maximum
// (a NaN anywhere in the chunk wins, so that the host sees it). Equal to suppression by
// max-pooling followed by a maximum per chunk, in one pass, except that a NaN is kept (`nms`
// turns it into 0): on purpose, the host then reports it as the CPU scan does.

#define CHUNK 256

template <typename T>
__device__ void peak_chunks(const T* heat, T* out, long long n, int chunks, long long images,
                            int h, int w, int radius) {
    __shared__ T best[CHUNK];
    int t = threadIdx.x;
    long long image = blockIdx.x / chunks;
    long long i = (long long)(blockIdx.x % chunks) * CHUNK + t;
    T kept = -INFINITY;
    if (i < n) {
        const T* map = heat + image * n;
        T v = map[i];
        kept = v;
        if (radius >= 0 && v == v) {
            long long hw = (long long)h * w;
            const T* plane = map + (i / hw) * hw;
            int at = (int)(i % hw), y = at / w, x = at % w;
            int y0 = max(y - radius, 0), y1 = min(y + radius + 1, h);
            int x0 = max(x - radius, 0), x1 = min(x + radius + 1, w);
            bool local = true;
            for (int yy = y0; yy < y1; ++yy) {
                for (int xx = x0; xx < x1; ++xx) {
                    if (!(plane[yy * w + xx] <= v)) local = false;
                }
            }
            if (!local) kept = (T)0;
        }
    }
    out[(long long)blockIdx.x * CHUNK + t] = kept;
    best[t] = kept;
    __syncthreads();
    for (int s = CHUNK / 2; s > 0; s >>= 1) {
        if (t < s) {
            T a = best[t], b = best[t + s];
            best[t] = (b > a || b != b) ? b : a;
        }
        __syncthreads();
    }
    if (t == 0) out[images * chunks * CHUNK + blockIdx.x] = best[0];
}

// `out` holds images·chunks·CHUNK kept values (the chunk table), then images·chunks maxima.
extern "C" __global__ void __launch_bounds__(CHUNK) mustard_peak_chunks_f32(
    const float* heat, float* out, long long n, int chunks, long long images, int h, int w,
    int radius) {
    peak_chunks<float>(heat, out, n, chunks, images, h, w, radius);
}
