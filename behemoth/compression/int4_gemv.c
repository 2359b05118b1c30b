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
 * - AVX2 + FMA (no bf16 dot product): x is widened to fp32 once per call, and 8 codes become fp32 with a
 *   shift, an and and a convert, then one FMA: y = sum_g s_g * sum_k q_k x_k + (z_g - 8 s_g) * sum_k x_k.
 *   Products of a bf16 x and a 4-bit q are exact in fp32 in both builds, so they agree to rounding.
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
#define CODE_OFFSET 136.0f /* 128 from the bf16 expansion, 8 from the stored codes */

static x_type *widen(const uint16_t *x, long n) {
  (void)n;
  return (x_type *)x;
}
static void release(x_type *xw, const uint16_t *x) { (void)xw, (void)x; }

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
                                                           const uint16_t *scales_zeros,
                                                           const x_type *const *xs,
                                                           const float *const *xsums, long K, long G,
                                                           float *out, const int tile) {
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
        __m512i xv = _mm512_loadu_si512(xs[t] + block * 128 + 32 * c);
        part[t] = _mm512_dpbf16_ps(part[t], (__m512bh)q[c], (__m512bh)xv);
      }
      if (++chunk == chunks_per_group) {
        float s = bf16_to_float(scales_zeros[2 * group]), z = bf16_to_float(scales_zeros[2 * group + 1]);
        __m512 scale = _mm512_set1_ps(s);
        for (int t = 0; t < tile; t++) {
          acc[t] = _mm512_fmadd_ps(part[t], scale, acc[t]);
          part[t] = _mm512_setzero_ps();
          zero_term[t] += (z - CODE_OFFSET * s) * xsums[t][group];
        }
        chunk = 0;
        group++;
      }
    }
  }
  for (int t = 0; t < tile; t++) out[t] = _mm512_reduce_add_ps(acc[t]) + zero_term[t];
}

#elif defined(__AVX2__) && defined(__FMA__)

typedef float x_type; /* x widened to fp32 once per call: AVX2 has no bf16 arithmetic */
#define CODE_OFFSET 8.0f

/* x (n bf16, rows of whole blocks) as fp32 in a new buffer (NULL when it cannot be allocated), each input
 * that meets nibble plane c divided by 16^c: a plane's codes are then taken in place, `lanes & (15 << 4c)`
 * = 16^c q, without a shift, and the product is still exactly q x (powers of two scale exactly). */
static x_type *widen(const uint16_t *x, long n) {
  float *xw = malloc(sizeof(float) * n);
  if (xw)
    for (long k = 0; k < n; k++) xw[k] = bf16_to_float(x[k]) * (1.0f / (float)(1 << (4 * (k % 128 / 32))));
  return xw;
}
static void release(x_type *xw, const uint16_t *x) {
  (void)x;
  free(xw);
}

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* lanes 8o..8o+7 of a block, zero-extended to 32 bits */
static inline __m256i lanes8(const uint8_t *block, int o) {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(block + 16 * o)));
}

/* 16^c times nibble plane c of eight lanes, as fp32 */
static inline __m256 plane(__m256i lanes, int c) {
  return _mm256_cvtepi32_ps(_mm256_and_si256(lanes, _mm256_set1_epi32(0xF << (4 * c))));
}

/* sum_g (z_g - 8 s_g) sum_k x_k: the row's zero term, apart from the hot loop */
static inline float zero_term(const uint16_t *scales_zeros, const float *xsum, long groups) {
  float total = 0.0f;
  for (long g = 0; g < groups; g++) {
    const float s = bf16_to_float(scales_zeros[2 * g]), z = bf16_to_float(scales_zeros[2 * g + 1]);
    total += (z - CODE_OFFSET * s) * xsum[g];
  }
  return total;
}

static inline __m256 group_scale(const uint16_t *scales_zeros, long group) {
  return _mm256_set1_ps(bf16_to_float(scales_zeros[2 * group]));
}

/* One row of W against `tile` rows of x, a chunk at a time: `tile` partial sums in registers (AVX2 has 16),
 * and each eight lanes' codes expanded once for all the tile's rows. */
static inline __attribute__((always_inline)) void row_tile(const uint8_t *row,
                                                           const uint16_t *scales_zeros,
                                                           const x_type *const *xs,
                                                           const float *const *xsums, long K, long G,
                                                           float *out, const int tile) {
  __m256 acc[TILE];
  for (int t = 0; t < tile; t++) acc[t] = _mm256_setzero_ps();
  for (long block = 0; block < K / 128; block++) {
    const uint8_t *lanes = row + block * 64;
    _mm_prefetch((const char *)(lanes + PREFETCH_BLOCKS * 64), _MM_HINT_T0);
    for (int c = 0; c < 4; c++) {
      __m256 part[TILE];
      for (int t = 0; t < tile; t++) part[t] = _mm256_setzero_ps();
      for (int o = 0; o < 4; o++) {
        const __m256 q = plane(lanes8(lanes, o), c);
        for (int t = 0; t < tile; t++)
          part[t] = _mm256_fmadd_ps(q, _mm256_loadu_ps(xs[t] + block * 128 + 32 * c + 8 * o), part[t]);
      }
      const __m256 scale = group_scale(scales_zeros, (block * 128 + 32 * c) / G);
      for (int t = 0; t < tile; t++) acc[t] = _mm256_fmadd_ps(part[t], scale, acc[t]);
    }
  }
  for (int t = 0; t < tile; t++) out[t] = hsum(acc[t]) + zero_term(scales_zeros, xsums[t], K / G);
}

