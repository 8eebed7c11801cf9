/* Fused CPU kernels for mean-field Gaussian posteriors (float32, contiguous).
 *
 * Each kernel works through the tensor in blocks of BLOCK elements with short, branch-free loops
 * that the compiler vectorises. exp, log and log1p are inline polynomials (accurate to a few ulp,
 * with IEEE results for zero, infinity and NaN), so the loops need no calls into a math library.
 * Standard normals come from a counter-based generator: element pair k of a call maps k through an
 * affine map keyed by the call's seed and then through two different 32-bit mixing functions, whose
 * outputs the Box-Muller transform turns into two normals, so the result does not depend on how the
 * tensor is split into blocks. 32-bit multiplies vectorise where 64-bit ones (SplitMix64) do not.
 *
 * The exported kernels split a large tensor into spans that start at multiples of BLOCK and run them
 * on up to `threads` OpenMP threads (torch's own OpenMP runtime, whose library the kernels' library
 * shares), so the numbers do not depend on the number of threads either.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 512
#define MIN_SPAN 8192 /* elements a thread gets at least: fewer cost more to hand out than they save */

/* Function multiversioning: each exported kernel, with every function it calls inlined (flatten), is
 * compiled for several instruction sets (x86-64-v4: AVX-512; v3: AVX2 and FMA; the baseline), and the
 * dynamic loader picks the best one the CPU supports, so one build runs on any x86-64 CPU. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define TB_KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#else
#define TB_KERNEL
#endif

enum { OUT_SAMPLE = 0, OUT_PERTURBATION = 1, OUT_VARIANCE = 2, OUT_NONE = 3 };

static inline float bits_to_float(uint32_t bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static inline uint32_t float_to_bits(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    return bits;
}

/* 2^k for an integer k in [-126, 127]. */
static inline float exp2_int(int32_t k) { return bits_to_float((uint32_t)(k + 127) << 23); }

/* exp(x) for x <= 0: x = n log 2 + r with |r| <= log(2) / 2, exp(r) by its Taylor polynomial, 2^n
 * applied in two halves so that results in the denormal range are right too. */
static inline float exp_nonpositive(float x) {
    const float clamped = x < -110.0f ? -110.0f : x;
    const float n = floorf(clamped * 1.44269504088896341f + 0.5f);
    const float r = (clamped - n * 0.693145751953125f) - n * 1.42860682030941723212e-6f;
    const float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (
        1.0f / 720 + r * (1.0f / 5040)))))));
    const int32_t k = (int32_t)n, half = k / 2;
    const float value = p * exp2_int(half) * exp2_int(k - half);
    return x == x ? value : x;
}

/* 2 atanh(s) / s as its series in s^2, to float precision for |s| <= 3 - 2 sqrt(2) (s^2 < 0.0295). */
static inline float atanh_ratio_near(float s2) {
    return 2.0f * (1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9)))));
}

/* The same series to float precision for |s| <= 1/3. */
static inline float atanh_ratio(float s2) {
    return 2.0f * (1.0f + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9 + s2 * (
        1.0f / 11 + s2 * (1.0f / 13 + s2 * (1.0f / 15))))))));
}

/* log1p(t) for t in [0, 1], as 2 atanh(t / (2 + t)). */
static inline float log1p_unit(float t) {
    const float s = t / (2.0f + t);
    return s * atanh_ratio(s * s);
}

/* log(x) for a positive, finite, normal float: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
 * log m = 2 atanh((m - 1) / (m + 1)). */
static inline float log_normal(float x) {
    const uint32_t bits = float_to_bits(x);
    const float mantissa = bits_to_float((bits & 0x7FFFFFu) | 0x3F800000u);
    const int high = mantissa > 1.41421356f;
    const float m = high ? 0.5f * mantissa : mantissa;
    const float s = (m - 1.0f) / (m + 1.0f);
    return (float)((int32_t)(bits >> 23) - 127 + high) * 0.693147180559945309f + s * atanh_ratio_near(s * s);
}

