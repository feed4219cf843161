// Host build of rg_step.cu: runs the kernels' code as one CPU "thread" (grid 1 x block 1), so the
// Philox stream, the samplers, the map and the binning of the GPU kernels can be checked against
// the cpu backend on a machine without a GPU (tests/rg/test_backends_fast.py, which also drives
// the cupy backend's Python side through it).
//
//   g++ -O2 -std=c++17 -Wno-unknown-pragmas -o host_check kernels/host_check.cpp
//   host_check step DTYPE FIRST N K0 K1 MODE NGUIDE TOTAL XMAX NBINS WIDTH ZMAX SHIFT USE_SHARED
//                   PACKED CUM GUIDE COUNTS FLOWS SUMS
//   host_check map DTYPE N Z FRAC QUAD OUT
//   host_check philox N K0 K1 IDX OUT
//
// Scalars are the kernels' arguments in order; upper-case names after them are files holding raw
// little-endian arrays (PACKED uint64, CUM float64, GUIDE int32, Z/FRAC/OUT of DTYPE, QUAD and
// the philox OUT uint32, IDX uint64). COUNTS, FLOWS (uint64) and SUMS (float64) are read, added
// to and written back, as the kernel adds to device arrays. Shared-memory atomics, warp shuffles
// and barriers become plain host operations; expf/logf are the host libm's (a few ulp from
// CUDA's), so a few float32 samples near bin edges may differ from a GPU run.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

using std::fabs;
using std::floor;
using std::fmin;
using std::min;

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(a, b)
#define __shared__

struct HostDim3 {
    unsigned x, y, z;
};
static HostDim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};

static inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * b) >> 32);
}
template <typename T> static inline T __ldg(const T* p) { return *p; }
template <typename T> static inline T __shfl_down_sync(unsigned, T, int) { return T(0); }  // one lane
static inline void __syncthreads() {}
template <typename T> static inline T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}

unsigned int hist[1 << 22];  // the kernel's `extern __shared__ u32 hist[]`

#include "rg_step.cu"

template <typename T> static std::vector<T> read_array(const char* path) {
    std::vector<T> v;
    FILE* f = std::fopen(path, "rb");
    if (!f) {
        std::perror(path);
        std::exit(2);
    }
    T x;
    while (std::fread(&x, sizeof(T), 1, f) == 1) v.push_back(x);
    std::fclose(f);
    return v;
}

template <typename T> static void write_array(const char* path, const std::vector<T>& v) {
    FILE* f = std::fopen(path, "wb");
    if (!f) {
        std::perror(path);
        std::exit(2);
    }
    std::fwrite(v.data(), sizeof(T), v.size(), f);
    std::fclose(f);
}

static u64 arg_u64(const char* s) { return std::strtoull(s, nullptr, 10); }
static double arg_f64(const char* s) { return std::strtod(s, nullptr); }

static int run_step(char** a) {
    const bool f32 = std::strcmp(a[0], "float32") == 0;
    const u64 first = arg_u64(a[1]), n = arg_u64(a[2]);
    const u32 k0 = (u32)arg_u64(a[3]), k1 = (u32)arg_u64(a[4]);
    const int mode = std::atoi(a[5]);
    const i64 nguide = (i64)std::strtoll(a[6], nullptr, 10);
    const double total = arg_f64(a[7]), xmax = arg_f64(a[8]);
    const u32 nbins = (u32)arg_u64(a[9]);
    const double width = arg_f64(a[10]), zmax = arg_f64(a[11]), shift = arg_f64(a[12]);
    const int use_shared = std::atoi(a[13]);
    std::vector<u64> packed = read_array<u64>(a[14]);
    std::vector<double> cum = read_array<double>(a[15]);
    std::vector<int> guide = read_array<int>(a[16]);
    std::vector<u64> counts = read_array<u64>(a[17]);
    std::vector<u64> flows = read_array<u64>(a[18]);
    std::vector<double> sums = read_array<double>(a[19]);
    if (nbins > (1u << 22) || counts.size() != nbins || flows.size() != 3 || sums.size() != 4) {
        std::fprintf(stderr, "bad sizes: nbins %u counts %zu flows %zu sums %zu\n", nbins, counts.size(),
                     flows.size(), sums.size());
        return 2;
    }
    if (f32) {
        rg_step_f32(first, n, k0, k1, mode, packed.data(), cum.data(), guide.data(), nguide, total, xmax, nbins,
                    width, zmax, shift, use_shared, counts.data(), flows.data(), sums.data());
    } else {
        rg_step_f64(first, n, k0, k1, mode, packed.data(), cum.data(), guide.data(), nguide, total, xmax, nbins,
                    width, zmax, shift, use_shared, counts.data(), flows.data(), sums.data());
    }
    write_array(a[17], counts);
    write_array(a[18], flows);
    write_array(a[19], sums);
    return 0;
}

template <typename T> static int run_map(char** a) {
    const i64 n = (i64)std::strtoll(a[1], nullptr, 10);
    std::vector<T> z = read_array<T>(a[2]), frac = read_array<T>(a[3]);
    std::vector<u32> quad = read_array<u32>(a[4]);
    std::vector<T> out(n);
    if ((i64)z.size() != 5 * n || (i64)frac.size() != 4 * n || (i64)quad.size() != 4 * n) return 2;
    if constexpr (sizeof(T) == 4) {
        map_z_f32(z.data(), frac.data(), quad.data(), out.data(), n);
    } else {
        map_z_f64(z.data(), frac.data(), quad.data(), out.data(), n);
    }
    write_array(a[5], out);
    return 0;
}

static int run_philox(char** a) {
    const i64 n = (i64)std::strtoll(a[0], nullptr, 10);
    const u32 k0 = (u32)arg_u64(a[1]), k1 = (u32)arg_u64(a[2]);
    std::vector<u64> idx = read_array<u64>(a[3]);
    std::vector<u32> out(20 * n);
    philox_words(idx.data(), n, k0, k1, out.data());
    write_array(a[4], out);
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 22 && std::strcmp(argv[1], "step") == 0) return run_step(argv + 2);
    if (argc == 8 && std::strcmp(argv[1], "map") == 0) {
        return std::strcmp(argv[2], "float32") == 0 ? run_map<float>(argv + 2) : run_map<double>(argv + 2);
    }
    if (argc == 7 && std::strcmp(argv[1], "philox") == 0) return run_philox(argv + 2);
    std::fprintf(stderr, "usage: see the comment at the top of host_check.cpp\n");
    return 2;
}
