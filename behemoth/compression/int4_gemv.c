/* Weight-only int4 matmul for decoding on x86-64 CPUs: y (M, N) fp32 = x (M, K) bf16 @ W^T, where W is
 * stored as 4-bit codes q with a bf16 scale s and zero z per group of G inputs: w = (q - 8) s + z.
 *
 * Why our own: at batch 1 torch's _weight_int4pack_mm_for_cpu is compute-bound on a 2-core machine (a table
 * lookup and two FMAs per 16 weights: ~18 GB/s of weights against ~40 GB/s of memory bandwidth on an AVX-512
 * machine; 3.3 GB/s on an AVX2-only EPYC), and no installable library ships a faster x86 int4 CPU kernel
 * (torchao's wheel has no CPU kernels; bitsandbytes' CPU path fetches code from a hub).
 *
 * Two builds of this file, chosen by the CPU (int4_kernel.py compiles the one that runs here):
 * - AVX-512 BF16: a code becomes a bf16 number with one shift and one bitwise op: the bf16 bit pattern
 *   0x4300 | q is exactly 128 + q (q < 128), so 32 weights cost a shift, a ternary-logic op and one bf16
 *   dot-product instruction, and the 128 offset folds into the per-group zero term:
 *     y = sum_g s_g * sum_k (128 + q_k) x_k + (z_g - 136 s_g) * sum_k x_k.
 * - AVX2 + FMA (no bf16 dot product): x is rounded to int16 once per call, with one scale per 128 inputs
 *   (relative error <= 2^-16 of the block's largest |x|, against bf16's own 2^-9 per input), and 16 codes
 *   at a time, masked in their 16-bit lanes, are multiplied by it with one integer multiply-add (vpmaddwd:
 *   16 products, summed in pairs into int32, exactly): y = sum_g s_g sx_b * sum_k q_k x16_k
 *   + (z_g - 8 s_g) * sum_k x_k, the zero term from the bf16 x itself. An fp32 version (codes converted to
 *   float, one FMA per 8) spent a third of its time converting and read weights at 12.9 GB/s where this
 *   reads ~19 GB/s (a 2-core EPYC, 18432 x 3072).
 *
 * Layout: each 128-weight block of a row is 32 little-endian u16 lanes, lane i = q[i] | q[32 + i] << 4 |
 * q[64 + i] << 8 | q[96 + i] << 12, so nibble plane c of the block's lanes holds its codes 32c..32c+31 in
 * order. Scales and zeros: (N, K / G, 2) bf16. K must be a multiple of 128, G one of 32, 64, 128.
 * Rows of x are taken four at a time, so a block's codes are expanded once per four rows. */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TILE 4
/* read 3 KiB ahead (each core streams its rows): at batch 1 here, a GPT-2-small token's matmuls took 2.14 ms
 * with no prefetch or 1 KiB, 1.98 ms with 3 KiB (2 and 4 KiB in between); Llama-1B shapes gained 9% too */
#define PREFETCH_BLOCKS 48

static inline float bf16_to_float(uint16_t v) {
  uint32_t bits = (uint32_t)v << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* sums[g] = the sum of x over group g: the zero term's factor */
static void group_sums(const uint16_t *x, long K, long G, float *sums) {
  for (long g = 0; g < K / G; g++) {
    float s = 0.0f;
    for (long k = g * G; k < (g + 1) * G; k++) s += bf16_to_float(x[k]);
    sums[g] = s;
  }
}

#if defined(__AVX512BF16__)

typedef uint16_t x_type; /* x as given: bf16 */

/* One row of x as the row functions read it. */
typedef struct {
  const x_type *values;
  const float *sums; /* per group */
} x_row;

static const x_type *prepare_values(const uint16_t *x, long M, long K, float **block_scales) {
  (void)M, (void)K;
  *block_scales = NULL;
  return x;
}
static void release_values(const x_type *values, const uint16_t *x) { (void)values, (void)x; }
static inline x_row make_row(const x_type *values, const float *block_scales, const float *sums, long K) {
  (void)block_scales, (void)K;
  return (x_row){values, sums};
}

static inline void expand_block(__m512i packed, __m512i q[4]) {
  const __m512i nibble = _mm512_set1_epi16(0x000F), offset = _mm512_set1_epi16(0x4300);
  q[0] = _mm512_ternarylogic_epi32(packed, nibble, offset, 0xEA); /* (a & b) | c */
  q[1] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(packed, 4), nibble, offset, 0xEA);
  q[2] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(packed, 8), nibble, offset, 0xEA);
  q[3] = _mm512_or_si512(_mm512_srli_epi16(packed, 12), offset);
}

