// The kernels of ../*.cu behind a command line, for crates/mustard-core/tests/cuda_emulated.rs:
//
//   driver KERNEL OUT_FILE OUT_LEN [IN_FILE ...] -- [INT ...]
//
// reads each IN_FILE as raw little-endian values of the kernel's float type (`f64:FILE`: as
// double, for the kernels' double parameters), launches KERNEL as src/ops/cuda.rs does, and
// writes the OUT_LEN values of its output to OUT_FILE. `bn_backward_*` is the two launches of
// the BatchNorm backward on one output buffer, as the op runs them; `bn_synced_stats_*` and
// `bn_synced_backward_*` run the synchronised BatchNorm of several processes, their sums over
// the processes added in rank order. Errors go to stderr with
// exit status 2.
#include "emulate.hpp"

#include "../batch_norm.cu"
#include "../max_pool.cu"
#include "../peaks.cu"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

template <class T>
static std::vector<T> read_file(const char* path) {
    std::vector<T> v;
    FILE* f = std::fopen(path, "rb");
    if (!f) {
        std::fprintf(stderr, "cannot open %s\n", path);
        std::exit(2);
    }
    T x;
    while (std::fread(&x, sizeof(T), 1, f) == 1) v.push_back(x);
    std::fclose(f);
    return v;
}

template <class T>
static void write_file(const char* path, const std::vector<T>& v) {
    FILE* f = std::fopen(path, "wb");
    if (!f || std::fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) {
        std::fprintf(stderr, "cannot write %s\n", path);
        std::exit(2);
    }
    std::fclose(f);
}

// An output buffer whose every byte is 0xFF (a NaN in f32 and f64), as uninitialised device
// memory could be: a cell the kernel fails to write shows up in the comparison.
template <class T>
static std::vector<T> unwritten(size_t len) {
    std::vector<T> v(len);
    std::memset(static_cast<void*>(v.data()), 0xFF, len * sizeof(T));
    return v;
}

static unsigned blocks_for(long long len) { return (unsigned)std::max(1LL, (len + 255) / 256); }

template <class T>
static int max_pool(bool backward, void (*fwd)(const T*, T*, long long, int, int, int, int, int, int, int),
                    void (*bwd)(const T*, const T*, T*, long long, int, int, int, int, int, int, int),
                    const char* out_path, long long len, const std::vector<const char*>& inputs,
                    const std::vector<long long>& ints) {
    if (ints.size() != 8 || inputs.size() != (backward ? 2u : 1u)) {
        std::fprintf(stderr, "max_pool: expected %d inputs and 8 integers\n", backward ? 2 : 1);
        return 2;
    }
    long long planes = ints[0];
    int d[7];
    for (int i = 0; i < 7; ++i) d[i] = (int)ints[i + 1];
    std::vector<T> x = read_file<T>(inputs[0]);
    std::vector<T> out = unwritten<T>(len);
    if (backward) {
        std::vector<T> g = read_file<T>(inputs[1]);
        emulate_launch(blocks_for(len), 256, false, [&] {
            bwd(x.data(), g.data(), out.data(), planes, d[0], d[1], d[2], d[3], d[4], d[5], d[6]);
        });
    } else {
        emulate_launch(blocks_for(len), 256, false, [&] {
            fwd(x.data(), out.data(), planes, d[0], d[1], d[2], d[3], d[4], d[5], d[6]);
        });
    }
    write_file(out_path, out);
    return 0;
}

