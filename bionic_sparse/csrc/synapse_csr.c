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
/* the side of a transpose tile: a 32 x 32 float tile of source and destination fits L1 */
#define T_TILE 32

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

CLONES
void bionic_transpose(int64_t rows, int64_t cols, const float *src, const float *row_scale, const float *col_scale,
                      float *dst, int n_threads) {
    const int64_t col_tiles = (cols + T_TILE - 1) / T_TILE;
#pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t ct = 0; ct < col_tiles; ++ct) {
        const int64_t c0 = ct * T_TILE, nc = c0 + T_TILE < cols ? T_TILE : cols - c0;
        float tile[T_TILE][T_TILE];
        for (int64_t r0 = 0; r0 < rows; r0 += T_TILE) {
            const int64_t nr = r0 + T_TILE < rows ? T_TILE : rows - r0;
            /* rows of the tile in (contiguous, vector loads), columns out (contiguous stores) */
            for (int64_t i = 0; i < nr; ++i) {
                const float *restrict s = src + (r0 + i) * cols + c0;
                const float rs = row_scale ? row_scale[r0 + i] : 1.0f;
                if (row_scale) {
#pragma omp simd
                    for (int64_t j = 0; j < nc; ++j) tile[i][j] = s[j] * rs;
                } else {
#pragma omp simd
                    for (int64_t j = 0; j < nc; ++j) tile[i][j] = s[j];
                }
            }
            for (int64_t j = 0; j < nc; ++j) {
                float *restrict d = dst + (c0 + j) * rows + r0;
                if (col_scale) {
                    const float cs = col_scale[c0 + j];
                    for (int64_t i = 0; i < nr; ++i) d[i] = tile[i][j] * cs;
                } else {
                    for (int64_t i = 0; i < nr; ++i) d[i] = tile[i][j];
                }
            }
        }
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
