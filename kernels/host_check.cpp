// Host build of rg_step.cu: runs the step kernel's code as one CPU "thread" (grid 1 x block 1),
// so the Philox stream, the samplers, the map and the binning of the GPU kernel can be checked
// against the cpu backend on a machine without a GPU (tests/rg/test_backends_fast.py).
//
//   g++ -O2 -std=c++17 -o host_check kernels/host_check.cpp
//   host_check DTYPE FIRST N K0 K1 MODE NBINS WIDTH ZMAX SHIFT PACKED.bin CUM.bin GUIDE.bin OUT.bin
//
// PACKED.bin: uint64[*], CUM.bin: float64[*], GUIDE.bin: int32[*] (raw little-endian arrays).
// OUT.bin: uint64 counts[NBINS], uint64 flows[3], float64 sums[4].
// Shared-memory atomics, warp shuffles and barriers become plain host operations; expf/logf
// are the host libm's (a few ulp from CUDA's), so a few samples near bin edges may differ.

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

int main(int argc, char** argv) {
    if (argc != 15) {
        std::fprintf(stderr, "usage: %s DTYPE FIRST N K0 K1 MODE NBINS WIDTH ZMAX SHIFT PACKED CUM GUIDE OUT\n",
                     argv[0]);
        return 2;
    }
    const bool f32 = std::strcmp(argv[1], "float32") == 0;
    const u64 first = std::strtoull(argv[2], nullptr, 10);
    const u64 n = std::strtoull(argv[3], nullptr, 10);
    const u32 k0 = (u32)std::strtoul(argv[4], nullptr, 10);
    const u32 k1 = (u32)std::strtoul(argv[5], nullptr, 10);
    const int mode = std::atoi(argv[6]);
    const u32 nbins = (u32)std::strtoul(argv[7], nullptr, 10);
    const double width = std::strtod(argv[8], nullptr);
    const double zmax = std::strtod(argv[9], nullptr);
    const double shift = std::strtod(argv[10], nullptr);
    std::vector<u64> packed = read_array<u64>(argv[11]);
    std::vector<double> cum = read_array<double>(argv[12]);
    std::vector<int> guide = read_array<int>(argv[13]);
    if (nbins > (1u << 22)) return 2;
    double total = cum.empty() ? 1.0 : cum.back();
    double xmax = std::nextafter(total, 0.0);
    std::vector<u64> counts(nbins, 0ull), flows(3, 0ull);
    std::vector<double> sums(4, 0.0);
    if (f32) {
        rg_step_f32(first, n, k0, k1, mode, packed.data(), cum.data(), guide.data(), (i64)guide.size(), total, xmax,
                    nbins, width, zmax, shift, 1, counts.data(), flows.data(), sums.data());
    } else {
        rg_step_f64(first, n, k0, k1, mode, packed.data(), cum.data(), guide.data(), (i64)guide.size(), total, xmax,
                    nbins, width, zmax, shift, 1, counts.data(), flows.data(), sums.data());
    }
    FILE* out = std::fopen(argv[14], "wb");
    if (!out) {
        std::perror(argv[14]);
        return 2;
    }
    std::fwrite(counts.data(), sizeof(u64), counts.size(), out);
    std::fwrite(flows.data(), sizeof(u64), flows.size(), out);
    std::fwrite(sums.data(), sizeof(double), sums.size(), out);
    std::fclose(out);
    return 0;
}
