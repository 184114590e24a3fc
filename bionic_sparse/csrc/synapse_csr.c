/* Element-level CSR products for connectome matrices whose synapses fill few b x b blocks.
 *
 * The matrix is W[n_out, n_in] in CSR: row pointers crow[n_out + 1] (int64) and column ids
 * col[nnz] (int32), weights w[nnz] (float32). Activations are feature-major: x_fm[n, batch], one
 * contiguous batch vector per neuron, so that every synapse touches one contiguous vector (the
 * batch loop vectorises; the gathers follow the neuron order, which is why a spatial order helps).
 *
 *   bionic_csr_fwd:   y_fm[r, :]      = sum_k w[k] * x_fm[col[k], :]          (k in row r)
 *   bionic_csr_fwd_t: dx_fm[col[k], :] += w[k] * dy_fm[r, :]                  (the transpose)
 *   bionic_csr_sddmm: out[k]          = sum_b a_fm[r, b] * x_fm[col[k], b]    (a second a/out
 *                     pair optional: the weight gradient and the Hebbian correlation in one pass;
 *                     out optionally times col_scale[col[k]] (Dale's sign) and 1 + sigma xi[k]
 *                     (the derivative of multiplicative noise), out2 never)
 *   bionic_csr_plasticity: w[k] <- (w + eta (corr - oja q[r] w)) s[r], zero where the sign would
 *                     flip (bionic_sparse.plasticity.plasticity_rule, row r of synapse k from crow)
 *   bionic_transpose: dst[c, r]       = src[r, c] (* row_scale[r] or * col_scale[c]: at most
 *                     one): batch-major <-> feature-major in cache tiles, with Dale's sign
 *                     folded in on the way (one multiply, as a separate pass would do it)
 *
 * None of them needs a transposed index or the COO rows: W is stored as exactly one CSR. The
 * transpose scatters; with several threads each thread scatters into a private buffer (n_in x
 * batch floats) and the buffers are summed, so the result does not depend on scheduling races
 * (it does depend on the thread count through the order of the sums).
 *
 * Built with OpenMP where the compiler has it (otherwise one thread) and, like philox.c, with
 * per-CPU target clones where available.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(BIONIC_TARGET_CLONES) && defined(__x86_64__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define CLONES
#endif

/* rows per scheduling chunk: row lengths vary a lot (degrees from 0 to thousands) */
#define ROW_CHUNK 64
/* the side of a transpose tile: 64 x 64 floats of source and of destination fit L1 together */
#define T_TILE 64

CLONES
void bionic_csr_fwd(int64_t n_out, int64_t batch, const int64_t *crow, const int32_t *col, const float *w,
                    const float *x_fm, float *y_fm, int n_threads) {
#pragma omp parallel for schedule(dynamic, ROW_CHUNK) num_threads(n_threads)
    for (int64_t r = 0; r < n_out; ++r) {
        float *restrict y = y_fm + r * batch;
        memset(y, 0, (size_t)batch * sizeof(float));
        for (int64_t k = crow[r]; k < crow[r + 1]; ++k) {
            const float wk = w[k];
            const float *restrict x = x_fm + (int64_t)col[k] * batch;
#pragma omp simd
            for (int64_t b = 0; b < batch; ++b) y[b] += wk * x[b];
        }
    }
}

/* An 8 x 8 block, dst[j][i] = src[i][j] (times row_scale[i] or col_scale[j]), in registers: three
 * rounds of two-vector shuffles (GCC/Clang vector extensions: each target clone lowers them to its
 * own shuffle instructions) instead of scalar column reads from an L1 tile; the same single
 * multiply per element, so the results are bit-identical to a plain transpose and scale. */
typedef float v8sf __attribute__((vector_size(32)));
typedef int32_t v8si __attribute__((vector_size(32)));
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define SHUF8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) __builtin_shufflevector(a, b, i0, i1, i2, i3, i4, i5, i6, i7)
#endif
#endif
#ifndef SHUF8
#define SHUF8(a, b, i0, i1, i2, i3, i4, i5, i6, i7) __builtin_shuffle(a, b, (v8si){i0, i1, i2, i3, i4, i5, i6, i7})
#endif
#define LO_32(a, b) SHUF8(a, b, 0, 8, 1, 9, 4, 12, 5, 13)
#define HI_32(a, b) SHUF8(a, b, 2, 10, 3, 11, 6, 14, 7, 15)
#define LO_64(a, b) SHUF8(a, b, 0, 1, 8, 9, 4, 5, 12, 13)
#define HI_64(a, b) SHUF8(a, b, 2, 3, 10, 11, 6, 7, 14, 15)
#define LO_128(a, b) SHUF8(a, b, 0, 1, 2, 3, 8, 9, 10, 11)
#define HI_128(a, b) SHUF8(a, b, 4, 5, 6, 7, 12, 13, 14, 15)