/* log(x) for any float, with log 0 = -inf, log inf = inf and NaN for negative x or NaN. */
static inline float log_any(float x) {
    if (x > 0.0f && x < INFINITY)
        return x < 1.17549435e-38f ? log_normal(x * 8388608.0f) - 23.0f * 0.693147180559945309f : log_normal(x);
    return x == 0.0f ? -INFINITY : (x == INFINITY ? x : NAN);
}

#define LOG_GROUP 64

/* Sum of log(x[i]) for i < m: exponents summed as integers and mantissas (in [1, 2)) multiplied in
 * groups of LOG_GROUP, so one log serves a group. A group holding zero, a denormal, infinity, a
 * negative number or NaN takes one log_any per element. */
static float sum_log(const float *x, int64_t m) {
    float total = 0.0f;
    for (int64_t start = 0; start < m; start += LOG_GROUP) {
        const int64_t k = m - start < LOG_GROUP ? m - start : LOG_GROUP;
        const float *v = x + start;
        float product = 1.0f;
        int32_t exponents = 0, special = 0;
        for (int64_t i = 0; i < k; i++) {
            const uint32_t bits = float_to_bits(v[i]);
            const int32_t field = (int32_t)(bits >> 23);
            product *= bits_to_float((bits & 0x7FFFFFu) | 0x3F800000u);
            exponents += field;
            special |= (field == 0) | (field >= 255);
        }
        if (special) {
            for (int64_t i = 0; i < k; i++) total += log_any(v[i]);
        } else {
            total += log_normal(product) + (float)(exponents - 127 * (int32_t)k) * 0.693147180559945309f;
        }
    }
    return total;
}

static inline uint64_t splitmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* A bijection of 32-bit words with full avalanche: xorshift-multiply rounds. Two choices of the
 * constants below give two unrelated mixes of the same word. */
static inline uint32_t mix32(uint32_t x, uint32_t first, uint32_t second, int last_shift) {
    x ^= x >> 16;
    x *= first;
    x ^= x >> 15;
    x *= second;
    return x ^ (x >> last_shift);
}

/* Standard normals for elements [start, start + m) of a stream; start is even, m <= BLOCK.
 * Pair k gives the word w = k * a + b (mod 2^32; a odd and b from the seed and the high bits of k),
 * whose two mixes are 24 bits for the radius sqrt(-2 log u) and 24 bits for the angle: a quadrant
 * (2 bits) and a position in it, where sine and cosine are Taylor polynomials accurate to float
 * precision on [0, pi/2], so no argument reduction is needed. */
static void normal_block(float *out, int64_t start, int64_t m, uint64_t seed) {
    const float scale = 1.0f / 16777216.0f, quarter = 1.57079632679489662f / 4194304.0f;
    float u[BLOCK / 2], radius[BLOCK / 2], cosine[BLOCK / 2], sine[BLOCK / 2];
    const int64_t pairs = (m + 1) / 2;
    const uint64_t first = (uint64_t)(start / 2);
    /* A block never crosses a multiple of 2^32 pairs (BLOCK divides it), so one key serves it. */
    const uint64_t key = splitmix64(seed ^ ((first >> 32) * 0x9E3779B97F4A7C15ULL));
    const uint32_t multiplier = (uint32_t)key | 1u, offset = (uint32_t)(key >> 32) + (uint32_t)first * multiplier;
    for (int64_t i = 0; i < pairs; i++) {
        const uint32_t word = (uint32_t)i * multiplier + offset;
        const uint32_t bits = mix32(word, 0x7FEB352Du, 0x846CA68Bu, 16);
        u[i] = ((float)(mix32(word, 0x21F0AAADu, 0x735A2D97u, 15) >> 8) + 0.5f) * scale; /* in (0, 1] */
        const uint32_t quadrant = bits >> 30;
        const float x = (float)(bits & 0x3FFFFFu) * quarter, x2 = x * x;
        const float s = x * (1.0f + x2 * (-1.0f / 6 + x2 * (1.0f / 120 + x2 * (-1.0f / 5040 + x2 * (
            1.0f / 362880 + x2 * (-1.0f / 39916800))))));
        const float c = 1.0f + x2 * (-0.5f + x2 * (1.0f / 24 + x2 * (-1.0f / 720 + x2 * (1.0f / 40320 + x2 * (
            -1.0f / 3628800 + x2 * (1.0f / 479001600))))));
        /* Rotate (cos x, sin x) by quadrant * pi / 2. */
        const float swapped_c = (quadrant & 1u) ? s : c, swapped_s = (quadrant & 1u) ? c : s;
        cosine[i] = ((quadrant + 1u) & 2u) ? -swapped_c : swapped_c;
        sine[i] = (quadrant & 2u) ? -swapped_s : swapped_s;
    }
    for (int64_t i = 0; i < pairs; i++) radius[i] = sqrtf(-2.0f * log_normal(u[i]));
    for (int64_t i = 0; i < m / 2; i++) {
        out[2 * i] = radius[i] * cosine[i];
        out[2 * i + 1] = radius[i] * sine[i];
    }
    if (m & 1) out[m - 1] = radius[pairs - 1] * cosine[pairs - 1];
}

