/* Weight-only int8 matmul for decoding on x86-64 CPUs with AVX2 + FMA: y (M, N) fp32 = x (M, K) bf16 @ W^T,
 * where W = q s is stored as int8 codes q (N, K), row-major (the layout Int8WeightOnlyLinear keeps and the
 * .bhm file holds), with one bf16 scale s per output row.
 *
 * Why our own: on a 2-core EPYC without AVX-512, torch's _weight_int8pack_mm read a GPT-2-small token's
 * int8 weights at 5.5 GB/s, slower than fp32 F.linear read its four times larger ones (13.5 GB/s). Here x
 * is rounded to int16 once per call, with one scale per 128 inputs (relative error <= 2^-16 of the block's
 * largest |x|, against bf16's own 2^-9 per input; int4_gemv.c rounds to int8, whose coarser steps the 4-bit
 * weights' own error hides, and 8-bit weights' would not), and 16 codes at a time are sign-extended to 16
 * bits and multiplied by it with one integer multiply-add (vpmaddwd: exact pair sums into int32); each
 * block's integer sum is converted once and scaled by the block's x scale, and the row's sum by s. An fp32
 * version (codes converted to float, one FMA per 8) read 11-17 GB/s.
 *
 * Rows of x are taken four at a time (TILE), so a row's codes are expanded once per four rows of x. Any K:
 * a last block shorter than 128 inputs is summed without vectors. */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TILE 4
#define BLOCK 128           /* inputs per x scale; an int32 lane sums 8 pair products of at most 2^22 each */
#define PREFETCH_BYTES 3072 /* each core streams its rows; the distance the int4 kernel measured best */

static inline float bf16_to_float(uint16_t v) {
  uint32_t bits = (uint32_t)v << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline long blocks_of(long K) { return (K + BLOCK - 1) / BLOCK; }

static inline __m256 bf16x8_to_float(const uint16_t *x) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)x)), 16));
}

static inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

/* one row of K bf16 inputs as int16 in `values`, with a scale per block: whole blocks with vectors, the
 * short last one without. Rounding a Llama-1B down projection's 5632 inputs one at a time took ~10 us, 5% of
 * its ~250 us matmul, while the second thread waited (a call with one output row: 14.4 us, 4.1 us now). */
static void round_to_int16(const uint16_t *x, long K, int16_t *values, float *scales) {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i in_order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7); /* undoes packs_epi32's lane order */
  for (long b = 0; b < K / BLOCK; b++) {
    __m256 f[BLOCK / 8], largest = _mm256_setzero_ps();
    for (int j = 0; j < BLOCK / 8; j++) {
      f[j] = bf16x8_to_float(x + BLOCK * b + 8 * j);
      largest = _mm256_max_ps(largest, _mm256_and_ps(f[j], magnitude));
    }
    const float top = hmax(largest);
    const __m256 inverse = _mm256_set1_ps(top > 0.0f ? 32767.0f / top : 0.0f);
    for (int j = 0; j < BLOCK / 8; j += 2) { /* rounded to nearest, |v| <= 32767 */
      const __m256i low = _mm256_cvtps_epi32(_mm256_mul_ps(f[j], inverse));
      const __m256i high = _mm256_cvtps_epi32(_mm256_mul_ps(f[j + 1], inverse));
      const __m256i packed = _mm256_permutevar8x32_epi32(_mm256_packs_epi32(low, high), in_order);
      _mm256_storeu_si256((__m256i *)(values + BLOCK * b + 8 * j), packed);
    }
    scales[b] = top / 32767.0f;
  }
  if (K % BLOCK) {
    const long start = K / BLOCK * BLOCK;
    float largest = 0.0f;
    for (long k = start; k < K; k++) {
      const float v = bf16_to_float(x[k]);
      largest = v > largest ? v : -v > largest ? -v : largest;
    }
    const float inverse = largest > 0.0f ? 32767.0f / largest : 0.0f;
    for (long k = start; k < K; k++) /* rounded to nearest, as the vectors round */
      values[k] = (int16_t)_mm_cvt_ss2si(_mm_set_ss(bf16_to_float(x[k]) * inverse));
    scales[K / BLOCK] = largest / 32767.0f;
  }
}