template <class T>
static int batch_norm(const std::string& kernel, const char* out_path, long long len,
                      const std::vector<const char*>& inputs, const std::vector<long long>& ints) {
    auto t_in = [&](size_t i) { return read_file<T>(inputs.at(i)); };
    auto d_in = [&](size_t i) {
        std::string name = inputs.at(i);
        if (name.rfind("f64:", 0) != 0) {
            std::fprintf(stderr, "%s: input %zu must be f64:FILE\n", kernel.c_str(), i);
            std::exit(2);
        }
        return read_file<double>(name.c_str() + 4);
    };
    constexpr bool f32 = std::is_same_v<T, float>;
    std::vector<T> out = unwritten<T>(len);
    if (kernel.rfind("mustard_bn_stats_", 0) == 0) {
        auto x = t_in(0);
        int n = (int)ints.at(0), c = (int)ints.at(1);
        long long hw = ints.at(2);
        emulate_launch(c, 256, true, [&] {
            (f32 ? (void (*)(const T*, T*, int, int, long long))mustard_bn_stats_f32
                 : (void (*)(const T*, T*, int, int, long long))mustard_bn_stats_f64)(x.data(), out.data(), n, c, hw);
        });
    } else if (kernel.rfind("mustard_bn_normalize_", 0) == 0) {
        auto x = t_in(0), gamma = t_in(1), beta = t_in(2);
        auto mean = d_in(3), inv_std = d_in(4);
        int c = (int)ints.at(1);
        long long hw = ints.at(2);
        emulate_launch(blocks_for(len), 256, false, [&] {
            using F = void (*)(const T*, const T*, const T*, const double*, const double*, T*, long long, int, long long);
            (f32 ? (F)mustard_bn_normalize_f32 : (F)mustard_bn_normalize_f64)(
                x.data(), gamma.data(), beta.data(), mean.data(), inv_std.data(), out.data(), ints.at(0), c, hw);
        });
    } else if (kernel.rfind("bn_backward_", 0) == 0) {
        auto x = t_in(0), dy = t_in(1);
        auto mean = d_in(2), inv_std = d_in(3), gamma = d_in(4);
        int n = (int)ints.at(0), c = (int)ints.at(1);
        long long hw = ints.at(2), count = (long long)n * hw, elems = count * c;
        std::vector<double> sums = unwritten<double>(2 * (size_t)c);
        emulate_launch(c, 256, true, [&] {
            using F = void (*)(const T*, const T*, const double*, const double*, T*, double*, int, int, long long);
            (f32 ? (F)mustard_bn_grad_sums_f32 : (F)mustard_bn_grad_sums_f64)(
                x.data(), dy.data(), mean.data(), inv_std.data(), out.data(), sums.data(), n, c, hw);
        });
        emulate_launch(blocks_for(elems), 256, false, [&] {
            using F = void (*)(const T*, const T*, const double*, const double*, const double*, const double*, T*,
                               long long, int, long long, long long);
            (f32 ? (F)mustard_bn_grad_input_f32 : (F)mustard_bn_grad_input_f64)(
                x.data(), dy.data(), mean.data(), inv_std.data(), gamma.data(), sums.data(), out.data(), elems, c, hw,
                count);
        });
    } else if (kernel.rfind("bn_synced_stats_", 0) == 0) {
        // Processes p = 0..P: input p holds its (n_p, c, hw) values; integers c, hw, n_0, ...
        // The three launches of src/ops/cuda.rs with each all-reduce a sum in rank order.
        int c = (int)ints.at(0);
        long long hw = ints.at(1);
        size_t procs = ints.size() - 2;
        std::vector<std::vector<T>> xs;
        for (size_t p = 0; p < procs; ++p) xs.push_back(t_in(p));
        std::vector<double> sums(c + 1, 0.0), squares(c, 0.0);
        for (size_t p = 0; p < procs; ++p) {
            std::vector<double> mine = unwritten<double>(c + 1);
            int n = (int)ints.at(2 + p);
            emulate_launch(c, 256, true, [&] {
                using F = void (*)(const T*, double*, int, int, long long);
                (f32 ? (F)mustard_bn_synced_sums_f32 : (F)mustard_bn_synced_sums_f64)(xs[p].data(), mine.data(), n, c,
                                                                                       hw);
            });
            for (int i = 0; i <= c; ++i) sums[i] = p == 0 ? mine[i] : sums[i] + mine[i];
        }
        for (size_t p = 0; p < procs; ++p) {
            std::vector<double> mine = unwritten<double>(c);
            int n = (int)ints.at(2 + p);
            emulate_launch(c, 256, true, [&] {
                using F = void (*)(const T*, const double*, double*, int, int, long long);
                (f32 ? (F)mustard_bn_synced_squares_f32 : (F)mustard_bn_synced_squares_f64)(
                    xs[p].data(), sums.data(), mine.data(), n, c, hw);
            });
            for (int i = 0; i < c; ++i) squares[i] = p == 0 ? mine[i] : squares[i] + mine[i];
        }
        emulate_launch(blocks_for(c), 256, false, [&] {
            using F = void (*)(const double*, const double*, T*, int);
            (f32 ? (F)mustard_bn_synced_stats_f32 : (F)mustard_bn_synced_stats_f64)(sums.data(), squares.data(),
                                                                                     out.data(), c);
        });
    } else if (kernel.rfind("bn_synced_backward_", 0) == 0) {
        // Inputs x_0, dy_0, x_1, dy_1, ..., then f64 mean, inv_std, gamma; integers c, hw, n_0, ...
        // Each process's packed output (n_p·c·hw + 2c values) one after the other.
        int c = (int)ints.at(0);
        long long hw = ints.at(1);
        size_t procs = ints.size() - 2;
        auto mean = d_in(2 * procs), inv_std = d_in(2 * procs + 1), gamma = d_in(2 * procs + 2);
        std::vector<std::vector<T>> xs, dys, packed;
        long long count = 0;
        for (size_t p = 0; p < procs; ++p) {
            xs.push_back(t_in(2 * p));
            dys.push_back(t_in(2 * p + 1));
            count += ints.at(2 + p) * hw;
        }
        std::vector<double> total(2 * (size_t)c, 0.0);
        for (size_t p = 0; p < procs; ++p) {
            int n = (int)ints.at(2 + p);
            packed.push_back(unwritten<T>((size_t)n * c * hw + 2 * c));
            std::vector<double> sums = unwritten<double>(2 * (size_t)c);
            emulate_launch(c, 256, true, [&] {
                using F = void (*)(const T*, const T*, const double*, const double*, T*, double*, int, int, long long);
                (f32 ? (F)mustard_bn_grad_sums_f32 : (F)mustard_bn_grad_sums_f64)(
                    xs[p].data(), dys[p].data(), mean.data(), inv_std.data(), packed[p].data(), sums.data(), n, c, hw);
            });
            for (int i = 0; i < 2 * c; ++i) total[i] = p == 0 ? sums[i] : total[i] + sums[i];
        }
        size_t at = 0;
        for (size_t p = 0; p < procs; ++p) {
            long long elems = ints.at(2 + p) * c * hw;
            emulate_launch(blocks_for(elems), 256, false, [&] {
                using F = void (*)(const T*, const T*, const double*, const double*, const double*, const double*, T*,
                                   long long, int, long long, long long);
                (f32 ? (F)mustard_bn_grad_input_f32 : (F)mustard_bn_grad_input_f64)(
                    xs[p].data(), dys[p].data(), mean.data(), inv_std.data(), gamma.data(), total.data(),
                    packed[p].data(), elems, c, hw, count);
            });
            if (at + packed[p].size() > out.size()) {
                std::fprintf(stderr, "%s: the output holds %zu values, fewer than the processes'\n", kernel.c_str(),
                             out.size());
                return 2;
            }
            std::copy(packed[p].begin(), packed[p].end(), out.begin() + at);
            at += packed[p].size();
        }
    } else {
        std::fprintf(stderr, "unknown kernel %s\n", kernel.c_str());
        return 2;
    }
    write_file(out_path, out);
    return 0;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: driver KERNEL OUT_FILE OUT_LEN [IN_FILE ...] -- [INT ...]\n");
        return 2;
    }
    std::string kernel = argv[1];
    const char* out_path = argv[2];
    long long len = std::atoll(argv[3]);
    std::vector<const char*> inputs;
    std::vector<long long> ints;
    bool in_ints = false;
    for (int i = 4; i < argc; ++i) {
        if (std::strcmp(argv[i], "--") == 0) {
            in_ints = true;
        } else if (in_ints) {
            ints.push_back(std::atoll(argv[i]));
        } else {
            inputs.push_back(argv[i]);
        }
    }
    if (kernel == "mustard_max_pool_f32" || kernel == "mustard_max_pool_bwd_f32") {
        return max_pool<float>(kernel.find("bwd") != std::string::npos, mustard_max_pool_f32,
                               mustard_max_pool_bwd_f32, out_path, len, inputs, ints);
    }
    if (kernel == "mustard_max_pool_f64" || kernel == "mustard_max_pool_bwd_f64") {
        return max_pool<double>(kernel.find("bwd") != std::string::npos, mustard_max_pool_f64,
                                mustard_max_pool_bwd_f64, out_path, len, inputs, ints);
    }
    if (kernel == "mustard_peak_chunks_f32") {
        // Inputs: the heat map; integers: images, n, chunks, h, w, radius (−1: none).
        if (inputs.size() != 1 || ints.size() != 6) {
            std::fprintf(stderr, "%s: expected 1 input and 6 integers\n", kernel.c_str());
            return 2;
        }
        auto heat = read_file<float>(inputs[0]);
        std::vector<float> out = unwritten<float>(len);
        long long images = ints[0], n = ints[1];
        int chunks = (int)ints[2];
        emulate_launch((unsigned)(images * chunks), 256, true, [&] {
            mustard_peak_chunks_f32(heat.data(), out.data(), n, chunks, images, (int)ints[3], (int)ints[4],
                                    (int)ints[5]);
        });
        write_file(out_path, out);
        return 0;
    }
    bool bn = kernel.rfind("mustard_bn_", 0) == 0 || kernel.rfind("bn_backward_", 0) == 0 ||
              kernel.rfind("bn_synced_", 0) == 0;
    if (bn && kernel.size() > 4 && kernel.compare(kernel.size() - 4, 4, "_f32") == 0) {
        return batch_norm<float>(kernel, out_path, len, inputs, ints);
    }
    if (bn && kernel.size() > 4 && kernel.compare(kernel.size() - 4, 4, "_f64") == 0) {
        return batch_norm<double>(kernel, out_path, len, inputs, ints);
    }
    std::fprintf(stderr, "unknown kernel %s\n", kernel.c_str());
    return 2;
}