/* softplus(rho) = max(rho, 0) + log1p(exp(-|rho|)), equal to torch's softplus (beta = 1, threshold
 * 20) in float32: above the threshold log1p(exp(-|rho|)) < ulp(rho) / 2. Also stores exp(-|rho|),
 * from which sigmoid(rho) = (rho > 0 ? 1 : exp(-|rho|)) / (1 + exp(-|rho|)), when tail != NULL. */
static void softplus_block(const float *rho, float *sigma, float *tail, int64_t m) {
    for (int64_t i = 0; i < m; i++) {
        const float x = rho[i], t = exp_nonpositive(x > 0.0f ? -x : x);
        sigma[i] = (x > 0.0f ? x : 0.0f) + log1p_unit(t);
        if (tail) tail[i] = t;
    }
}

/* tb_rademacher and the span kernels below work on elements [offset, offset + n) of a tensor (the
 * pointers point at element offset), so a tensor can be split between threads at offsets that are
 * multiples of BLOCK; the random numbers depend on the element's index only, not on the split. The
 * exported kernels at the end of the file do that split. */

/* Random signs: +1 or -1 with equal probability, one bit of a SplitMix64 output each. */
TB_KERNEL void tb_rademacher(float *out, int64_t n, uint64_t seed, int64_t offset) {
    for (int64_t start = 0; start < n; start += 64) {
        const uint64_t z = splitmix64(seed + (uint64_t)((offset + start) / 64 + 1) * 0x9E3779B97F4A7C15ULL);
        const int64_t m = n - start < 64 ? n - start : 64;
        float *o = out + start;
        for (int64_t i = 0; i < m; i++) o[i] = (float)(int)((z >> i) & 1u) * 2.0f - 1.0f;
    }
}

/* out = mu + sigma * eps | sigma * eps | sigma^2 | nothing, by mode (eps is not stored: the backward pass
 * recovers sigma * eps from out). With sums != NULL, also the sums
 * the KL divergence to N(loc, scale^2) needs: sums[0] = sum sigma^2, sums[1] = sum (mu - loc)^2,
 * sums[2] = sum log sigma. */
