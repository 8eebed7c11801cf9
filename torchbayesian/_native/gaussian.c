/* Fused CPU kernels for mean-field Gaussian posteriors (float32, contiguous).
 *
 * Each kernel works through the tensor in blocks of BLOCK elements with short, branch-free loops
 * that the compiler vectorises (with glibc's vector math library for exp, log, log1p, sin, cos).
 * Standard normals come from a counter-based generator: element pair k of a call with seed s uses
 * the 64-bit SplitMix64 output for counter k, turned into two normals by the Box-Muller transform,
 * so the result does not depend on how the tensor is split into blocks.
 */
/* glibc declares its vector math functions (libmvec) only under __FAST_MATH__; the kernels are built
 * without -ffast-math so that NaN and infinity keep their IEEE behaviour. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__FAST_MATH__)
#define __FAST_MATH__ 1
#endif
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define BLOCK 512
#define SOFTPLUS_THRESHOLD 20.0f

enum { OUT_SAMPLE = 0, OUT_PERTURBATION = 1, OUT_VARIANCE = 2, OUT_NONE = 3 };

static inline uint64_t splitmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Standard normals for elements [start, start + m) of a stream; start is even, m <= BLOCK.
 * Box-Muller: radius sqrt(-2 log u) from 24 bits, angle from 24 more bits, split into a quadrant
 * (2 bits) and a position in it, where sine and cosine are Taylor polynomials accurate to float
 * precision on [0, pi/2], so no argument reduction is needed. */
static void normal_block(float *out, int64_t start, int64_t m, uint64_t seed) {
    const float scale = 1.0f / 16777216.0f, quarter = 1.57079632679489662f / 4194304.0f;
    float u[BLOCK / 2], radius[BLOCK / 2], cosine[BLOCK / 2], sine[BLOCK / 2];
    const int64_t pairs = (m + 1) / 2;
    const uint64_t first = (uint64_t)(start / 2);
    for (int64_t i = 0; i < pairs; i++) {
        const uint64_t z = splitmix64(seed + (first + (uint64_t)i + 1) * 0x9E3779B97F4A7C15ULL);
        u[i] = ((float)(uint32_t)(z >> 40) + 0.5f) * scale; /* in (0, 1] */
        const uint32_t quadrant = (uint32_t)(z >> 22) & 3u;
        const float x = (float)(uint32_t)(z & 0x3FFFFFu) * quarter, x2 = x * x;
        const float s = x * (1.0f + x2 * (-1.0f / 6 + x2 * (1.0f / 120 + x2 * (-1.0f / 5040 + x2 * (
            1.0f / 362880 + x2 * (-1.0f / 39916800))))));
        const float c = 1.0f + x2 * (-0.5f + x2 * (1.0f / 24 + x2 * (-1.0f / 720 + x2 * (1.0f / 40320 + x2 * (
            -1.0f / 3628800 + x2 * (1.0f / 479001600))))));
        /* Rotate (cos x, sin x) by quadrant * pi / 2. */
        const float swapped_c = (quadrant & 1u) ? s : c, swapped_s = (quadrant & 1u) ? c : s;
        cosine[i] = ((quadrant + 1u) & 2u) ? -swapped_c : swapped_c;
        sine[i] = (quadrant & 2u) ? -swapped_s : swapped_s;
    }
    for (int64_t i = 0; i < pairs; i++) radius[i] = sqrtf(-2.0f * logf(u[i]));
    for (int64_t i = 0; i < m / 2; i++) {
        out[2 * i] = radius[i] * cosine[i];
        out[2 * i + 1] = radius[i] * sine[i];
    }
    if (m & 1) out[m - 1] = radius[pairs - 1] * cosine[pairs - 1];
}

/* softplus(rho) and its derivative sigmoid(rho), with torch's threshold (beta = 1). */
static void softplus_block(const float *rho, float *sigma, float *slope, int64_t m) {
    float e[BLOCK];
    for (int64_t i = 0; i < m; i++) e[i] = expf(rho[i] > SOFTPLUS_THRESHOLD ? SOFTPLUS_THRESHOLD : rho[i]);
    for (int64_t i = 0; i < m; i++) {
        const float soft = log1pf(e[i]);
        sigma[i] = rho[i] > SOFTPLUS_THRESHOLD ? rho[i] : soft;
    }
    if (slope)
        for (int64_t i = 0; i < m; i++) slope[i] = e[i] / (1.0f + e[i]);
}

/* Every kernel below works on elements [offset, offset + n) of a tensor (the pointers point at
 * element offset), so a tensor can be split between threads at offsets that are multiples of
 * BLOCK; the random numbers depend on the element's index only, not on the split. */

/* Random signs: +1 or -1 with equal probability, one bit of a SplitMix64 output each. */
void tb_rademacher(float *out, int64_t n, uint64_t seed, int64_t offset) {
    for (int64_t start = 0; start < n; start += 64) {
        const uint64_t z = splitmix64(seed + (uint64_t)((offset + start) / 64 + 1) * 0x9E3779B97F4A7C15ULL);
        const int64_t m = n - start < 64 ? n - start : 64;
        float *o = out + start;
        for (int64_t i = 0; i < m; i++) o[i] = (float)(int)((z >> i) & 1u) * 2.0f - 1.0f;
    }
}

