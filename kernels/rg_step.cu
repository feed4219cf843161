// One fused RG step on the GPU (opsrg cupy backend): RG_SPEC 2.2 map of the Wheatstone-bridge
// cell, histogram of z' and moment sums, with no per-sample round trip through device memory.
//
// Per sample i (global index, grid-stride loop):
//   * 20 random words from Philox4x32-10 (Salmon et al. 2011), key (k0, k1) = the 64-bit stream
//     key, counter (lo32(i), hi32(i), j, 0) for j = 0..4. Word layout, shared with the cpu
//     backend (opsrg/rg/backends/_cpu_kernels.py), so both draw the same samples for one key:
//     call j gives (x0, x1, x2, x3); input z_{j+1} uses x0, x1, x2 and loop phase Phi_{j+1}
//     (j < 4) uses x3.
//   * 5 input z: MODE_FIRST  z = ln((1-G)/G) + shift with G = (x0 + 1/2) / 2^32;
//                MODE_ALIAS  column = (x0 * nbins) >> 32, keep it if x1 < thr, else its alias,
//                            position in the bin u3 = (x2 >> 8) / 2^24 (float) or (x2 + 1/2) / 2^32;
//                MODE_ICDF   u = 53 bits of (x0, x1), exact inverse of the piecewise-uniform CDF
//                            (guide table, then a forward sweep), as histogram.InverseCDF.
//   * t, r from z: e = exp(-|z|), t^2 = e/(1+e) (z >= 0) or 1/(1+e), r^2 the other one.
//   * phases: (cos, sin) of (pi/2)(q + f - 1/2), q = x3 >> 30, f = (x3 & (2^30-1)) / 2^30,
//     uniform over a full period; the same quarter-period polynomials as the cpu backend.
//   * z' = ln(|N_r|^2 / |N_t|^2); G' = |N_t|^2 / (|N_t|^2 + |N_r|^2) = 1 / (1 + e^z').
//   * histogram: bin = floor((z' + zmax) * nbins / (2 zmax)) in double; below 0 (and -inf) is
//     underflow, >= nbins (and +inf) overflow, NaN nonfinite. A block-private histogram of
//     nbins uint32 in dynamic shared memory (50 000 bins = 200 KB: needs the opt-in limit of
//     sm_80+ set through cudaFuncAttributeMaxDynamicSharedMemorySize), flushed once per block
//     into the global uint64 histogram; with use_shared = 0 the kernel adds to the global
//     histogram directly (devices with less shared memory).
//   * sums of z', z'^2, G', G'^2 over in-range samples in double, reduced per block (warp
//     shuffles, then shared memory) and added once per block.
//
// float32 build: the map in float32 with expf/logf/sqrtf (a few ulp; no --use_fast_math, whose
// __expf loses ~30 ulp at |z| = 25), z assembled in double and rounded once. float64 build: the
// same in double (about 5-10x slower on H100/H200: no MUFU path).
//
// Compile check: nvcc -arch=sm_90 --ptx kernels/rg_step.cu. At run time CuPy compiles it with
// NVRTC (cupy.RawModule).

#define MODE_FIRST 0
#define MODE_ALIAS 1
#define MODE_ICDF 2

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// ------------------------------------------------------------------------------------- Philox
struct Words4 {
    u32 x0, x1, x2, x3;
};

__device__ __forceinline__ Words4 philox4x32_10(u32 c0, u32 c1, u32 c2, u32 c3, u32 k0, u32 k1) {
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        const u32 hi0 = __umulhi(0xD2511F53u, c0);
        const u32 lo0 = 0xD2511F53u * c0;
        const u32 hi1 = __umulhi(0xCD9E8D57u, c2);
        const u32 lo1 = 0xCD9E8D57u * c2;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    Words4 w = {c0, c1, c2, c3};
    return w;
}

// --------------------------------------------------------------------------- float-type traits
template <typename T> struct Math;