TB_KERNEL void gaussian_forward_span(const float *mu, const float *rho, float *out, int64_t n, int mode,
                                     uint64_t seed, int64_t offset, float loc, double *sums) {
    double total_square = 0.0, total_deviation = 0.0, total_log = 0.0;
    float sigma[BLOCK], e[BLOCK];
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t m = n - start < BLOCK ? n - start : BLOCK;
        const float *mean = mu + start;
        float *o = out + start;
        softplus_block(rho + start, sigma, NULL, m);
        if (mode == OUT_SAMPLE) {
            normal_block(e, offset + start, m, seed);
            for (int64_t i = 0; i < m; i++) o[i] = mean[i] + sigma[i] * e[i];
        } else if (mode == OUT_PERTURBATION) {
            normal_block(e, offset + start, m, seed);
            for (int64_t i = 0; i < m; i++) o[i] = sigma[i] * e[i];
        } else if (mode == OUT_VARIANCE) {
            for (int64_t i = 0; i < m; i++) o[i] = sigma[i] * sigma[i];
        }
        if (sums) {
            float square = 0.0f, deviation = 0.0f;
            for (int64_t i = 0; i < m; i++) {
                const float d = mean[i] - loc;
                square += sigma[i] * sigma[i];
                deviation += d * d;
            }
            total_square += square;
            total_deviation += deviation;
            total_log += sum_log(sigma, m);
        }
    }
    if (sums) {
        sums[0] = total_square;
        sums[1] = total_deviation;
        sums[2] = total_log;
    }
}

/* Gradients of out (by mode, with upstream grad_out, may be NULL), of an output equal to mu (with
 * upstream grad_mean, may be NULL; the sample's own gradient in mu for OUT_SAMPLE) and of kl_grad * KL,
 * where KL = (sum sigma^2 + sum (mu - loc)^2) / (2 prior_var) - sum log sigma + const. drawn is the
 * forward's out, from which sigma * eps is recovered: out - mu for OUT_SAMPLE, out itself for
 * OUT_PERTURBATION. The recovery is off by at most half an ulp of out, so the data term of grad_rho,
 * grad_out * (sigma * eps) * sigmoid(rho) / sigma, is off by at most |grad_out| * ulp(out) / 2
 * (sigmoid(rho) <= softplus(rho)). grad_mu and grad_rho may be NULL when not needed. */
TB_KERNEL void gaussian_backward_span(const float *mu, const float *rho, const float *drawn, const float *grad_out,
                                      const float *grad_mean, float *grad_mu, float *grad_rho, int64_t n, int mode,
                                      float kl_grad, float loc, float prior_var) {
    const float c = kl_grad / prior_var;
    float sigma[BLOCK], tail[BLOCK], data[BLOCK];
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t m = n - start < BLOCK ? n - start : BLOCK;
        const float *mean = mu + start, *g = grad_out ? grad_out + start : NULL;
        if (grad_mu) {
            float *gm = grad_mu + start;
            const float *gmean = grad_mean ? grad_mean + start : NULL;
            if (gmean)
                for (int64_t i = 0; i < m; i++) gm[i] = gmean[i] + c * (mean[i] - loc);
            else
                for (int64_t i = 0; i < m; i++) gm[i] = c * (mean[i] - loc);
        }
        if (grad_rho) {
            float *gr = grad_rho + start;
            softplus_block(rho + start, sigma, tail, m);
            /* d out / d sigma times grad_out, times sigma: g eps sigma | 2 g sigma^2. */
            if (g && mode == OUT_SAMPLE)
                for (int64_t i = 0; i < m; i++) data[i] = g[i] * (drawn[start + i] - mean[i]);
            else if (g && mode == OUT_PERTURBATION)
                for (int64_t i = 0; i < m; i++) data[i] = g[i] * drawn[start + i];
            else if (g && mode == OUT_VARIANCE)
                for (int64_t i = 0; i < m; i++) data[i] = 2.0f * g[i] * sigma[i] * sigma[i];
            else
                for (int64_t i = 0; i < m; i++) data[i] = 0.0f;
            /* grad_rho = (data / sigma + c sigma - kl_grad / sigma) sigmoid(rho), with one division. */
            for (int64_t i = 0; i < m; i++) {
                const float x = rho[start + i], t = tail[i], s = sigma[i];
                const float q = s == 0.0f ? 0.0f : 1.0f / (s * (1.0f + t));
                gr[i] = (x > 0.0f ? 1.0f : t) * q * (data[i] + c * s * s - kl_grad);
            }
        }
    }
}