/* One row of W against `tile` rows of x; always inlined, so each call site's constant tile (1 or TILE)
 * compiles to its own unrolled loop. */
static inline __attribute__((always_inline)) void row_tile(const uint8_t *row,
                                                           const uint16_t *scales_zeros, const x_row *xs,
                                                           long K, long G, float *out, const int tile) {
  const long chunks_per_group = G / 32;
  __m512 acc[TILE], part[TILE];
  float zero_term[TILE];
  for (int t = 0; t < tile; t++) {
    acc[t] = _mm512_setzero_ps();
    part[t] = _mm512_setzero_ps();
    zero_term[t] = 0.0f;
  }
  long chunk = 0, group = 0;
  for (long block = 0; block < K / 128; block++) {
    _mm_prefetch((const char *)(row + (block + PREFETCH_BLOCKS) * 64), _MM_HINT_T0);
    __m512i q[4];
    expand_block(_mm512_loadu_si512(row + block * 64), q);
    for (int c = 0; c < 4; c++) {
      for (int t = 0; t < tile; t++) {
        __m512i xv = _mm512_loadu_si512(xs[t].values + block * 128 + 32 * c);
        part[t] = _mm512_dpbf16_ps(part[t], (__m512bh)q[c], (__m512bh)xv);
      }
      if (++chunk == chunks_per_group) {
        float s = bf16_to_float(scales_zeros[2 * group]), z = bf16_to_float(scales_zeros[2 * group + 1]);
        __m512 scale = _mm512_set1_ps(s);
        for (int t = 0; t < tile; t++) {
          acc[t] = _mm512_fmadd_ps(part[t], scale, acc[t]);
          part[t] = _mm512_setzero_ps();
          zero_term[t] += (z - 136.0f * s) * xs[t].sums[group]; /* 128 (the expansion) + 8 (the codes) */
        }
        chunk = 0;
        group++;
      }
    }
  }
  for (int t = 0; t < tile; t++) out[t] = _mm512_reduce_add_ps(acc[t]) + zero_term[t];
}

static void matvec_rows(const uint8_t *w, const uint16_t *scales_zeros, x_row x, float *y, long N, long K,
                        long G) {
  const long groups = K / G;
#pragma omp parallel for schedule(static)
  for (long n = 0; n < N; n++) row_tile(w + n * (K / 2), scales_zeros + n * groups * 2, &x, K, G, y + n, 1);
}

#elif defined(__AVX2__) && defined(__FMA__)

typedef int16_t x_type; /* x rounded to int16, a scale per 128 inputs */

typedef struct {
  const x_type *values;
  const float *block_scales; /* per 128 inputs: x ~ values * block_scales[k / 128] */
  const float *sums;         /* per group, of the bf16 x */
} x_row;

/* M rows of K bf16 inputs as int16, in a new buffer (NULL when it cannot be allocated), with a scale per
 * 128-input block in another (*block_scales). */
