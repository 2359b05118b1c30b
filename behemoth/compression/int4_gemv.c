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
 * - AVX2 + FMA (no bf16 dot product): llama.cpp's scheme for its 4-bit weights. x is rounded to int8 once per
 *   call, with one scale sx per 128 inputs (|error| <= sx / 2 per input), and 32 codes at a time, masked
 *   out of their bytes, are multiplied by it with one integer multiply-add (vpmaddubsw: unsigned codes times
 *   signed x, summed in pairs into int16, exactly): y = sum_g s_g sx_b (sum_k q_k x8_k - 8 sum_k x8_k)
 *   + z_g * sum_k x_k, the zero term from the bf16 x itself, added for all groups at the row's end with
 *   vector loads. The int16 version before it (vpmaddwd, 16 codes per multiply-add; an error 256 times
 *   smaller) was compute-bound at ~13 GB/s of weights per core even from cache; on a 2-core EPYC a 768 x
 *   3072 product from cache took 28.6 us instead of 52.7, and a GPT-2-small token's matmuls 4.0 ms instead
 *   of 5.9 (eager). The added error is ~1% of an output's size, against the ~10% that rounding the weights
 *   to 4 bits already costs (perplexity: bench/results/lm_perplexity_avx2.json).
 *
 * Layout: each 128-weight block of a row is 32 little-endian u16 lanes, lane i = q[i] | q[32 + i] << 4 |
 * q[64 + i] << 8 | q[96 + i] << 12, so nibble plane c of the block's lanes holds its codes 32c..32c+31 in
 * order. Scales and zeros: (N, K / G, 2) bf16. K must be a multiple of 128, G one of 32, 64, 128.
 * Rows of x are taken four at a time, so a block's codes are expanded once per four rows.
 *
 * Each build defines x_row (one row of x as its row functions read it), scratch_floats (the scratch one
 * prepared row needs), prepare_row, row_tile and matvec_rows; the driver at the end is shared. */
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

static inline long round_up_8(long n) { return (n + 7) / 8 * 8; }

#if defined(__AVX512BF16__)

/* One row of x as the row functions read it: x as given (bf16), and its sum per group (the zero term's
 * factor). */
typedef struct {
  const uint16_t *values;
  const float *sums;
} x_row;

static long scratch_floats(long K, long G) { return round_up_8(K / G); }

static x_row prepare_row(const uint16_t *x, long K, long G, float *scratch) {
  for (long g = 0; g < K / G; g++) {
    float s = 0.0f;
    for (long k = g * G; k < (g + 1) * G; k++) s += bf16_to_float(x[k]);
    scratch[g] = s;
  }
  return (x_row){x, scratch};
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

/* One row of x as the row functions read it (prepare_row writes it). */
typedef struct {
  const int8_t *values; /* x rounded to int8: per 128-input block, the four 32-byte operands (see below) */
  const float *scales;  /* per block: x ~ values * scale */
  const float *sums;    /* per group, zero-padded to a multiple of 8: the sum of the bf16 x */
  const float *offsets; /* likewise: 8 * scale * the sum of the group's int8 x (the codes' offset of 8) */
} x_row;

static long scratch_floats(long K, long G) { return K / 4 + round_up_8(K / 128) + 2 * round_up_8(K / G); }

static inline __m256 bf16x8_to_float(const uint16_t *x) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)x)), 16));
}

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

/* Rounds one row of x to int8 per 128-input block into `scratch` (scratch_floats(K, G) floats, 32-byte
 * aligned). A block's operand s (0..3) pairs the inputs the way a 32-byte load of the codes holds them:
 * byte 2i + j of operand s is x[16 (s / 2) + 32 (s % 2) + 64 j + i]: the low (s % 2 = 0) or high nibbles of
 * lanes 16 (s / 2) .. 16 (s / 2) + 15, whose low byte holds code i of that plane and high byte code 64 + i. */