template <> struct Math<float> {
    static __device__ __forceinline__ float exp_(float x) { return expf(x); }
    static __device__ __forceinline__ float log_(float x) { return logf(x); }
    static __device__ __forceinline__ float sqrt_(float x) { return sqrtf(x); }
    // Cephes sinf/cosf on |a| <= pi/4 (as the cpu backend)
    static __device__ __forceinline__ void sincos_quarter(float a, float* c, float* s) {
        const float a2 = a * a;
        *s = ((-1.9515295891e-4f * a2 + 8.3321608736e-3f) * a2 - 1.6666654611e-1f) * a2 * a + a;
        *c = ((2.443315711809948e-5f * a2 - 1.388731625493765e-3f) * a2 + 4.166664568298827e-2f) * a2 * a2
             - 0.5f * a2 + 1.0f;
    }
    // offset u3 * width inside the bin from word x2
    static __device__ __forceinline__ float in_bin(u32 x2, double width) {
        return (float)(x2 >> 8) * 5.9604644775390625e-8f * (float)width;
    }
    static __device__ __forceinline__ float first_z(u32 x0, double shift) {
        const double g = (double)x0 + 0.5;
        return logf((float)((4294967296.0 - g) / g)) + (float)shift;
    }
};

template <> struct Math<double> {
    static __device__ __forceinline__ double exp_(double x) { return exp(x); }
    static __device__ __forceinline__ double log_(double x) { return log(x); }
    static __device__ __forceinline__ double sqrt_(double x) { return sqrt(x); }
    static __device__ __forceinline__ void sincos_quarter(double a, double* c, double* s) {
        const double a2 = a * a;
        *s = a * (1.0 + a2 * (-1.0 / 6 + a2 * (1.0 / 120 + a2 * (-1.0 / 5040 + a2 * (1.0 / 362880 + a2 * (
            -1.0 / 39916800 + a2 * (1.0 / 6227020800.0 + a2 * (-1.0 / 1307674368000.0 + a2 * (
            1.0 / 355687428096000.0)))))))));
        *c = 1.0 + a2 * (-0.5 + a2 * (1.0 / 24 + a2 * (-1.0 / 720 + a2 * (1.0 / 40320 + a2 * (
            -1.0 / 3628800 + a2 * (1.0 / 479001600 + a2 * (-1.0 / 87178291200.0 + a2 * (
            1.0 / 20922789888000.0))))))));
    }
    static __device__ __forceinline__ double in_bin(u32 x2, double width) {
        return ((double)x2 + 0.5) * 2.3283064365386963e-10 * width;
    }
    static __device__ __forceinline__ double first_z(u32 x0, double shift) {
        const double g = (double)x0 + 0.5;
        return log((4294967296.0 - g) / g) + shift;
    }
};

// (cos, sin) of a + q pi/2 from (cos a, sin a)
template <typename T>
__device__ __forceinline__ void rotate_quadrant(T c, T s, u32 q, T* co, T* so) {
    const bool odd = (q & 1u) != 0u;
    const bool neg_c = ((q + 1u) & 2u) != 0u;
    const bool neg_s = (q & 2u) != 0u;
    T cc = odd ? s : c;
    T ss = odd ? c : s;
    *co = neg_c ? -cc : cc;
    *so = neg_s ? -ss : ss;
}

template <typename T>
__device__ __forceinline__ void phase_from_word(u32 w, T* c, T* s) {
    const u32 q = w >> 30;
    const T f = (T)(w & 0x3FFFFFFFu) * (T)9.313225746154785e-10;  // 2^-30
    T c0, s0;
    Math<T>::sincos_quarter((f - (T)0.5) * (T)1.5707963267948966, &c0, &s0);
    rotate_quadrant<T>(c0, s0, q, c, s);
}

template <typename T>
__device__ __forceinline__ void t_r_from_z(T z, T* t, T* r) {
    const T e = Math<T>::exp_(-fabs(z));
    const T inv = (T)1 / ((T)1 + e);
    const T small = Math<T>::sqrt_(e * inv);
    const T large = Math<T>::sqrt_(inv);
    *t = z >= (T)0 ? small : large;
    *r = z >= (T)0 ? large : small;
}