static const x_type *prepare_values(const uint16_t *x, long M, long K, float **block_scales) {
  const long blocks = M * K / 128;
  int16_t *values = malloc(sizeof(int16_t) * M * K);
  *block_scales = malloc(sizeof(float) * (blocks + 1));
  if (!values || !*block_scales) {
    free(values);
    free(*block_scales);
    return NULL;
  }
  for (long b = 0; b < blocks; b++) {
    float largest = 0.0f;
    for (long k = 128 * b; k < 128 * (b + 1); k++) {
      const float v = bf16_to_float(x[k]);
      largest = v > largest ? v : -v > largest ? -v : largest;
    }
    const float scale = largest / 32767.0f, inverse = largest > 0.0f ? 32767.0f / largest : 0.0f;
    for (long k = 128 * b; k < 128 * (b + 1); k++) {
      const float v = bf16_to_float(x[k]) * inverse;
      values[k] = (int16_t)(v >= 0.0f ? v + 0.5f : v - 0.5f);
    }
    (*block_scales)[b] = scale;
  }
  (*block_scales)[blocks] = 0.0f;
  return values;
}
static void release_values(const x_type *values, const uint16_t *x) {
  (void)x;
  free((void *)values);
}
static inline x_row make_row(const x_type *values, const float *block_scales, const float *sums, long K) {
  (void)K;
  return (x_row){values, block_scales, sums};
}

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* The codes of a 128-weight block as eight vectors of 16 int16 lanes: q[2c + h] holds codes 32c + 16h ..
 * 32c + 16h + 15 (nibble plane c of lanes 16h..16h+15), in the order of x. */
static inline void expand_block(const uint8_t *lanes, __m256i q[8]) {
  const __m256i nibble = _mm256_set1_epi16(0x000F);
  for (int h = 0; h < 2; h++) {
    const __m256i packed = _mm256_loadu_si256((const __m256i *)(lanes + 32 * h));
    q[h] = _mm256_and_si256(packed, nibble);
    q[2 + h] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
    q[4 + h] = _mm256_and_si256(_mm256_srli_epi16(packed, 8), nibble);
    q[6 + h] = _mm256_srli_epi16(packed, 12);
  }
}

/* sum of q x16 over chunk c (32 codes) of a block, as 8 int32 lanes (|sum| < 2^21: no overflow) */
static inline __m256i chunk_dot(const __m256i q[8], const x_type *xb, int c) {
  const __m256i lo = _mm256_madd_epi16(q[2 * c], _mm256_loadu_si256((const __m256i *)(xb + 32 * c)));
  const __m256i hi = _mm256_madd_epi16(q[2 * c + 1], _mm256_loadu_si256((const __m256i *)(xb + 32 * c + 16)));
  return _mm256_add_epi32(lo, hi);
}

static inline float zero_term(const uint16_t *scales_zeros, const float *sums, long groups) {
  float total = 0.0f;
  for (long g = 0; g < groups; g++) {
    const float s = bf16_to_float(scales_zeros[2 * g]), z = bf16_to_float(scales_zeros[2 * g + 1]);
    total += (z - 8.0f * s) * sums[g];
  }
  return total;
}

/* One row of W against `tile` rows of x, for a constant G: the block's codes expanded once for all rows;
 * each group's integer sum converted once and scaled by s_g times the block's x scale. Always inlined, so
 * each (tile, G) compiles to its own unrolled loop. */
static inline __attribute__((always_inline)) void row_tile(const uint8_t *row,
                                                           const uint16_t *scales_zeros, const x_row *xs,
                                                           long K, const long G, float *out,
                                                           const int tile) {
  const int chunks_per_group = G / 32;
  __m256 acc[TILE];
  for (int t = 0; t < tile; t++) acc[t] = _mm256_setzero_ps();
  for (long block = 0; block < K / 128; block++) {
    const uint8_t *lanes = row + block * 64;
    _mm_prefetch((const char *)(lanes + PREFETCH_BLOCKS * 64), _MM_HINT_T0);
    __m256i q[8];
    expand_block(lanes, q);
    for (int t = 0; t < tile; t++) {
      const x_type *xb = xs[t].values + block * 128;
      const float x_scale = xs[t].block_scales[block];
      for (int c0 = 0; c0 < 4; c0 += chunks_per_group) {
        __m256i sum = chunk_dot(q, xb, c0);
        for (int c = c0 + 1; c < c0 + chunks_per_group; c++) sum = _mm256_add_epi32(sum, chunk_dot(q, xb, c));
        const float s = bf16_to_float(scales_zeros[2 * ((block * 128 + 32 * c0) / G)]);
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(s * x_scale), acc[t]);
      }
    }
  }
  for (int t = 0; t < tile; t++) out[t] = hsum(acc[t]) + zero_term(scales_zeros, xs[t].sums, K / G);
}