/* codes k..k+15 of a row, sign-extended to int16 */
static inline __m256i codes16(const int8_t *row, long k) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(row + k)));
}

/* sum_k q[k] x[k] for one row of codes against `tile` rows of x (int16, a scale per block); always inlined,
 * so each constant tile compiles to its own unrolled loop */
static inline __attribute__((always_inline)) void row_tile(const int8_t *row, const int16_t *const *xs,
                                                           const float *const *x_scales, long K, float *out,
                                                           const int tile) {
  __m256 acc[TILE];
  for (int t = 0; t < tile; t++) acc[t] = _mm256_setzero_ps();
  for (long block = 0; block < K / BLOCK; block++) {
    const long k0 = block * BLOCK;
    _mm_prefetch((const char *)(row + k0 + PREFETCH_BYTES), _MM_HINT_T0);
    _mm_prefetch((const char *)(row + k0 + PREFETCH_BYTES + 64), _MM_HINT_T0);
    __m256i sum[TILE];
    for (int t = 0; t < tile; t++) sum[t] = _mm256_setzero_si256();
    for (long k = k0; k < k0 + BLOCK; k += 16) {
      const __m256i q = codes16(row, k);
      for (int t = 0; t < tile; t++)
        sum[t] = _mm256_add_epi32(sum[t],
                                  _mm256_madd_epi16(q, _mm256_loadu_si256((const __m256i *)(xs[t] + k))));
    }
    for (int t = 0; t < tile; t++)
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[t]), _mm256_set1_ps(x_scales[t][block]), acc[t]);
  }
  for (int t = 0; t < tile; t++) {
    out[t] = hsum(acc[t]);
    if (K % BLOCK) { /* the short last block */
      long tail = 0;
      for (long k = K / BLOCK * BLOCK; k < K; k++) tail += (long)row[k] * xs[t][k];
      out[t] += (float)tail * x_scales[t][K / BLOCK];
    }
  }
}

/* y = x @ (q s)^T. Returns 0, or -1 when a scratch buffer could not be allocated. */
int int8_matmul(const int8_t *q, const uint16_t *scales, const uint16_t *x, float *y, long M, long N, long K) {
  const long padded = (M + TILE - 1) / TILE * TILE; /* rows of x, with zero rows up to a whole tile */
  const long blocks = blocks_of(K);
  int16_t *values = calloc(padded * K, sizeof(int16_t));
  float *x_scales = calloc(padded * blocks, sizeof(float));
  if (!values || !x_scales) {
    free(values);
    free(x_scales);
    return -1;
  }
  for (long m = 0; m < M; m++) round_to_int16(x + m * K, K, values + m * K, x_scales + m * blocks);
  if (M == 1) {
    const int16_t *xs[1] = {values};
    const float *xsc[1] = {x_scales};
#pragma omp parallel for schedule(static)
    for (long n = 0; n < N; n++) {
      float out[1];
      row_tile(q + n * K, xs, xsc, K, out, 1);
      y[n] = out[0] * bf16_to_float(scales[n]);
    }
  } else {
#pragma omp parallel for schedule(static)
    for (long n = 0; n < N; n++) {
      const float s = bf16_to_float(scales[n]);
      for (long m0 = 0; m0 < M; m0 += TILE) {
        const int16_t *xs[TILE];
        const float *xsc[TILE];
        for (int t = 0; t < TILE; t++) {
          xs[t] = values + (m0 + t) * K;
          xsc[t] = x_scales + (m0 + t) * blocks;
        }
        float out[TILE];
        row_tile(q + n * K, xs, xsc, K, out, TILE);
        for (int t = 0; t < TILE && m0 + t < M; t++) y[(m0 + t) * N + n] = out[t] * s;
      }
    }
  }
  free(values);
  free(x_scales);
  return 0;
}
