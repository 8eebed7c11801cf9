/* Weight gradient of a 2-D convolution with one input channel, stride 1, no dilation and zero
 * padding (float32, contiguous), such as the first layer of a network on grey-scale images, where
 * oneDNN's general kernel is several times slower than this direct sum.
 *
 * grad_weight[o, i, j] = sum over b, h, w of grad_out[b, o, h, w] * x[b, h + i - ph, w + j - pw],
 * with x zero outside the image. Each example's input window and output gradient are copied once
 * into zero-padded buffers whose rows are whole vectors; a tap's products are accumulated in up to
 * four independent vectors along a row and reduced once per example and tap into a float64 total.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 8

/* Function multiversioning, as in gaussian.c. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define TB_KERNEL __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#else
#define TB_KERNEL
#endif

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

static inline vec load(const float *p) {
    vec v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Sum over h < rows of the products of rows of grad and window, columns [0, chunks * LANES), chunks <= 4. */
static vec tap_sum(const float *grad, int64_t grad_stride, const float *window, int64_t window_stride,
                   int64_t rows, int64_t chunks) {
    vec a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    for (int64_t h = 0; h < rows; h++) {
        const float *g = grad + h * grad_stride, *x = window + h * window_stride;
        a0 += load(g) * load(x);
        if (chunks > 1) a1 += load(g + LANES) * load(x + LANES);
        if (chunks > 2) a2 += load(g + 2 * LANES) * load(x + 2 * LANES);
        if (chunks > 3) a3 += load(g + 3 * LANES) * load(x + 3 * LANES);
    }
    return (a0 + a1) + (a2 + a3);
}

/* Adds the examples [first, last) into total[(o * kh + i) * kw + j]; returns 0, or -1 when out of memory. */
TB_KERNEL int tb_conv2d_single_channel_weight_grad(const float *x, const float *grad_out, double *total, int64_t first,
                                         int64_t last, int64_t out_channels, int64_t h_in, int64_t w_in,
                                         int64_t h_out, int64_t w_out, int64_t kh, int64_t kw, int64_t ph,
                                         int64_t pw) {
    const int64_t row = (w_out + LANES - 1) / LANES * LANES;      /* output row width in whole vectors */
    const int64_t hp = h_out + kh - 1, wp = row + kw - 1;          /* the input window the outputs read */
    float *window = malloc(sizeof(float) * (size_t)(hp * wp + out_channels * h_out * row));
    if (!window) return -1;
    float *grad = window + hp * wp;
    for (int64_t b = first; b < last; b++) {
        const float *image = x + b * h_in * w_in, *source = grad_out + b * out_channels * h_out * w_out;
        for (int64_t y = 0; y < hp; y++)
            for (int64_t z = 0; z < wp; z++) {
                const int64_t sy = y - ph, sz = z - pw;
                window[y * wp + z] = sy >= 0 && sy < h_in && sz >= 0 && sz < w_in ? image[sy * w_in + sz] : 0.0f;
            }
        for (int64_t r = 0; r < out_channels * h_out; r++) {
            memcpy(grad + r * row, source + r * w_out, sizeof(float) * (size_t)w_out);
            memset(grad + r * row + w_out, 0, sizeof(float) * (size_t)(row - w_out));
        }
        for (int64_t o = 0; o < out_channels; o++)
            for (int64_t i = 0; i < kh; i++)
                for (int64_t j = 0; j < kw; j++) {
                    vec sum = {0};
                    for (int64_t w0 = 0; w0 < row; w0 += 4 * LANES) {
                        const int64_t chunks = (row - w0) / LANES < 4 ? (row - w0) / LANES : 4;
                        sum += tap_sum(grad + o * h_out * row + w0, row, window + i * wp + j + w0, wp, h_out, chunks);
                    }
                    float value = 0.0f;
                    for (int k = 0; k < LANES; k++) value += sum[k];
                    total[(o * kh + i) * kw + j] += value;
                }
    }
    free(window);
    return 0;
}