static inline __attribute__((always_inline)) void block8(const float *src, int64_t ss, float *dst, int64_t ds,
                                                         const float *rs, const float *cs) {
    v8sf r[8], o[8];
    for (int i = 0; i < 8; ++i) {
        memcpy(&r[i], src + i * ss, sizeof r[i]); /* unaligned vector load */
        if (rs) r[i] = r[i] * rs[i];
    }
    const v8sf t0 = LO_32(r[0], r[1]), t1 = HI_32(r[0], r[1]), t2 = LO_32(r[2], r[3]), t3 = HI_32(r[2], r[3]);
    const v8sf t4 = LO_32(r[4], r[5]), t5 = HI_32(r[4], r[5]), t6 = LO_32(r[6], r[7]), t7 = HI_32(r[6], r[7]);
    const v8sf u0 = LO_64(t0, t2), u1 = HI_64(t0, t2), u2 = LO_64(t1, t3), u3 = HI_64(t1, t3);
    const v8sf u4 = LO_64(t4, t6), u5 = HI_64(t4, t6), u6 = LO_64(t5, t7), u7 = HI_64(t5, t7);
    o[0] = LO_128(u0, u4), o[4] = HI_128(u0, u4), o[1] = LO_128(u1, u5), o[5] = HI_128(u1, u5);
    o[2] = LO_128(u2, u6), o[6] = HI_128(u2, u6), o[3] = LO_128(u3, u7), o[7] = HI_128(u3, u7);
    for (int j = 0; j < 8; ++j) {
        if (cs) o[j] = o[j] * cs[j];
        memcpy(dst + j * ds, &o[j], sizeof o[j]);
    }
}

static inline float scale_of(const float *row_scale, const float *col_scale, int64_t i, int64_t j) {
    return row_scale ? row_scale[i] : col_scale ? col_scale[j] : 1.0f;
}

CLONES
void bionic_transpose(int64_t rows, int64_t cols, const float *src, const float *row_scale, const float *col_scale,
                      float *dst, int n_threads) {
    /* T_TILE x T_TILE tiles (source and destination in L1), each in 8 x 8 register blocks; the
     * edges that are not a multiple of 8 element by element */
    const int64_t col_tiles = (cols + T_TILE - 1) / T_TILE, row_tiles = (rows + T_TILE - 1) / T_TILE;
#pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t t = 0; t < col_tiles * row_tiles; ++t) {
        const int64_t c0 = (t / row_tiles) * T_TILE, r0 = (t % row_tiles) * T_TILE;
        const int64_t c1 = c0 + T_TILE < cols ? c0 + T_TILE : cols, r1 = r0 + T_TILE < rows ? r0 + T_TILE : rows;
        int64_t i = r0;
        for (; i + 8 <= r1; i += 8) {
            int64_t j = c0;
            for (; j + 8 <= c1; j += 8)
                block8(src + i * cols + j, cols, dst + j * rows + i, rows, row_scale ? row_scale + i : 0,
                       col_scale ? col_scale + j : 0);
            for (; j < c1; ++j)
                for (int64_t ii = i; ii < i + 8; ++ii)
                    dst[j * rows + ii] = src[ii * cols + j] * scale_of(row_scale, col_scale, ii, j);
        }
        for (; i < r1; ++i)
            for (int64_t j = c0; j < c1; ++j) dst[j * rows + i] = src[i * cols + j] * scale_of(row_scale, col_scale, i, j);
    }
}

static void scatter_rows(int64_t r0, int64_t r1, int64_t batch, const int64_t *crow, const int32_t *col,
                         const float *w, const float *dy_fm, float *dx_fm) {
    for (int64_t r = r0; r < r1; ++r) {
        const float *restrict dy = dy_fm + r * batch;
        for (int64_t k = crow[r]; k < crow[r + 1]; ++k) {
            const float wk = w[k];
            float *restrict dx = dx_fm + (int64_t)col[k] * batch;
#pragma omp simd
            for (int64_t b = 0; b < batch; ++b) dx[b] += wk * dy[b];
        }
    }
}