static void matvec_rows(const uint8_t *w, const uint16_t *scales_zeros, x_row x, float *y, long N, long K,
                        long G) {
  const long groups = K / G;
#define MATVEC_FOR(GROUP)                                                                                  \
  _Pragma("omp parallel for schedule(static)") for (long n = 0; n < N; n++)                              \
      row_tile(w + n * (K / 2), scales_zeros + n * groups * 2, &x, K, GROUP, y + n, 1)
  if (G == 32)
    MATVEC_FOR(32);
  else if (G == 64)
    MATVEC_FOR(64);
  else
    MATVEC_FOR(128);
#undef MATVEC_FOR
}

#else
#error "int4_gemv.c needs AVX-512 BF16 or AVX2 with FMA"
#endif

/* Returns 0, or -1 when a scratch buffer could not be allocated. */
int int4_matmul(const uint8_t *w, const uint16_t *scales_zeros, const uint16_t *x, float *y, long M, long N,
                long K, long G) {
  const long groups = K / G;
  float *sums = calloc(M * groups + groups, sizeof(float)), *block_scales = NULL;
  x_type *zero_values = calloc(K, sizeof(x_type));
  float *zero_scales = calloc(K / 128, sizeof(float));
  const x_type *values = prepare_values(x, M, K, &block_scales);
  x_row *rows = malloc(sizeof(x_row) * (M + 1));
  if (!sums || !zero_values || !zero_scales || !values || !rows) {
    free(sums);
    free(zero_values);
    free(zero_scales);
    free(rows);
    if (values) release_values(values, x);
    free(block_scales);
    return -1;
  }
  for (long m = 0; m < M; m++) {
    group_sums(x + m * K, K, G, sums + m * groups);
    rows[m] = make_row(values + m * K, block_scales ? block_scales + m * (K / 128) : NULL, sums + m * groups, K);
  }
  rows[M] = make_row(zero_values, zero_scales, sums + M * groups, K); /* pads the last tile */
#pragma omp parallel for schedule(static)
  for (long n = 0; n < N; n++) {
    for (long m0 = 0; m0 < M; m0 += TILE) {
      x_row tile_rows[TILE];
      for (int t = 0; t < TILE; t++) tile_rows[t] = rows[m0 + t < M ? m0 + t : M];
      float out[TILE];
#if defined(__AVX512BF16__)
      row_tile(w + n * (K / 2), scales_zeros + n * groups * 2, tile_rows, K, G, out, TILE);
#else
      if (G == 32)
        row_tile(w + n * (K / 2), scales_zeros + n * groups * 2, tile_rows, K, 32, out, TILE);
      else if (G == 64)
        row_tile(w + n * (K / 2), scales_zeros + n * groups * 2, tile_rows, K, 64, out, TILE);
      else
        row_tile(w + n * (K / 2), scales_zeros + n * groups * 2, tile_rows, K, 128, out, TILE);
#endif
      for (int t = 0; t < TILE && m0 + t < M; t++) y[(m0 + t) * N + n] = out[t];
    }
  }
  free(sums);
  free(zero_values);
  free(zero_scales);
  free(rows);
  release_values(values, x);
  free(block_scales);
  return 0;
}

/* One x row: the decode case, without the tile's three idle rows. */
int int4_matvec(const uint8_t *w, const uint16_t *scales_zeros, const uint16_t *x, float *y, long N, long K,
                long G) {
  float sums[K / 32 + 1], *block_scales = NULL;
  const x_type *values = prepare_values(x, 1, K, &block_scales);
  if (!values) return -1;
  group_sums(x, K, G, sums);
  matvec_rows(w, scales_zeros, make_row(values, block_scales, sums, K), y, N, K, G);
  release_values(values, x);
  free(block_scales);
  return 0;
}