// (|N_r|^2, |N_t|^2) of RG_SPEC 2.2 in real arithmetic
template <typename T>
__device__ __forceinline__ void numerators2(const T* t, const T* r, const T* c, const T* s, T* nr2, T* nt2) {
    const T c34 = c[2] * c[3] - s[2] * s[3];
    const T s34 = s[2] * c[3] + c[2] * s[3];
    const T c12 = c[0] * c[1] - s[0] * s[1];
    const T s12 = s[0] * c[1] + c[0] * s[1];
    // N_t = t1 t5 (a E2 - 1) + t2 t4 E3 E4 (b conj(E1) - 1) + t3 (t2 t5 E3 + t1 t4 E4)
    const T a = r[1] * r[2] * r[3];
    const T b = r[0] * r[2] * r[4];
    const T t15 = t[0] * t[4], t24 = t[1] * t[3], t25 = t[1] * t[4], t14 = t[0] * t[3];
    T x = b * c[0] - (T)1;
    T y = -(b * s[0]);
    const T nt_re = t15 * (a * c[1] - (T)1) + t24 * (c34 * x - s34 * y) + t[2] * (t25 * c[2] + t14 * c[3]);
    const T nt_im = t15 * (a * s[1]) + t24 * (s34 * x + c34 * y) + t[2] * (t25 * s[2] + t14 * s[3]);
    // N_r = r1 r2 (c E4 - 1) + r4 r5 E1 E2 (d conj(E3) - 1) + r3 (r2 r5 E1 + r1 r4 E2)
    const T cc = t[2] * t[3] * t[4];
    const T dd = t[0] * t[1] * t[2];
    const T r12 = r[0] * r[1], r45 = r[3] * r[4], r25 = r[1] * r[4], r14 = r[0] * r[3];
    x = dd * c[2] - (T)1;
    y = -(dd * s[2]);
    const T nr_re = r12 * (cc * c[3] - (T)1) + r45 * (c12 * x - s12 * y) + r[2] * (r25 * c[0] + r14 * c[1]);
    const T nr_im = r12 * (cc * s[3]) + r45 * (s12 * x + c12 * y) + r[2] * (r25 * s[0] + r14 * s[1]);
    *nr2 = nr_re * nr_re + nr_im * nr_im;
    *nt2 = nt_re * nt_re + nt_im * nt_im;
}

// ------------------------------------------------------------------------------------ sampler
struct Sampler {
    int mode;
    u32 nbins;
    const u64* packed;   // alias: ceil(prob * 2^32) << 32 | alias  (prob = 1: alias = itself)
    const double* cum;   // icdf: nbins + 1 cumulative counts, cum[0] = 0
    const int* guide;    // icdf: bin at the start of each of ncells equal cells (+ 1 entry)
    i64 ncells;
    double total, xmax, cells;  // icdf: cum[nbins], nextafter(total, 0), (nguide - 1) / total
    double width, base;  // bin width, -zmax + shift
    double shift;
};

// input z from the words of one Philox call
template <typename T>
__device__ __forceinline__ T draw_z(const Sampler& sp, Words4 w) {
    if (sp.mode == MODE_FIRST) {
        return Math<T>::first_z(w.x0, sp.shift);
    }
    u32 bin;
    T off;
    if (sp.mode == MODE_ALIAS) {
        const u32 col = (u32)(((u64)w.x0 * (u64)sp.nbins) >> 32);
        const u64 p = __ldg(sp.packed + col);
        bin = (w.x1 < (u32)(p >> 32)) ? col : (u32)(p & 0xFFFFFFFFull);
        off = Math<T>::in_bin(w.x2, sp.width);
    } else {
        const double u = (double)(((u64)w.x0 << 21) | ((u64)w.x1 >> 11)) * 1.1102230246251565e-16;  // 2^-53
        const double x = fmin(u * sp.total, sp.xmax);
        // guide cell -> starting bin; sweep back and forth to cum[i] <= x < cum[i+1] (never an
        // empty bin, whatever the rounding of x * cells); fraction clamped below 1 - 2^-30
        i64 i = __ldg(sp.guide + min((i64)(x * sp.cells), sp.ncells - 1));
        while (i > 0 && __ldg(sp.cum + i) > x) --i;
        while (__ldg(sp.cum + i + 1) <= x) ++i;
        const double lo = __ldg(sp.cum + i);
        const double frac = fmin((x - lo) / (__ldg(sp.cum + i + 1) - lo), 0.9999999990686774);
        bin = (u32)i;
        off = (T)(frac * sp.width);
    }
    return (T)(sp.base + (double)bin * sp.width + (double)off);
}