static x_row prepare_row(const uint16_t *x, long K, long G, float *scratch) {
  const long blocks = K / 128, groups = K / G, vectors_per_group = G / 8;
  int8_t *values = (int8_t *)scratch;
  float *scales = scratch + K / 4, *sums = scales + round_up_8(blocks), *offsets = sums + round_up_8(groups);
  memset(sums, 0, sizeof(float) * 2 * round_up_8(groups));
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i natural_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* undoes the packs' lane order */
  for (long b = 0; b < blocks; b++) {
    __m256 f[16], largest = _mm256_setzero_ps();
    for (int j = 0; j < 16; j++) {
      f[j] = bf16x8_to_float(x + 128 * b + 8 * j);
      largest = _mm256_max_ps(largest, _mm256_and_ps(f[j], magnitude));
    }
    const float top = hmax(largest), scale = top / 127.0f;
    const __m256 inverse = _mm256_set1_ps(top > 0.0f ? 127.0f / top : 0.0f);
    scales[b] = scale;
    __m256i q[16]; /* int32, |q| <= 127, rounded to nearest */
    for (int j = 0; j < 16; j++) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(f[j], inverse));
    for (long g = b * 128 / G; g < (b + 1) * 128 / G; g++) {
      __m256 sum = _mm256_setzero_ps(), rounded = _mm256_setzero_ps(); /* integers < 2^24: exact in fp32 */
      for (long j = g * vectors_per_group % 16; j < g * vectors_per_group % 16 + vectors_per_group; j++) {
        sum = _mm256_add_ps(sum, f[j]);
        rounded = _mm256_add_ps(rounded, _mm256_cvtepi32_ps(q[j]));
      }
      sums[g] = hsum(sum);
      offsets[g] = 8.0f * scale * hsum(rounded);
    }
    int8_t natural[128] __attribute__((aligned(32)));
    for (int j = 0; j < 4; j++) {
      const __m256i pairs = _mm256_packs_epi16(_mm256_packs_epi32(q[4 * j], q[4 * j + 1]),
                                               _mm256_packs_epi32(q[4 * j + 2], q[4 * j + 3]));
      _mm256_store_si256((__m256i *)(natural + 32 * j), _mm256_permutevar8x32_epi32(pairs, natural_order));
    }
    for (int s = 0; s < 4; s++) {
      const __m128i low = _mm_load_si128((const __m128i *)(natural + 16 * (s / 2) + 32 * (s % 2)));
      const __m128i high = _mm_load_si128((const __m128i *)(natural + 16 * (s / 2) + 32 * (s % 2) + 64));
      _mm_store_si128((__m128i *)(values + 128 * b + 32 * s), _mm_unpacklo_epi8(low, high));
      _mm_store_si128((__m128i *)(values + 128 * b + 32 * s + 16), _mm_unpackhi_epi8(low, high));
    }
  }
  return (x_row){values, scales, sums, offsets};
}

/* A group's bf16 scale, broadcast: the (s, z) pair read as one 32-bit word, shifted (s is its low half). */
static inline __m256 broadcast_scale(const uint16_t *pair) {
  int32_t word;
  memcpy(&word, pair, sizeof word);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_set1_epi32(word), 16));
}

/* sum_g z_g sums_g - s_g offsets_g, spread over 8 lanes: eight groups' (s, z) pairs per load (a masked load
 * for the last, so nothing past the row's scales is read) */
static inline __m256 zero_terms(const uint16_t *scales_zeros, const x_row *x, long groups) {
  const __m256i high_half = _mm256_set1_epi32((int32_t)0xFFFF0000);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 total = _mm256_setzero_ps();
  for (long g = 0; g < groups; g += 8) {
    const __m256i present = _mm256_cmpgt_epi32(_mm256_set1_epi32((int32_t)(groups - g)), lane);
    const __m256i pairs = _mm256_maskload_epi32((const int *)(scales_zeros + 2 * g), present);
    const __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
    const __m256 z = _mm256_castsi256_ps(_mm256_and_si256(pairs, high_half));
    total = _mm256_fmadd_ps(z, _mm256_loadu_ps(x->sums + g), total);
    total = _mm256_fnmadd_ps(s, _mm256_loadu_ps(x->offsets + g), total);
  }
  return total;
}

/* One row of W against `tile` rows of x, for a constant G. A block's four 32-byte code operands are masked
 * once for all rows: for G = 128 both nibbles' bytes at once (each int16 pair sum mixes codes i and 64 + i,
 * one group); for G = 64 and 32 the low and high bytes apart (codes 0..63 and 64..127). Each group's int16
 * sums (|sum| <= 4 * 2 * 15 * 127) widen to int32 once, and are scaled by s_g sx_b. Always inlined, so each
 * (tile, G) compiles to its own unrolled loop. */