/* Returns 0, or -1 when a private buffer could not be allocated (dx_fm is then incomplete). */
CLONES
int bionic_csr_fwd_t(int64_t n_out, int64_t n_in, int64_t batch, const int64_t *crow, const int32_t *col,
                     const float *w, const float *dy_fm, float *dx_fm, int n_threads) {
    const size_t size = (size_t)n_in * (size_t)batch;
    memset(dx_fm, 0, size * sizeof(float));
    if (n_threads <= 1 || n_out < 2) {
        scatter_rows(0, n_out, batch, crow, col, w, dy_fm, dx_fm);
        return 0;
    }
    /* contiguous row ranges with about equal numbers of synapses */
    const int64_t nnz = crow[n_out];
    int64_t *bounds = malloc(sizeof(int64_t) * (size_t)(n_threads + 1));
    float **priv = calloc((size_t)n_threads, sizeof(float *));
    if (!bounds || !priv) {
        free(bounds);
        free(priv);
        return -1;
    }
    bounds[0] = 0;
    for (int t = 1; t < n_threads; ++t) {
        int64_t target = nnz / n_threads * t, lo = bounds[t - 1], hi = n_out;
        while (lo < hi) { /* first row whose start is >= target */
            int64_t mid = (lo + hi) / 2;
            if (crow[mid] < target) lo = mid + 1; else hi = mid;
        }
        bounds[t] = lo;
    }
    bounds[n_threads] = n_out;
    int failed = 0;
    for (int t = 1; t < n_threads; ++t) {
        priv[t] = calloc(size, sizeof(float));
        if (!priv[t]) failed = 1;
    }
    if (!failed) {
#pragma omp parallel for schedule(static, 1) num_threads(n_threads)
        for (int t = 0; t < n_threads; ++t)
            scatter_rows(bounds[t], bounds[t + 1], batch, crow, col, w, dy_fm, t == 0 ? dx_fm : priv[t]);
#pragma omp parallel for schedule(static) num_threads(n_threads)
        for (int64_t i = 0; i < (int64_t)size; ++i) {
            float s = dx_fm[i];
            for (int t = 1; t < n_threads; ++t) s += priv[t][i];
            dx_fm[i] = s;
        }
    }
    for (int t = 1; t < n_threads; ++t) free(priv[t]);
    free(priv);
    free(bounds);
    return failed ? -1 : 0;
}

/* a dot product over the batch with 16 lanes of partial sums (one AVX-512 register) */
#define LANES 16
static inline float dot_lanes(const float *restrict a, const float *restrict x, int64_t batch) {
    float part[LANES] = {0};
    int64_t b0 = 0;
    for (; b0 + LANES <= batch; b0 += LANES) {
#pragma omp simd
        for (int b = 0; b < LANES; ++b) part[b] += a[b0 + b] * x[b0 + b];
    }
    float s = 0.0f;
    for (int64_t b = b0; b < batch; ++b) s += a[b] * x[b];
#pragma omp simd reduction(+ : s)
    for (int b = 0; b < LANES; ++b) s += part[b];
    return s;
}

CLONES
void bionic_csr_sddmm(int64_t n_out, int64_t batch, const int64_t *crow, const int32_t *col, const float *a_fm,
                      const float *x_fm, float *out, const float *a2_fm, float *out2, const float *col_scale,
                      const float *xi, float sigma, int n_threads) {
#pragma omp parallel for schedule(dynamic, ROW_CHUNK) num_threads(n_threads)
    for (int64_t r = 0; r < n_out; ++r) {
        const float *restrict a = a_fm + r * batch;
        const float *restrict a2 = a2_fm ? a2_fm + r * batch : 0;
        for (int64_t k = crow[r]; k < crow[r + 1]; ++k) {
            const float *restrict x = x_fm + (int64_t)col[k] * batch;
            float g = dot_lanes(a, x, batch);
            if (col_scale) g *= col_scale[col[k]];
            if (xi) g *= 1.0f + sigma * xi[k];
            out[k] = g;
            if (a2) out2[k] = dot_lanes(a2, x, batch);
        }
    }
}

CLONES
void bionic_csr_plasticity(int64_t n_out, const int64_t *crow, float *w, const float *corr, const float *post_sq,
                           const float *scale, float eta, float oja, int n_threads) {
#pragma omp parallel for schedule(dynamic, ROW_CHUNK) num_threads(n_threads)
    for (int64_t r = 0; r < n_out; ++r) {
        const float decay = oja * post_sq[r], s = scale ? scale[r] : 1.0f;
#pragma omp simd
        for (int64_t k = crow[r]; k < crow[r + 1]; ++k) {
            const float wk = w[k];
            float nw = (wk + eta * (corr[k] - decay * wk)) * s;
            w[k] = nw * wk < 0.0f ? 0.0f : nw; /* a weight stops at zero instead of changing sign */
        }
    }
}