// (|N_r|^2, |N_t|^2) of global sample i
template <typename T>
__device__ __forceinline__ void sample(const Sampler& sp, u64 i, u32 k0, u32 k1, T* nr2, T* nt2) {
    const u32 lo = (u32)i, hi = (u32)(i >> 32);
    T t[5], r[5], c[4], s[4];
#pragma unroll
    for (int j = 0; j < 5; ++j) {
        const Words4 w = philox4x32_10(lo, hi, (u32)j, 0u, k0, k1);
        t_r_from_z<T>(draw_z<T>(sp, w), &t[j], &r[j]);
        if (j < 4) phase_from_word<T>(w.x3, &c[j], &s[j]);
    }
    numerators2<T>(t, r, c, s, nr2, nt2);
}

// ------------------------------------------------------------------------------ block reduce
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xFFFFFFFFu, v, o);
    return v;
}

__device__ __forceinline__ u64 warp_sum_u64(u64 v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xFFFFFFFFu, v, o);
    return v;
}

// -------------------------------------------------------------------------------- step kernel
// counts: nbins u64 (global), flows: 3 u64 (under, over, nonfinite), sums: 4 doubles.
// Samples first .. first + n - 1. Dynamic shared memory: nbins u32 when use_shared (the
// reduction scratch is static).
template <typename T>
__device__ void rg_step(u64 first, u64 n, u32 k0, u32 k1, int mode, const u64* packed, const double* cum,
                        const int* guide, i64 nguide, double total, double xmax, u32 nbins, double width,
                        double zmax, double shift, int use_shared, u64* counts, u64* flows, double* sums) {
    extern __shared__ u32 hist[];
    __shared__ double red[4][32];
    __shared__ u64 redf[3][32];

    Sampler sp;
    sp.mode = mode;
    sp.nbins = nbins;
    sp.packed = packed;
    sp.cum = cum;
    sp.guide = guide;
    sp.total = total;
    sp.xmax = xmax;
    sp.ncells = nguide - 1;
    sp.cells = (double)(nguide - 1) / total;
    sp.width = width;
    sp.base = -zmax + shift;
    sp.shift = shift;
    const double scale = (double)nbins / (2.0 * zmax);

    if (use_shared) {
        for (u32 b = threadIdx.x; b < nbins; b += blockDim.x) hist[b] = 0u;
        __syncthreads();
    }
    double sz = 0.0, sz2 = 0.0, sg = 0.0, sg2 = 0.0;
    u64 under = 0, over = 0, bad = 0;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 k = (u64)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += stride) {
        T nr2, nt2;
        sample<T>(sp, first + k, k0, k1, &nr2, &nt2);
        const T zp = Math<T>::log_(nr2 / nt2);
        const double z = (double)zp;
        if (z != z) {
            ++bad;
            continue;
        }
        const double x = floor((z + zmax) * scale);
        if (x < 0.0) {
            ++under;
            continue;
        }
        if (x >= (double)nbins) {
            ++over;
            continue;
        }
        const u32 b = (u32)x;
        if (use_shared) {
            atomicAdd(hist + b, 1u);
        } else {
            atomicAdd(counts + b, 1ull);
        }
        const double g = (double)nt2 / ((double)nt2 + (double)nr2);  // t'^2 = 1 / (1 + e^z')
        sz += z;
        sz2 += z * z;
        sg += g;
        sg2 += g * g;
    }

    // block reduction of the sums and flows, one atomic per block and quantity
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    sz = warp_sum(sz);
    sz2 = warp_sum(sz2);
    sg = warp_sum(sg);
    sg2 = warp_sum(sg2);
    under = warp_sum_u64(under);
    over = warp_sum_u64(over);
    bad = warp_sum_u64(bad);
    if (lane == 0) {
        red[0][warp] = sz;
        red[1][warp] = sz2;
        red[2][warp] = sg;
        red[3][warp] = sg2;
        redf[0][warp] = under;
        redf[1][warp] = over;
        redf[2][warp] = bad;
    }
    __syncthreads();
    if (warp == 0) {
        double v[4];
        u64 f[3];
#pragma unroll
        for (int q = 0; q < 4; ++q) v[q] = warp_sum(lane < nwarps ? red[q][lane] : 0.0);
#pragma unroll
        for (int q = 0; q < 3; ++q) f[q] = warp_sum_u64(lane < nwarps ? redf[q][lane] : 0ull);
        if (lane == 0) {
#pragma unroll
            for (int q = 0; q < 4; ++q) atomicAdd(sums + q, v[q]);
#pragma unroll
            for (int q = 0; q < 3; ++q) if (f[q]) atomicAdd(flows + q, f[q]);
        }
    }
    if (use_shared) {  // flush the private histogram (the __syncthreads above ordered all adds)
        for (u32 b = threadIdx.x; b < nbins; b += blockDim.x) {
            const u32 h = hist[b];
            if (h) atomicAdd(counts + b, (u64)h);
        }
    }
}