static inline __attribute__((always_inline)) void row_tile(const uint8_t *row,
                                                           const uint16_t *scales_zeros, const x_row *xs,
                                                           long K, const long G, float *out,
                                                           const int tile) {
  const __m256i ones = _mm256_set1_epi16(1), nibbles = _mm256_set1_epi8(0x0F);
  const __m256i low_bytes = _mm256_set1_epi16(0x000F), high_bytes = _mm256_set1_epi16(0x0F00);
  __m256 acc[TILE];
  for (int t = 0; t < tile; t++) acc[t] = _mm256_setzero_ps();
  for (long block = 0; block < K / 128; block++) {
    const uint8_t *lanes = row + block * 64;
    _mm_prefetch((const char *)(lanes + PREFETCH_BLOCKS * 64), _MM_HINT_T0);
    const __m256i p0 = _mm256_loadu_si256((const __m256i *)lanes);
    const __m256i p1 = _mm256_loadu_si256((const __m256i *)(lanes + 32));
    const __m256i planes[4] = {p0, _mm256_srli_epi16(p0, 4), p1, _mm256_srli_epi16(p1, 4)};
    const uint16_t *pairs = scales_zeros + 2 * (block * 128 / G);
    if (G == 128) {
      __m256i codes[4];
      for (int s = 0; s < 4; s++) codes[s] = _mm256_and_si256(planes[s], nibbles);
      const __m256 s_g = broadcast_scale(pairs);
      for (int t = 0; t < tile; t++) {
        const __m256i *xv = (const __m256i *)(xs[t].values + block * 128);
        __m256i sum = _mm256_maddubs_epi16(codes[0], _mm256_load_si256(xv));
        for (int s = 1; s < 4; s++)
          sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(codes[s], _mm256_load_si256(xv + s)));
        const __m256 scale = _mm256_mul_ps(s_g, _mm256_broadcast_ss(xs[t].scales + block));
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(sum, ones)), scale, acc[t]);
      }
    } else {
      /* operand s's low bytes hold the block's codes 32 (s % 2) + i, its high bytes 64 + 32 (s % 2) + i */
      __m256i codes[2][4];
      for (int s = 0; s < 4; s++) {
        codes[0][s] = _mm256_and_si256(planes[s], low_bytes);
        codes[1][s] = _mm256_and_si256(planes[s], high_bytes);
      }
      const int groups_per_block = 128 / G;
      __m256 s_g[4];
      for (int g = 0; g < groups_per_block; g++) s_g[g] = broadcast_scale(pairs + 2 * g);
      for (int t = 0; t < tile; t++) {
        const __m256i *xv = (const __m256i *)(xs[t].values + block * 128);
        __m256i x[4];
        for (int s = 0; s < 4; s++) x[s] = _mm256_load_si256(xv + s);
        const __m256 x_scale = _mm256_broadcast_ss(xs[t].scales + block);
        for (int g = 0; g < groups_per_block; g++) {
          /* G = 64: group 0 is every operand's low bytes, group 1 the high; G = 32: group g is the low (g < 2)
           * or high bytes of the operands of plane g % 2 (s = g % 2 and s = 2 + g % 2) */
          const int half = G == 64 ? g : g / 2;
          __m256i sum = _mm256_setzero_si256();
          for (int s = 0; s < 4; s++)
            if (G == 64 || s % 2 == g % 2)
              sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(codes[half][s], x[s]));
          const __m256 scale = _mm256_mul_ps(s_g[g], x_scale);
          acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(sum, ones)), scale, acc[t]);
        }
      }
    }
  }
  for (int t = 0; t < tile; t++) out[t] = hsum(_mm256_add_ps(acc[t], zero_terms(scales_zeros, xs + t, K / G)));
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
  const long groups = K / G, per_row = scratch_floats(K, G); /* a multiple of 8 floats: rows stay aligned */
  float *scratch = aligned_alloc(32, sizeof(float) * per_row * (M + 1));
  uint16_t *zeros = calloc(K, sizeof(uint16_t));
  x_row *rows = malloc(sizeof(x_row) * (M + 1));
  if (!scratch || !zeros || !rows) {
    free(scratch);
    free(zeros);
    free(rows);
    return -1;
  }
  for (long m = 0; m < M; m++) rows[m] = prepare_row(x + m * K, K, G, scratch + m * per_row);
  rows[M] = prepare_row(zeros, K, G, scratch + M * per_row); /* pads the last tile */
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
  free(scratch);
  free(zeros);
  free(rows);
  return 0;
}

/* One x row: the decode case, without the tile's three idle rows. */
int int4_matvec(const uint8_t *w, const uint16_t *scales_zeros, const uint16_t *x, float *y, long N, long K,
                long G) {
  float *scratch = aligned_alloc(32, sizeof(float) * scratch_floats(K, G));
  if (!scratch) return -1;
  matvec_rows(w, scales_zeros, prepare_row(x, K, G, scratch), y, N, K, G);
  free(scratch);
  return 0;
}