/* One row of W against one row of x (decoding), for a constant G: eight lanes widened once for all four
 * planes, two partial sums per chunk (eight independent FMA chains for both FMA units), and one scale per
 * group, applied to its chunks' summed partials (a scale per chunk cost a third of the time at G = 128). */
static inline __attribute__((always_inline)) float row_one(const uint8_t *row, const uint16_t *scales_zeros,
                                                           const x_type *x, const float *xsum, long K,
                                                           const long G) {
  const int chunks_per_group = G / 32;
  __m256 acc = _mm256_setzero_ps();
  for (long block = 0; block < K / 128; block++) {
    const uint8_t *lanes = row + block * 64;
    const float *xb = x + block * 128;
    _mm_prefetch((const char *)(lanes + PREFETCH_BLOCKS * 64), _MM_HINT_T0);
    __m256 even[4], odd[4];
    for (int c = 0; c < 4; c++) even[c] = odd[c] = _mm256_setzero_ps();
    for (int o = 0; o < 4; o += 2) {
      const __m256i a = lanes8(lanes, o), b = lanes8(lanes, o + 1);
      for (int c = 0; c < 4; c++) {
        even[c] = _mm256_fmadd_ps(plane(a, c), _mm256_loadu_ps(xb + 32 * c + 8 * o), even[c]);
        odd[c] = _mm256_fmadd_ps(plane(b, c), _mm256_loadu_ps(xb + 32 * c + 8 * o + 8), odd[c]);
      }
    }
    for (int c0 = 0; c0 < 4; c0 += chunks_per_group) {
      __m256 part = _mm256_add_ps(even[c0], odd[c0]);
      for (int c = c0 + 1; c < c0 + chunks_per_group; c++) part = _mm256_add_ps(part, _mm256_add_ps(even[c], odd[c]));
      acc = _mm256_fmadd_ps(part, group_scale(scales_zeros, (block * 128 + 32 * c0) / G), acc);
    }
  }
  return hsum(acc) + zero_term(scales_zeros, xsum, K / G);
}

static void rows_one(const uint8_t *w, const uint16_t *scales_zeros, const x_type *x, const float *xsum,
                     float *y, long N, long K, long G) {
  const long groups = K / G;
#define ROWS_ONE_FOR(GROUP)                                                                              \
  _Pragma("omp parallel for schedule(static)") for (long n = 0; n < N; n++) y[n] =                       \
      row_one(w + n * (K / 2), scales_zeros + n * groups * 2, x, xsum, K, GROUP)
  if (G == 32)
    ROWS_ONE_FOR(32);
  else if (G == 64)
    ROWS_ONE_FOR(64);
  else
    ROWS_ONE_FOR(128);
#undef ROWS_ONE_FOR
}
#define ROW_ONE 1

#else
#error "int4_gemv.c needs AVX-512 BF16 or AVX2 with FMA"
#endif

/* Returns 0, or -1 when a scratch buffer could not be allocated. */
int int4_matmul(const uint8_t *w, const uint16_t *scales_zeros, const uint16_t *x, float *y, long M, long N,
                long K, long G) {
  const long groups = K / G;
  float *xsum = malloc(sizeof(float) * (M * groups + groups));
  x_type *zero_row = calloc(K, sizeof(x_type));
  x_type *xw = widen(x, M * K);
  if (!xsum || !zero_row || !xw) {
    free(xsum);
    free(zero_row);
    if (xw) release(xw, x);
    return -1;
  }
  for (long m = 0; m < M; m++) group_sums(x + m * K, K, G, xsum + m * groups);
  memset(xsum + M * groups, 0, sizeof(float) * groups);
#pragma omp parallel for schedule(static)
  for (long n = 0; n < N; n++) {
    for (long m0 = 0; m0 < M; m0 += TILE) {
      const x_type *xs[TILE];
      const float *sums[TILE];
      for (int t = 0; t < TILE; t++) {
        int real = m0 + t < M;
        xs[t] = real ? xw + (m0 + t) * K : zero_row;
        sums[t] = real ? xsum + (m0 + t) * groups : xsum + M * groups;
      }
      float out[TILE];
      row_tile(w + n * (K / 2), scales_zeros + n * groups * 2, xs, sums, K, G, out, TILE);
      for (int t = 0; t < TILE && m0 + t < M; t++) y[(m0 + t) * N + n] = out[t];
    }
  }
  free(xsum);
  free(zero_row);
  release(xw, x);
  return 0;
}

/* One x row: the decode case, without the tile's three idle rows. */
int int4_matvec(const uint8_t *w, const uint16_t *scales_zeros, const uint16_t *x, float *y, long N, long K,
                long G) {
  const long groups = K / G;
  float xsum[K / 32 + 1];
  x_type *xw = widen(x, K);
  if (!xw) return -1;
  group_sums(x, K, G, xsum);
  const x_type *xs[1] = {xw};
  const float *sums[1] = {xsum};
#ifdef ROW_ONE
  (void)xs, (void)sums, (void)groups;
  rows_one(w, scales_zeros, xw, xsum, y, N, K, G);
#else
#pragma omp parallel for schedule(static)
  for (long n = 0; n < N; n++)
    row_tile(w + n * (K / 2), scales_zeros + n * groups * 2, xs, sums, K, G, y + n, 1);
#endif
  release(xw, x);
  return 0;
}