extern "C" __global__ void __launch_bounds__(1024, 1)
rg_step_f32(u64 first, u64 n, u32 k0, u32 k1, int mode, const u64* packed, const double* cum, const int* guide,
            i64 nguide, double total, double xmax, u32 nbins, double width, double zmax, double shift,
            int use_shared, u64* counts, u64* flows, double* sums) {
    rg_step<float>(first, n, k0, k1, mode, packed, cum, guide, nguide, total, xmax, nbins, width, zmax, shift,
                   use_shared, counts, flows, sums);
}

extern "C" __global__ void __launch_bounds__(1024, 1)
rg_step_f64(u64 first, u64 n, u32 k0, u32 k1, int mode, const u64* packed, const double* cum, const int* guide,
            i64 nguide, double total, double xmax, u32 nbins, double width, double zmax, double shift,
            int use_shared, u64* counts, u64* flows, double* sums) {
    rg_step<double>(first, n, k0, k1, mode, packed, cum, guide, nguide, total, xmax, nbins, width, zmax, shift,
                    use_shared, counts, flows, sums);
}

// ---------------------------------------------------------------------- per-sample map (tests)
// z: (5, n) row-major; frac, quad: (4, n) phases reduced on the host to (pi/2)(quad + frac),
// |frac| <= 1/2; out: n.
template <typename T>
__device__ void map_z(const T* z, const T* frac, const u32* quad, T* out, i64 n) {
    for (i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (i64)gridDim.x * blockDim.x) {
        T t[5], r[5], c[4], s[4];
#pragma unroll
        for (int k = 0; k < 5; ++k) t_r_from_z<T>(z[k * n + j], &t[k], &r[k]);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            T c0, s0;
            Math<T>::sincos_quarter(frac[k * n + j] * (T)1.5707963267948966, &c0, &s0);
            rotate_quadrant<T>(c0, s0, quad[k * n + j] & 3u, &c[k], &s[k]);
        }
        T nr2, nt2;
        numerators2<T>(t, r, c, s, &nr2, &nt2);
        out[j] = Math<T>::log_(nr2 / nt2);
    }
}

extern "C" __global__ void map_z_f32(const float* z, const float* frac, const u32* quad, float* out, i64 n) {
    map_z<float>(z, frac, quad, out, n);
}

extern "C" __global__ void map_z_f64(const double* z, const double* frac, const u32* quad, double* out, i64 n) {
    map_z<double>(z, frac, quad, out, n);
}

// ------------------------------------------------------------------ raw Philox words (tests)
// out: (n, 20) words of the samples idx[0..n-1]
extern "C" __global__ void philox_words(const u64* idx, i64 n, u32 k0, u32 k1, u32* out) {
    for (i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (i64)gridDim.x * blockDim.x) {
        const u64 i = idx[j];
        for (u32 c = 0; c < 5; ++c) {
            const Words4 w = philox4x32_10((u32)i, (u32)(i >> 32), c, 0u, k0, k1);
            out[j * 20 + 4 * c + 0] = w.x0;
            out[j * 20 + 4 * c + 1] = w.x1;
            out[j * 20 + 4 * c + 2] = w.x2;
            out[j * 20 + 4 * c + 3] = w.x3;
        }
    }
}
