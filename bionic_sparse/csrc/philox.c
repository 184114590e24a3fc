/* Philox4x32-10 uniforms for bionic_sparse.noise, bit-identical to triton.language.randn.
 *
 * For each counter offset[i] (words (offset, 0, 0, 0), key (seed lo, seed hi)) this writes the
 * two float32 inputs of Box-Muller: u1 = max(uniform(c0), 1e-7) and theta = 2 pi uniform(c1),
 * with uniform(w) = float32(w < 0 ? ~w : w) * 4.6566127342e-10 for the word read as int32.
 * log, sqrt and cos are left to torch, so the normals equal those of the pure-Python path bit
 * for bit. Integer arithmetic only until the two float32 multiplies, which are exact IEEE
 * operations; built with -ffp-contract=off so that no fused multiply-add changes a rounding.
 *
 * target_clones (built with -DBIONIC_TARGET_CLONES where the compiler knows x86-64-v4): one binary
 * that runs on any x86-64 and uses AVX-512 or AVX2 where the CPU has them. With
 * -mprefer-vector-width=512 the AVX-512 clone ran at 319 M words/s on one core of the 2-core CI
 * machine (AMD EPYC), against 178 M with 256-bit vectors and 157 M with SSE2 only.
 */
#include <stdint.h>

#define ROUND_A 0xD2511F53u
#define ROUND_B 0xCD9E8D57u
#define KEY_A 0x9E3779B9u
#define KEY_B 0xBB67AE85u
#define UNIFORM_SCALE 4.6566127342e-10f
#define TWO_PI 6.283185307179586f

#if defined(BIONIC_TARGET_CLONES) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
void bionic_philox_uniforms(uint64_t seed, const int64_t *offset, int64_t n, float *u1, float *theta) {
    const uint32_t s0 = (uint32_t)seed, s1 = (uint32_t)(seed >> 32);
    for (int64_t i = 0; i < n; ++i) {
        uint32_t c0 = (uint32_t)offset[i], c1 = 0, c2 = 0, c3 = 0, k0 = s0, k1 = s1;
        for (int r = 0; r < 10; ++r) {
            const uint64_t pb = (uint64_t)ROUND_B * c2, pa = (uint64_t)ROUND_A * c0;
            c0 = (uint32_t)(pb >> 32) ^ c1 ^ k0;
            c2 = (uint32_t)(pa >> 32) ^ c3 ^ k1;
            c1 = (uint32_t)pb;
            c3 = (uint32_t)pa;
            k0 += KEY_A;
            k1 += KEY_B;
        }
        int32_t v0 = (int32_t)c0, v1 = (int32_t)c1;
        v0 = v0 < 0 ? ~v0 : v0;
        v1 = v1 < 0 ? ~v1 : v1;
        const float a = (float)v0 * UNIFORM_SCALE, b = (float)v1 * UNIFORM_SCALE;
        u1[i] = a < 1.0e-7f ? 1.0e-7f : a;
        theta[i] = TWO_PI * b;
    }
}