/* Local reparameterization output: out = mean + sqrt(max(var, tiny)) * eps with fresh eps, and the
 * derivative of out in var, eps / (2 sqrt(var)) where var >= tiny, else 0 (the clamp's gradient). */
TB_KERNEL void local_reparameterization_span(const float *mean, const float *var, float *out, float *slope, int64_t n,
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

/* ---------------------------------------------------------------- exported kernels: spans on threads */

/* How [0, n) is split for at most `threads` threads: `count` spans (0 for an empty tensor) of `length`
 * elements, a multiple of BLOCK and at least MIN_SPAN unless n is smaller, span i starting at i * length. */
typedef struct {
    int64_t length;
    int count;
} Spans;

static Spans split(int64_t n, int threads) {
    int64_t parts = n / MIN_SPAN;
    parts = parts > threads ? threads : parts;
    parts = parts < 1 ? 1 : parts;
    const int64_t per_part = (n + parts - 1) / parts;
    const int64_t length = per_part > BLOCK ? (per_part + BLOCK - 1) / BLOCK * BLOCK : BLOCK;
    return (Spans){length, (int)((n + length - 1) / length)};
}

/* The number of elements of span i. */
static inline int64_t span_size(Spans spans, int i, int64_t n) {
    const int64_t rest = n - (int64_t)i * spans.length;
    return rest < spans.length ? rest : spans.length;
}

static inline const float *at(const float *p, int64_t offset) { return p ? p + offset : NULL; }
static inline float *at_mut(float *p, int64_t offset) { return p ? p + offset : NULL; }

/* gaussian_forward_span over [0, n); sums (3 doubles, may be NULL) adds the spans' sums in span order. */
void tb_gaussian_forward(const float *mu, const float *rho, float *out, int64_t n, int mode, uint64_t seed,
                         float loc, double *sums, int threads) {
    const Spans spans = split(n, threads);
    double partial[spans.count > 0 ? spans.count : 1][3];
#pragma omp parallel for num_threads(spans.count > 1 ? spans.count : 1) schedule(static, 1) if (spans.count > 1)
    for (int i = 0; i < spans.count; i++) {
        const int64_t offset = (int64_t)i * spans.length, m = span_size(spans, i, n);
        gaussian_forward_span(mu + offset, rho + offset, at_mut(out, offset), m, mode, seed, offset, loc,
                              sums ? partial[i] : NULL);
    }
    if (sums) {
        sums[0] = sums[1] = sums[2] = 0.0;
        for (int i = 0; i < spans.count; i++)
            for (int k = 0; k < 3; k++) sums[k] += partial[i][k];
    }
}

void tb_gaussian_backward(const float *mu, const float *rho, const float *drawn, const float *grad_out,
                          const float *grad_mean, float *grad_mu, float *grad_rho, int64_t n, int mode,
                          float kl_grad, float loc, float prior_var, int threads) {
    const Spans spans = split(n, threads);
#pragma omp parallel for num_threads(spans.count > 1 ? spans.count : 1) schedule(static, 1) if (spans.count > 1)
    for (int i = 0; i < spans.count; i++) {
        const int64_t offset = (int64_t)i * spans.length, m = span_size(spans, i, n);
        gaussian_backward_span(mu + offset, rho + offset, at(drawn, offset), at(grad_out, offset),
                               at(grad_mean, offset), at_mut(grad_mu, offset), at_mut(grad_rho, offset), m, mode,
                               kl_grad, loc, prior_var);
    }
}

void tb_local_reparameterization(const float *mean, const float *var, float *out, float *slope, int64_t n,
                                 uint64_t seed, int threads) {
    const Spans spans = split(n, threads);
#pragma omp parallel for num_threads(spans.count > 1 ? spans.count : 1) schedule(static, 1) if (spans.count > 1)
    for (int i = 0; i < spans.count; i++) {
        const int64_t offset = (int64_t)i * spans.length, m = span_size(spans, i, n);
        local_reparameterization_span(mean + offset, var + offset, out + offset, slope + offset, m, seed, offset);
    }
}