/* out = mu + sigma * eps | sigma * eps | sigma^2 | nothing, by mode; eps is written for the first two.
 * With sums != NULL, also the sums the KL divergence to N(loc, scale^2) needs: sums[0] = sum sigma^2,
 * sums[1] = sum (mu - loc)^2, sums[2] = sum log sigma. */
void tb_gaussian_forward(const float *mu, const float *rho, float *out, float *eps, int64_t n, int mode,
                         uint64_t seed, int64_t offset, float loc, double *sums) {
    double total_square = 0.0, total_deviation = 0.0, total_log = 0.0;
    float sigma[BLOCK], logs[BLOCK];
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t m = n - start < BLOCK ? n - start : BLOCK;
        const float *r = rho + start;
        softplus_block(r, sigma, NULL, m);
        if (mode == OUT_SAMPLE || mode == OUT_PERTURBATION) {
            float *e = eps + start, *o = out + start;
            normal_block(e, offset + start, m, seed);
            if (mode == OUT_SAMPLE) {
                const float *mean = mu + start;
                for (int64_t i = 0; i < m; i++) o[i] = mean[i] + sigma[i] * e[i];
            } else {
                for (int64_t i = 0; i < m; i++) o[i] = sigma[i] * e[i];
            }
        } else if (mode == OUT_VARIANCE) {
            float *o = out + start;
            for (int64_t i = 0; i < m; i++) o[i] = sigma[i] * sigma[i];
        }
        if (sums) {
            const float *mean = mu + start;
            float square = 0.0f, deviation = 0.0f, log_sum = 0.0f;
            for (int64_t i = 0; i < m; i++) logs[i] = logf(sigma[i]);
            for (int64_t i = 0; i < m; i++) {
                const float d = mean[i] - loc;
                square += sigma[i] * sigma[i];
                deviation += d * d;
                log_sum += logs[i];
            }
            total_square += square;
            total_deviation += deviation;
            total_log += log_sum;
        }
    }
    if (sums) {
        sums[0] = total_square;
        sums[1] = total_deviation;
        sums[2] = total_log;
    }
}

/* Gradients of out (by mode, with upstream grad_out, may be NULL) plus kl_grad * KL, where
 * KL = (sum sigma^2 + sum (mu - loc)^2) / (2 prior_var) - sum log sigma + const.
 * grad_mu and grad_rho may be NULL when not needed. */
void tb_gaussian_backward(const float *mu, const float *rho, const float *eps, const float *grad_out,
                          float *grad_mu, float *grad_rho, int64_t n, int mode, float kl_grad, float loc,
                          float prior_var) {
    const float c = kl_grad / prior_var;
    float sigma[BLOCK], slope[BLOCK];
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t m = n - start < BLOCK ? n - start : BLOCK;
        const float *mean = mu + start, *g = grad_out ? grad_out + start : NULL;
        if (grad_mu) {
            float *gm = grad_mu + start;
            if (mode == OUT_SAMPLE && g)
                for (int64_t i = 0; i < m; i++) gm[i] = g[i] + c * (mean[i] - loc);
            else
                for (int64_t i = 0; i < m; i++) gm[i] = c * (mean[i] - loc);
        }
        if (grad_rho) {
            float *gr = grad_rho + start;
            softplus_block(rho + start, sigma, slope, m);
            float d[BLOCK];
            if (g && (mode == OUT_SAMPLE || mode == OUT_PERTURBATION)) {
                const float *e = eps + start;
                for (int64_t i = 0; i < m; i++) d[i] = g[i] * e[i];
            } else if (g && mode == OUT_VARIANCE) {
                for (int64_t i = 0; i < m; i++) d[i] = 2.0f * g[i] * sigma[i];
            } else {
                for (int64_t i = 0; i < m; i++) d[i] = 0.0f;
            }
            if (kl_grad != 0.0f)
                for (int64_t i = 0; i < m; i++) d[i] += c * sigma[i] - kl_grad / sigma[i];
            for (int64_t i = 0; i < m; i++) gr[i] = d[i] * slope[i];
        }
    }
}

/* Local reparameterization output: out = mean + sqrt(max(var, tiny)) * eps with fresh eps, and the
 * derivative of out in var, eps / (2 sqrt(var)) where var >= tiny, else 0 (the clamp's gradient). */
void tb_local_reparameterization(const float *mean, const float *var, float *out, float *slope, int64_t n,
                                 uint64_t seed, int64_t offset) {
    const float tiny = 1.17549435e-38f;
    float eps[BLOCK], std[BLOCK];
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t m = n - start < BLOCK ? n - start : BLOCK;
        const float *mu = mean + start, *v = var + start;
        float *o = out + start, *s = slope + start;
        normal_block(eps, offset + start, m, seed);
        for (int64_t i = 0; i < m; i++) std[i] = sqrtf(v[i] >= tiny ? v[i] : tiny);
        for (int64_t i = 0; i < m; i++) {
            o[i] = mu[i] + std[i] * eps[i];
            s[i] = v[i] >= tiny ? 0.5f * eps[i] / std[i] : 0.0f;
        }
    }
}
