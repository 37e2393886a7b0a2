/* Compiled kernels of the CPU's exact search (trainleak._topk loads them with ctypes).

   Each query keeps its best kk cells, sorted or (long lists) in a min-heap
   whose root is its worst kept cell (lowest score; of equal scores, the
   highest database row), and a separate array holds each query's bar: the
   worst kept score, or a floor above it. A block of float32
   scores is compared with the bars four or eight at a time; a cell above its
   query's bar replaces the root. Cells arrive in increasing database row, so
   of equal scores the lower row is kept, as the numpy merge does. A NaN or
   -inf score never beats a bar (the comparison is false), so NaN cells and
   masked self matches are never kept.

   The re-score sums float64 products of float32 values (each exact in
   float64) in a fixed order for every pair: the same inputs give the same
   score on every call, whatever the block or thread that found the pair.

   C99 with GCC/Clang builtins, SSE2 where the compiler targets it (every
   x86-64); other machines take the scalar loops. A compiler without the
   builtins fails the optional build, and the search merges with numpy.
   The module initialiser exists so the file builds and imports as a
   Python extension; its functions are called through ctypes, which
   releases the GIL for the call. */
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
/* x86-64 with GCC or Clang: the AVX2 and FMA kernels below are compiled
   whatever the build's target, and run where the processor has both
   (tl_fused_ok). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TL_FUSED 1
#endif

int tl_fused_ok(void) {
#ifdef TL_FUSED
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* Whether the processor has AVX-512 (and the system saves its registers):
   its BLAS then multiplies sixteen floats at a time, twice the one-pass
   product's eight, and the merge compares sixteen scores at a time. */
int tl_avx512_ok(void) {
#ifdef TL_FUSED
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

static inline int worse(float sa, int64_t ia, float sb, int64_t ib) {
    return sa < sb || (sa == sb && ia > ib);
}

/* Put (s, i) in place of the heap's root and sift it down. */
static inline __attribute__((always_inline)) void heap_replace(float *hs, int64_t *hi,
                                                               int64_t kk, float s, int64_t i) {
    int64_t p = 0;
    for (;;) {
        int64_t c = 2 * p + 1;
        if (c >= kk) break;
        if (c + 1 < kk && worse(hs[c + 1], hi[c + 1], hs[c], hi[c])) c++;
        if (!worse(hs[c], hi[c], s, i)) break;
        hs[p] = hs[c];
        hi[p] = hi[c];
        p = c;
    }
    hs[p] = s;
    hi[p] = i;
}

/* Lists of at most SORTED_MAX_KK cells are kept sorted (best first: higher
   score, then lower row) instead of as heaps: a new cell's place is a count
   of the scores above it, four at a time, and the cells after it shift by
   one, with about one mispredicted branch a cell where a heap's sift-down
   has one or two a level. Either way the worst kept cell is in a fixed
   place (worst_at). */
#ifndef SORTED_MAX_KK
#define SORTED_MAX_KK 64
#endif

static inline int64_t worst_at(int64_t kk) { return kk <= SORTED_MAX_KK ? kk - 1 : 0; }

/* Whether a query's list (its kk cells h) is not yet full and has no floor. */
static inline int fresh_list(const float *h, int64_t kk, float bar) {
    return bar == -INFINITY && h[worst_at(kk)] == -INFINITY;
}

/* Put (s, i) in place of the last of the kk sorted cells (it is worse). */
static inline __attribute__((always_inline)) void sorted_replace(float *hs, int64_t *hi,
                                                                  int64_t kk, float s, int64_t i) {
    int64_t n = kk - 1, pos = 0, t = 0;
#if defined(__SSE2__)
    __m128 sv = _mm_set1_ps(s);
    for (; t + 4 <= n; t += 4)
        pos += __builtin_popcount(_mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(hs + t), sv)));
#endif
    for (; t < n; t++) pos += hs[t] > s;
    while (pos < n && hs[pos] == s && hi[pos] < i) pos++; /* ties: the lower rows first */
    for (t = n; t > pos; t--) {
        hs[t] = hs[t - 1];
        hi[t] = hi[t - 1];
    }
    hs[pos] = s;
    hi[pos] = i;
}

/* Put (s, i) in place of the worst kept cell and return the query's new bar:
   the new worst score, or the old bar if higher (a first block's floor). */
static inline __attribute__((always_inline)) float push(float *hs, int64_t *hi, int64_t kk,
                                                        float s, int64_t i, float bar) {
    if (kk <= SORTED_MAX_KK) {
        sorted_replace(hs, hi, kk, s, i);
        return fmaxf(bar, hs[kk - 1]);
    }
    heap_replace(hs, hi, kk, s, i);
    return fmaxf(bar, hs[0]);
}

/* Push the scores v[c] of database row `row` whose bits c are set in m into
   the lists of queries j0 + c (and their bars), skipping a query's own row. */
static inline __attribute__((always_inline)) void push_lanes(
    unsigned m, const float *v, int64_t row, int64_t j0, int64_t self0, int exclude, float *hs,
    int64_t *hx, int64_t kk, float *pb) {
    while (m) {
        int c = __builtin_ctz(m);
        m &= m - 1;
        int64_t j = j0 + c;
        if (exclude && row == self0 + j) continue; /* a query's own row */
        pb[j] = push(hs + j * kk, hx + j * kk, kk, v[c], row, pb[j]);
    }
}

/* Groups of rows per list entry in a first block's floor, and the longest
   list that takes one (the floor sorts FLOOR_GROUPS * kk maxima a query). */
#define FLOOR_GROUPS 2
#define FLOOR_MAX_KK 64

/* Raise the bar of every query whose list is still empty to just below a
   floor that at least kk cells of this block reach: the kk-th largest of
   the maxima of FLOOR_GROUPS * kk disjoint groups of rows (each group holds
   its maximum, so kk cells are at or above it). No cell under the floor can
   be in the query's final list, and the first block, which otherwise puts
   kk * (1 + ln(R / kk)) cells through the heap, puts about 2 kk. */
static void floor_columns(const float *S, int64_t R, int64_t Q, int64_t ld, int64_t kk,
                          const float *hs, float *bar) {
    int64_t fresh = 0;
    for (int64_t j = 0; j < Q; j++) fresh += fresh_list(hs + j * kk, kk, bar[j]);
    if (fresh == 0) return;
    int64_t G = FLOOR_GROUPS * kk;
    float *gmax = (float *)malloc((size_t)(G * Q) * sizeof(float));
    if (gmax == NULL) return; /* no floor: the merge is the same, only slower */
    for (int64_t g = 0; g < G; g++) {
        float *acc = gmax + g * Q;
        for (int64_t j = 0; j < Q; j++) acc[j] = -INFINITY;
        for (int64_t r = g * R / G; r < (g + 1) * R / G; r++) {
            const float *row = S + r * ld;
            for (int64_t j = 0; j < Q; j++) /* a NaN cell never becomes a maximum */
                acc[j] = row[j] > acc[j] ? row[j] : acc[j];
        }
    }
    float top[FLOOR_GROUPS * FLOOR_MAX_KK];
    for (int64_t j = 0; j < Q; j++) {
        if (!fresh_list(hs + j * kk, kk, bar[j])) continue;
        int64_t n = 0; /* the kk largest maxima, descending, by insertion */
        for (int64_t g = 0; g < G; g++) {
            float v = gmax[g * Q + j];
            if (n == kk && !(v > top[kk - 1])) continue;
            int64_t c = n < kk ? n++ : kk - 1;
            while (c > 0 && top[c - 1] < v) {
                top[c] = top[c - 1];
                c--;
            }
            top[c] = v;
        }
        if (n == kk && top[kk - 1] > -INFINITY) bar[j] = nextafterf(top[kk - 1], -INFINITY);
    }
    free(gmax);
}

#ifdef TL_FUSED
/* One row of tl_merge_columns's block, sixteen queries at a time: returns
   the first query left (a multiple of 16). An ordered compare is false for
   NaN, as SSE2's is, so the same cells are pushed in the same order. */
__attribute__((target("avx512f"))) static int64_t merge_row16(const float *row, int64_t Q,
                                                              int64_t id, float *hs, int64_t *hi,
                                                              int64_t kk, float *bar) {
    int64_t j = 0;
    for (; j + 16 <= Q; j += 16) {
        unsigned m = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + j), _mm512_loadu_ps(bar + j),
                                        _CMP_GT_OQ);
        push_lanes(m, row + j, id, j, 0, 0, hs, hi, kk, bar);
    }
    return j;
}
#endif

/* 0: the merge keeps to SSE2 even where AVX-512 runs (the tests compare the two). */
int tl_wide_merge = 1;

/* Merge a block laid out (rows, queries): S[r * ld + j] is the score of
   database row base + r for query j. hs, hi: (Q, kk) heaps; bar: (Q,), each
   query's k-th best so far or a floor under its final k-th best. */
void tl_merge_columns(const float *S, int64_t R, int64_t Q, int64_t ld, int64_t base,
                      float *hs, int64_t *hi, int64_t kk, float *bar) {
    if (kk < 1) return;
    if (kk <= FLOOR_MAX_KK && R >= FLOOR_GROUPS * kk) floor_columns(S, R, Q, ld, kk, hs, bar);
#ifdef TL_FUSED
    int wide = tl_wide_merge && tl_avx512_ok();
#endif
    for (int64_t r = 0; r < R; r++) {
        const float *row = S + r * ld;
        int64_t j = 0;
#ifdef TL_FUSED
        if (wide) j = merge_row16(row, Q, base + r, hs, hi, kk, bar);
#endif
#if defined(__SSE2__)
        for (; j + 8 <= Q; j += 8) {
            __m128 a = _mm_cmpgt_ps(_mm_loadu_ps(row + j), _mm_loadu_ps(bar + j));
            __m128 b = _mm_cmpgt_ps(_mm_loadu_ps(row + j + 4), _mm_loadu_ps(bar + j + 4));
            int m = _mm_movemask_ps(a) | (_mm_movemask_ps(b) << 4);
            push_lanes((unsigned)m, row + j, base + r, j, 0, 0, hs, hi, kk, bar);
        }
#endif
        for (; j < Q; j++) {
            if (row[j] > bar[j])
                bar[j] = push(hs + j * kk, hi + j * kk, kk, row[j], base + r, bar[j]);
        }
    }
}

/* Merge a block laid out (queries, rows): S[j * ld + r]. */
void tl_merge_rows(const float *S, int64_t Q, int64_t R, int64_t ld, int64_t base,
                   float *hs, int64_t *hi, int64_t kk, float *bar) {
    if (kk < 1) return;
    for (int64_t j = 0; j < Q; j++) {
        const float *row = S + j * ld;
        float *h = hs + j * kk;
        int64_t *x = hi + j * kk;
        float t = bar[j];
        int64_t r = 0;
#if defined(__SSE2__)
        for (; r + 8 <= R; r += 8) {
            __m128 tv = _mm_set1_ps(t);
            int m = _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(row + r), tv)) |
                    (_mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(row + r + 4), tv)) << 4);
            while (m) {
                int64_t u = r + __builtin_ctz(m);
                m &= m - 1;
                if (row[u] > t) t = push(h, x, kk, row[u], base + u, t); /* t may have risen */
            }
        }
#endif
        for (; r < R; r++) {
            if (row[r] > t) t = push(h, x, kk, row[r], base + r, t);
        }
        bar[j] = t;
    }
}

/* The float32 inner product of two rows of length d: sixteen partial sums
   (SSE2), folded to four, then one. For choosing candidates only: the
   float64 re-score decides. */
static float dot32(const float *x, const float *y, int64_t d) {
    int64_t t = 0;
#if defined(__SSE2__)
    __m128 s0 = _mm_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (; t + 16 <= d; t += 16) {
        s0 = _mm_add_ps(s0, _mm_mul_ps(_mm_loadu_ps(x + t), _mm_loadu_ps(y + t)));
        s1 = _mm_add_ps(s1, _mm_mul_ps(_mm_loadu_ps(x + t + 4), _mm_loadu_ps(y + t + 4)));
        s2 = _mm_add_ps(s2, _mm_mul_ps(_mm_loadu_ps(x + t + 8), _mm_loadu_ps(y + t + 8)));
        s3 = _mm_add_ps(s3, _mm_mul_ps(_mm_loadu_ps(x + t + 12), _mm_loadu_ps(y + t + 12)));
    }
    for (; t + 4 <= d; t += 4)
        s0 = _mm_add_ps(s0, _mm_mul_ps(_mm_loadu_ps(x + t), _mm_loadu_ps(y + t)));
    __m128 s = _mm_add_ps(_mm_add_ps(s0, s1), _mm_add_ps(s2, s3));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    float a = _mm_cvtss_f32(s);
#else
    float a = 0;
#endif
    for (; t < d; t++) a += x[t] * y[t];
    return a;
}

#ifndef SCAN_AHEAD
#define SCAN_AHEAD 4
#endif
#define SCAN_GROUP 8
/* Rows of at least this many dimensions are scanned SCAN_GROUP at a time
   (where the processor has AVX2 and FMA). A global so that the tests and the
   benchmark can move it; nothing else writes it. */
int tl_scan_group_dim = 768;

#ifdef TL_FUSED
/* The float32 inner products of SCAN_GROUP rows (stride ld) with one query,
   in one pass (AVX2 and FMA): eight reads of memory in flight, which long
   rows need to reach the memory's pace. One thread, one query, 15,000 rows
   at d = 3072: 12-14 GB/s one row at a time, 20-25 GB/s eight at a time, as
   the BLAS matrix-vector product. Eight partial sums a row, folded in a
   fixed order; candidates only (the float64 re-score decides). */
__attribute__((target("avx2,fma"))) static void dot32_rows(const float *x, int64_t ld,
                                                            const float *y, int64_t d,
                                                            float *out) {
    int64_t t = 0;
    __m256 a[SCAN_GROUP];
    for (int r = 0; r < SCAN_GROUP; r++) a[r] = _mm256_setzero_ps();
    for (; t + 8 <= d; t += 8) {
        __m256 yt = _mm256_loadu_ps(y + t);
        for (int r = 0; r < SCAN_GROUP; r++)
            a[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * ld + t), yt, a[r]);
    }
    for (int r = 0; r < SCAN_GROUP; r++) {
        float v[8];
        _mm256_storeu_ps(v, a[r]);
        float s = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
        for (int64_t u = t; u < d; u++) s += x[r * ld + u] * y[u];
        out[r] = s;
    }
}
#endif

/* Score database rows base .. base + R - 1 (row stride ld) against Q queries
   (stride ldq) and merge them into the queries' lists in the same pass: for
   a few queries, one read of the database with no score block written and
   read back. Rows of tl_scan_group_dim dimensions or more go SCAN_GROUP at
   a time where the processor has AVX2 and FMA; the rest one at a time. */
void tl_scan_rows(const float *db, int64_t ld, int64_t R, const float *q, int64_t ldq,
                  int64_t Q, int64_t d, int64_t base, float *hs, int64_t *hi, int64_t kk,
                  float *bar) {
    if (kk < 1) return;
    int64_t r = 0;
#ifdef TL_FUSED
    /* Long rows, where the processor has AVX2: SCAN_GROUP at a time, no software prefetch. */
    if (d >= tl_scan_group_dim && tl_fused_ok())
        for (; r + SCAN_GROUP <= R; r += SCAN_GROUP) {
            const float *x = db + r * ld;
            for (int64_t j = 0; j < Q; j++) {
                float v[SCAN_GROUP];
                dot32_rows(x, ld, q + j * ldq, d, v);
                for (int u = 0; u < SCAN_GROUP; u++)
                    if (v[u] > bar[j])
                        bar[j] = push(hs + j * kk, hi + j * kk, kk, v[u], base + r + u, bar[j]);
            }
        }
#endif
    for (; r < R; r++) {
        const float *x = db + r * ld;
        if (r + SCAN_AHEAD < R) {
            const char *next = (const char *)(x + SCAN_AHEAD * ld);
            for (int64_t off = 0; off < d * 4; off += 64) __builtin_prefetch(next + off);
        }
        for (int64_t j = 0; j < Q; j++) {
            float v = dot32(x, q + j * ldq, d);
            if (v > bar[j]) bar[j] = push(hs + j * kk, hi + j * kk, kk, v, base + r, bar[j]);
        }
    }
}

/* The end of every float64 sum below: dimensions t .. d - 1 (fewer than
   eight) added to partial sums 0, 1, ..., then the eight sums added pairwise. */
static inline __attribute__((always_inline)) double fold64(double *p, const float *x,
                                                           const float *y, int64_t t, int64_t d) {
    for (int u = 0; t < d; t++, u++) p[u] += (double)x[t] * (double)y[t];
    return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

/* The float64 inner product of two float32 rows of length d: eight partial
   sums (dimension t goes to sum t % 8; each product of two float32 values is
   exact in float64), added pairwise at the end. Every pair is summed in this
   order, so a pair's score never depends on where or with what it is scored. */
static double dot64(const float *x, const float *y, int64_t d) {
    int64_t t = 0;
#if defined(__SSE2__)
    __m128d s0 = _mm_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
    for (; t + 8 <= d; t += 8) {
        __m128 a = _mm_loadu_ps(x + t), b = _mm_loadu_ps(y + t);
        __m128 c = _mm_loadu_ps(x + t + 4), e = _mm_loadu_ps(y + t + 4);
        s0 = _mm_add_pd(s0, _mm_mul_pd(_mm_cvtps_pd(a), _mm_cvtps_pd(b)));
        s1 = _mm_add_pd(s1, _mm_mul_pd(_mm_cvtps_pd(_mm_movehl_ps(a, a)),
                                       _mm_cvtps_pd(_mm_movehl_ps(b, b))));
        s2 = _mm_add_pd(s2, _mm_mul_pd(_mm_cvtps_pd(c), _mm_cvtps_pd(e)));
        s3 = _mm_add_pd(s3, _mm_mul_pd(_mm_cvtps_pd(_mm_movehl_ps(c, c)),
                                       _mm_cvtps_pd(_mm_movehl_ps(e, e))));
    }
    double p[8];
    _mm_storeu_pd(p, s0);
    _mm_storeu_pd(p + 2, s1);
    _mm_storeu_pd(p + 4, s2);
    _mm_storeu_pd(p + 6, s3);
#else
    double p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (; t + 8 <= d; t += 8)
        for (int u = 0; u < 8; u++) p[u] += (double)x[t + u] * (double)y[t + u];
#endif
    return fold64(p, x, y, t, d);
}

#ifndef RESCORE_AHEAD
#define RESCORE_AHEAD 4
#endif

#ifdef TL_FUSED
/* dot64 with the same eight partial sums (lanes of two 4-wide float64
   vectors), in the same order: a float32 x float32 product is exact in
   float64, so a fused multiply-add rounds exactly as dot64's add does, and
   the two give the same bits. */
__attribute__((target("avx2,fma"))) static double dot64_avx2(const float *x, const float *y,
                                                             int64_t d) {
    int64_t t = 0;
    __m256d s0 = _mm256_setzero_pd(), s1 = s0;
    for (; t + 8 <= d; t += 8) {
        __m256 a = _mm256_loadu_ps(x + t), b = _mm256_loadu_ps(y + t);
        s0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(a)),
                             _mm256_cvtps_pd(_mm256_castps256_ps128(b)), s0);
        s1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)),
                             _mm256_cvtps_pd(_mm256_extractf128_ps(b, 1)), s1);
    }
    double p[8];
    _mm256_storeu_pd(p, s0);
    _mm256_storeu_pd(p + 4, s1);
    return fold64(p, x, y, t, d);
}

/* One query's float64 sums against up to four of its rows at a time, with
   dot64's eight partial sums per pair in dot64's order, so each pair's
   score has the same bits. yd: the query widened to float64 once (exact).
   A pair's two four-wide sums wait on their own last multiply-add, so one
   pair at a time runs at the multiply-add's latency; four pairs give eight
   independent sums. Rows are fetched RESCORE_AHEAD pairs ahead, as in
   tl_rescore: ix holds n_ahead pairs from this query's on (the next
   queries' come after its kk). */
__attribute__((target("avx2,fma"))) static void rescore_query_avx2(
    const float *db, int64_t ld, const double *yd, const float *y, int64_t d,
    const int64_t *ix, int64_t kk, int64_t n_ahead, float *out) {
    for (int64_t b = 0; b < kk; b += 4) {
        const float *x[4];
        int64_t m = kk - b < 4 ? kk - b : 4, live = -1;
        for (int64_t u = 0; u < m; u++)
            if (ix[b + u] >= 0) live = ix[b + u];
        for (int64_t u = 0; u < m && b + u + RESCORE_AHEAD < n_ahead; u++) {
            int64_t next = ix[b + u + RESCORE_AHEAD];
            if (next < 0) continue;
            const char *row = (const char *)(db + next * ld);
            for (int64_t off = 0; off < d * 4; off += 64) __builtin_prefetch(row + off);
        }
        if (live < 0) { /* padding only */
            for (int64_t u = 0; u < m; u++) out[b + u] = -INFINITY;
            continue;
        }
        for (int64_t u = 0; u < 4; u++) /* padding and missing pairs read a live row */
            x[u] = db + (u < m && ix[b + u] >= 0 ? ix[b + u] : live) * ld;
        __m256d a0 = _mm256_setzero_pd(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, e0 = a0,
                e1 = a0;
        int64_t t = 0;
        for (; t + 8 <= d; t += 8) {
            __m256d lo = _mm256_loadu_pd(yd + t), hi = _mm256_loadu_pd(yd + t + 4);
            a0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x[0] + t)), lo, a0);
            a1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x[0] + t + 4)), hi, a1);
            b0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x[1] + t)), lo, b0);
            b1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x[1] + t + 4)), hi, b1);
            c0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x[2] + t)), lo, c0);
            c1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x[2] + t + 4)), hi, c1);
            e0 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x[3] + t)), lo, e0);
            e1 = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(x[3] + t + 4)), hi, e1);
        }
        __m256d sums[8] = {a0, a1, b0, b1, c0, c1, e0, e1};
        for (int64_t u = 0; u < m; u++) {
            double p[8];
            _mm256_storeu_pd(p, sums[2 * u]);
            _mm256_storeu_pd(p + 4, sums[2 * u + 1]);
            out[b + u] = ix[b + u] < 0 ? -INFINITY : (float)fold64(p, x[u], y, t, d);
        }
    }
}
#endif

/* 0: the re-score keeps to dot64 even where AVX2 runs (the tests compare the two). */
int tl_wide_rescore = 1;

/* out[a, b] = the float64 inner product of query a and database row
   idx[a, b], rounded to float32; -inf where idx < 0. Each pair's row is
   fetched RESCORE_AHEAD pairs before it is summed (the rows are scattered
   over the database). */
void tl_rescore(const float *db, int64_t ld, const float *q, int64_t ldq, int64_t d,
                const int64_t *idx, int64_t n, int64_t kk, float *out) {
    double (*dot)(const float *, const float *, int64_t) = dot64;
#ifdef TL_FUSED
    if (tl_wide_rescore && tl_fused_ok()) {
        double *yd = (double *)malloc((size_t)(d > 0 ? d : 1) * sizeof(double));
        if (yd != NULL) {
            for (int64_t a = 0; a < n; a++) {
                const float *qa = q + a * ldq;
                for (int64_t t = 0; t < d; t++) yd[t] = (double)qa[t];
                rescore_query_avx2(db, ld, yd, qa, d, idx + a * kk, kk, (n - a) * kk,
                                   out + a * kk);
            }
            free(yd);
            return;
        }
        dot = dot64_avx2; /* no memory for the widened query: one pair at a time */
    }
#endif
    for (int64_t a = 0; a < n; a++) {
        const float *qa = q + a * ldq;
        for (int64_t b = 0; b < kk; b++) {
            int64_t i = idx[a * kk + b];
            int64_t ahead = a * kk + b + RESCORE_AHEAD;
            if (ahead < n * kk && idx[ahead] >= 0) {
                const char *next = (const char *)(db + idx[ahead] * ld);
                for (int64_t off = 0; off < d * 4; off += 64) __builtin_prefetch(next + off);
            }
            out[a * kk + b] = i < 0 ? -INFINITY : (float)dot(db + i * ld, qa, d);
        }
    }
}

/* Whether cell a comes before cell b: higher score, then lower row; padding
   (row -1) after every row, and NaN scores after everything else. */
static inline int before(float sa, int64_t ia, float sb, int64_t ib) {
    if (isnan(sa) || isnan(sb)) return !isnan(sa) && isnan(sb);
    if (sa != sb) return sa > sb;
    uint64_t ka = (uint64_t)ia, kb = (uint64_t)ib; /* -1 is the largest */
    return ka < kb;
}

/* Sort each of the n lists of kk cells in place (insertion sort: kk is small). */
void tl_order(float *s, int64_t *idx, int64_t n, int64_t kk) {
    for (int64_t a = 0; a < n; a++) {
        float *sa = s + a * kk;
        int64_t *ia = idx + a * kk;
        for (int64_t b = 1; b < kk; b++) {
            float v = sa[b];
            int64_t w = ia[b];
            int64_t c = b;
            while (c > 0 && before(v, w, sa[c - 1], ia[c - 1])) {
                sa[c] = sa[c - 1];
                ia[c] = ia[c - 1];
                c--;
            }
            sa[c] = v;
            ia[c] = w;
        }
    }
}

/* ---- The product and the merge in one pass (x86-64 with AVX2 and FMA) ----

   For a batch of queries, each database row's scores are computed in
   registers, a tile of FUSED_ROWS rows by FUSED_LANES queries at a time, and
   compared with the queries' bars straight away: no score block is written
   to memory and read back, and no matrix library packs the operands on every
   call. The queries are packed once per search (tl_pack_queries): panel p
   holds queries 16p .. 16p + 15 dimension by dimension, so a tile loads the
   16 queries' values of one dimension as two vectors and multiplies them by
   each row's value of that dimension, broadcast. Every lane sums its
   dimensions in order 0 .. d - 1 with fused multiply-adds: for choosing
   candidates only, as with the matrix product; the float64 re-score decides.

   Tiles go through the database rows in increasing order for every query,
   so of equal scores the lower row is kept, as in the other merges. The
   functions are compiled for AVX2 and FMA whatever the build's target;
   tl_fused_ok says whether this processor runs them. */

#define FUSED_ROWS 6
/* Rows of a first block scored into memory for the floor (a multiple of FUSED_ROWS and WIDE_ROWS). */
#ifndef FLOOR_ROWS
#define FLOOR_ROWS 1020
#endif
#define FUSED_LANES 16
/* Queries packed per pass over the rows: at most three quarters of a core's
   L2 cache, as the C library reports it, so that they stay there while the
   rows stream by; FUSED_PANEL_BYTES where it reports none. One thread, 500
   and 2,000 queries x 10,000 rows at d = 128 on a 512 KB L2: 192 KB took
   1.02-1.04x the time of 256-512 KB (41 paired rounds). */
#ifndef FUSED_PANEL_BYTES
#define FUSED_PANEL_BYTES (192 * 1024)
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

static int64_t panel_bytes(void) {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (l2 >= 128 * 1024 && l2 <= 64 * 1024 * 1024) return (int64_t)l2 / 4 * 3;
#endif
    return FUSED_PANEL_BYTES;
}

/* Pack Q queries (stride ldq, length d) into ceil(Q / 16) panels of d * 16
   floats: out[(p * d + t) * 16 + c] = q[(16 p + c) * ldq + t], zeros past Q. */
void tl_pack_queries(const float *q, int64_t ldq, int64_t Q, int64_t d, float *out) {
    int64_t panels = (Q + FUSED_LANES - 1) / FUSED_LANES;
    for (int64_t p = 0; p < panels; p++) {
        float *o = out + p * d * FUSED_LANES;
        for (int64_t c = 0; c < FUSED_LANES; c++) {
            int64_t j = p * FUSED_LANES + c;
            if (j < Q) {
                const float *src = q + j * ldq;
                for (int64_t t = 0; t < d; t++) o[t * FUSED_LANES + c] = src[t];
            } else {
                for (int64_t t = 0; t < d; t++) o[t * FUSED_LANES + c] = 0.0f;
            }
        }
    }
}

#ifdef TL_FUSED
/* Push the scores v[c] (database rows id0 + c) whose bits are set in m into
   one query's list, each only if it still beats the query's bar: the bar
   may have moved since the bits were set. */
static inline __attribute__((always_inline)) void push_above(uint64_t m, const float *v,
                                                             int64_t id0, float *h, int64_t *x,
                                                             int64_t kk, float *bar) {
    while (m) {
        int c = __builtin_ctzll(m);
        m &= m - 1;
        if (v[c] > *bar) *bar = push(h, x, kk, v[c], id0 + c, *bar);
    }
}

/* Merge one tile row: the 16 scores (lo, hi) of database row `row` for the
   queries j0 .. j0 + 15 of a panel. Returns whether a bar moved. */
__attribute__((target("avx2,fma"))) static inline int tile_row(
    __m256 lo, __m256 hi, __m256 blo, __m256 bhi, int64_t row, int64_t j0, int64_t self0,
    int exclude, float *hs, int64_t *hx, int64_t kk, float *pb) {
    int m = _mm256_movemask_ps(_mm256_cmp_ps(lo, blo, _CMP_GT_OQ)) |
            (_mm256_movemask_ps(_mm256_cmp_ps(hi, bhi, _CMP_GT_OQ)) << 8);
    if (!m) return 0;
    float v[FUSED_LANES];
    _mm256_storeu_ps(v, lo);
    _mm256_storeu_ps(v + 8, hi);
    push_lanes((unsigned)m, v, row, j0, self0, exclude, hs, hx, kk, pb);
    return 1;
}

/* Scores of rows x (FUSED_ROWS of them, stride ld) against panel p (d x 16),
   merged into the panel's queries; or, with out set, written to out (row r
   at out + r * ldo) and not merged. */
__attribute__((target("avx2,fma"), always_inline)) static inline void tile(
    const float *x, int64_t ld, int64_t nrows, const float *p, int64_t d, int64_t row0,
    int64_t j0, int64_t self0, int exclude, float *hs, int64_t *hx, int64_t kk, float *pb,
    float *out, int64_t ldo) {
    const float *x0 = x, *x1 = x + ld, *x2 = x + 2 * ld, *x3 = x + 3 * ld, *x4 = x + 4 * ld,
                *x5 = x + 5 * ld;
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (int64_t t = 0; t < d; t++) {
        __m256 b0 = _mm256_loadu_ps(p + t * FUSED_LANES);
        __m256 b1 = _mm256_loadu_ps(p + t * FUSED_LANES + 8);
/* Row xr's value of dimension t, broadcast, times the 16 queries' values. */
#define FMA_ROW(xr, lo, hi)                          \
    {                                                \
        __m256 a = _mm256_broadcast_ss(xr + t);      \
        lo = _mm256_fmadd_ps(a, b0, lo);             \
        hi = _mm256_fmadd_ps(a, b1, hi);             \
    }
        FMA_ROW(x0, c00, c01)
        FMA_ROW(x1, c10, c11)
        FMA_ROW(x2, c20, c21)
        FMA_ROW(x3, c30, c31)
        FMA_ROW(x4, c40, c41)
        FMA_ROW(x5, c50, c51)
#undef FMA_ROW
    }
    if (out != NULL) {
        __m256 c[FUSED_ROWS][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                                   {c30, c31}, {c40, c41}, {c50, c51}};
        for (int64_t r = 0; r < nrows; r++) {
            _mm256_storeu_ps(out + r * ldo, c[r][0]);
            _mm256_storeu_ps(out + r * ldo + 8, c[r][1]);
        }
        return;
    }
    __m256 blo = _mm256_loadu_ps(pb + j0), bhi = _mm256_loadu_ps(pb + j0 + 8);
#define TILE_ROW(r, lo, hi)                                                          \
    if (nrows > r &&                                                                 \
        tile_row(lo, hi, blo, bhi, row0 + r, j0, self0, exclude, hs, hx, kk, pb)) { \
        blo = _mm256_loadu_ps(pb + j0);                                              \
        bhi = _mm256_loadu_ps(pb + j0 + 8);                                          \
    }
    TILE_ROW(0, c00, c01)
    TILE_ROW(1, c10, c11)
    TILE_ROW(2, c20, c21)
    TILE_ROW(3, c30, c31)
    TILE_ROW(4, c40, c41)
    TILE_ROW(5, c50, c51)
#undef TILE_ROW
}

/* Tiles of rows x against panels p0 .. p1 - 1, one call for a row group. */
__attribute__((target("avx2,fma"))) static void tiles(
    const float *x, int64_t ld, int64_t nrows, const float *packed, int64_t p0, int64_t p1,
    int64_t d, int64_t row0, int64_t self0, int exclude, float *hs, int64_t *hx, int64_t kk,
    float *pb, float *out, int64_t ldo) {
    for (int64_t p = p0; p < p1; p++)
        tile(x, ld, nrows, packed + p * d * FUSED_LANES, d, row0, p * FUSED_LANES, self0, exclude,
             hs, hx, kk, pb, out == NULL ? NULL : out + (p - p0) * FUSED_LANES, ldo);
}
#endif

#ifdef TL_FUSED
/* The same tiles in AVX-512 (tl_avx512_ok): WIDE_ROWS rows by one or two
   16-lane panels (tile512). Every lane sums its dimensions in the same
   order with fused multiply-adds, so a score has the same bits as from the
   AVX2 tile. */
#define WIDE_ROWS 12

/* tile_row for one 16-lane vector of scores c against the bars b. */
__attribute__((target("avx512f"))) static inline int tile_row512(
    __m512 c, __m512 b, int64_t row, int64_t j0, int64_t self0, int exclude, float *hs,
    int64_t *hx, int64_t kk, float *pb) {
    unsigned m = _mm512_cmp_ps_mask(c, b, _CMP_GT_OQ);
    if (!m) return 0;
    float v[FUSED_LANES];
    _mm512_storeu_ps(v, c);
    push_lanes(m, v, row, j0, self0, exclude, hs, hx, kk, pb);
    return 1;
}

/* Rows x (WIDE_ROWS of them, stride ld) against panel p, or with `two` set
   against two panels (p, then p + 16 * d): each row's value is then
   broadcast once for 32 queries, so the loads stay well under the
   multiply-adds (2 + WIDE_ROWS loads to 2 * WIDE_ROWS multiply-adds).
   Merged into the panels' queries; or, with out set, written to out (row r
   at out + r * ldo: 16 or 32 scores). Every call passes `two` as a constant,
   so each compiles to a loop that does not test it. */
__attribute__((target("avx512f"), always_inline)) static inline void tile512(
    const float *x, int64_t ld, int64_t nrows, const float *p, int two, int64_t d, int64_t row0,
    int64_t j0, int64_t self0, int exclude, float *hs, int64_t *hx, int64_t kk, float *pb,
    float *out, int64_t ldo) {
    const float *p2 = p + d * FUSED_LANES;
    __m512 c[WIDE_ROWS], e[WIDE_ROWS];
    for (int r = 0; r < WIDE_ROWS; r++) c[r] = e[r] = _mm512_setzero_ps();
    for (int64_t t = 0; t < d; t++) {
        __m512 b = _mm512_loadu_ps(p + t * FUSED_LANES);
        __m512 b2 = two ? _mm512_loadu_ps(p2 + t * FUSED_LANES) : b;
        for (int r = 0; r < WIDE_ROWS; r++) {
            __m512 a = _mm512_set1_ps(x[r * ld + t]);
            c[r] = _mm512_fmadd_ps(a, b, c[r]);
            if (two) e[r] = _mm512_fmadd_ps(a, b2, e[r]);
        }
    }
    if (out != NULL) {
        for (int64_t r = 0; r < nrows; r++) {
            _mm512_storeu_ps(out + r * ldo, c[r]);
            if (two) _mm512_storeu_ps(out + r * ldo + FUSED_LANES, e[r]);
        }
        return;
    }
    __m512 b = _mm512_loadu_ps(pb + j0), b2 = b;
    if (two) b2 = _mm512_loadu_ps(pb + j0 + FUSED_LANES);
    for (int r = 0; r < WIDE_ROWS && r < nrows; r++) {
        if (tile_row512(c[r], b, row0 + r, j0, self0, exclude, hs, hx, kk, pb))
            b = _mm512_loadu_ps(pb + j0);
        if (two && tile_row512(e[r], b2, row0 + r, j0 + FUSED_LANES, self0, exclude, hs, hx, kk,
                               pb))
            b2 = _mm512_loadu_ps(pb + j0 + FUSED_LANES);
    }
}

__attribute__((target("avx512f"))) static void tiles512(
    const float *x, int64_t ld, int64_t nrows, const float *packed, int64_t p0, int64_t p1,
    int64_t d, int64_t row0, int64_t self0, int exclude, float *hs, int64_t *hx, int64_t kk,
    float *pb, float *out, int64_t ldo) {
    int64_t p = p0;
    for (; p + 2 <= p1; p += 2)
        tile512(x, ld, nrows, packed + p * d * FUSED_LANES, 1, d, row0, p * FUSED_LANES, self0,
                exclude, hs, hx, kk, pb, out == NULL ? NULL : out + (p - p0) * FUSED_LANES, ldo);
    if (p < p1)
        tile512(x, ld, nrows, packed + p * d * FUSED_LANES, 0, d, row0, p * FUSED_LANES, self0,
                exclude, hs, hx, kk, pb, out == NULL ? NULL : out + (p - p0) * FUSED_LANES, ldo);
}

/* 0: the one-pass product keeps to its AVX2 tiles even where AVX-512 runs (tests, bench). */
int tl_wide_product = 1;

/* The scores of contiguous rows x (stride d) against packed rows p, for
   tl_gather_product_merge: row r's at out + r * 2 * FUSED_LANES. AVX2:
   FUSED_ROWS rows by one panel (`two` is never set). AVX-512: WIDE_ROWS
   rows by one panel, or two with `two` set. */
__attribute__((target("avx2,fma"))) static void gather_tile(const float *x, int64_t d,
                                                             const float *p, int two, float *out) {
    (void)two;
    tile(x, d, FUSED_ROWS, p, d, 0, 0, 0, 0, NULL, NULL, 0, NULL, out, 2 * FUSED_LANES);
}

__attribute__((target("avx512f"))) static void gather_tile512(const float *x, int64_t d,
                                                              const float *p, int two,
                                                              float *out) {
    if (two) /* a constant at each call (see tile512) */
        tile512(x, d, WIDE_ROWS, p, 1, d, 0, 0, 0, 0, NULL, NULL, 0, NULL, out, 2 * FUSED_LANES);
    else
        tile512(x, d, WIDE_ROWS, p, 0, d, 0, 0, 0, 0, NULL, NULL, 0, NULL, out, 2 * FUSED_LANES);
}

/* Bit c set where v[c] > bar (ordered: NaN never), for the 16 scores v. */
__attribute__((target("avx2,fma"))) static unsigned lanes_above(const float *v, float bar) {
    __m256 b = _mm256_set1_ps(bar);
    return (unsigned)(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(v), b, _CMP_GT_OQ)) |
                      (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(v + 8), b, _CMP_GT_OQ))
                       << 8));
}

__attribute__((target("avx512f"))) static unsigned lanes_above512(const float *v, float bar) {
    return _mm512_cmp_ps_mask(_mm512_loadu_ps(v), _mm512_set1_ps(bar), _CMP_GT_OQ);
}
#endif

/* Score database rows base .. base + R - 1 (stride ld) against the Q packed
   queries (tl_pack_queries) and merge them into the queries' lists. With
   exclude set, query j is database row self0 + j (self0 may be negative)
   and never its own neighbour. Returns 0, or -1 where the processor or
   memory does not allow it (nothing merged then). pass_bytes: the packed
   queries' bytes a pass over the rows takes; 0 for panel_bytes(). */
int tl_product_merge(const float *db, int64_t ld, int64_t R, const float *packed, int64_t Q,
                     int64_t d, int64_t base, int64_t exclude, int64_t self0, float *hs,
                     int64_t *hi, int64_t kk, float *bar, int64_t pass_bytes) {
#ifdef TL_FUSED
    if (kk < 1 || R < 1 || Q < 1) return 0;
    if (!tl_fused_ok()) return -1;
    int wide = tl_wide_product && tl_avx512_ok();
    int64_t G = wide ? WIDE_ROWS : FUSED_ROWS; /* rows a tile */
    void (*run)(const float *, int64_t, int64_t, const float *, int64_t, int64_t, int64_t,
                int64_t, int64_t, int, float *, int64_t *, int64_t, float *, float *,
                int64_t) = wide ? tiles512 : tiles;
    int64_t panels = (Q + FUSED_LANES - 1) / FUSED_LANES;
    int64_t per_pass = (pass_bytes > 0 ? pass_bytes : panel_bytes()) / (d * FUSED_LANES * 4);
    if (per_pass < 1) per_pass = 1;
    /* Bars padded to whole panels: +inf past Q, so padding lanes never push. */
    float *pb = (float *)malloc((size_t)(panels * FUSED_LANES) * sizeof(float));
    float *spare = (float *)calloc((size_t)(WIDE_ROWS * d), sizeof(float));
    if (pb == NULL || spare == NULL) {
        free(pb);
        free(spare);
        return -1;
    }
    for (int64_t j = 0; j < panels * FUSED_LANES; j++) pb[j] = j < Q ? bar[j] : INFINITY;
    for (int64_t p0 = 0; p0 < panels; p0 += per_pass) {
        int64_t p1 = p0 + per_pass < panels ? p0 + per_pass : panels;
        int64_t j0 = p0 * FUSED_LANES, lanes = (p1 - p0) * FUSED_LANES;
        int64_t nq = Q - j0 < lanes ? Q - j0 : lanes, first = 0, fresh = 0;
        for (int64_t j = j0; j < j0 + nq; j++) fresh += fresh_list(hs + j * kk, kk, pb[j]);
        /* Queries with empty lists: their first FLOOR_ROWS rows are scored into
           a block and merged by tl_merge_columns, whose floor spares the
           pushes of every record score until the lists fill. */
        float *block = NULL;
        if (fresh > 0 && kk <= FLOOR_MAX_KK && R >= FLOOR_ROWS)
            block = (float *)malloc((size_t)(FLOOR_ROWS * lanes) * sizeof(float));
        if (block != NULL) {
            first = FLOOR_ROWS;
            for (int64_t r0 = 0; r0 < first; r0 += G) {
                int64_t nrows = first - r0 < G ? first - r0 : G;
                run(db + r0 * ld, ld, nrows, packed, p0, p1, d, base + r0, self0, 0, hs, hi, kk,
                    pb, block + r0 * lanes, lanes);
            }
            if (exclude)
                for (int64_t j = 0; j < nq; j++) {
                    int64_t r = self0 + j0 + j - base;
                    if (r >= 0 && r < first) block[r * lanes + j] = -INFINITY;
                }
            tl_merge_columns(block, first, nq, lanes, base, hs + j0 * kk, hi + j0 * kk, kk,
                             pb + j0);
            free(block);
        }
        for (int64_t r0 = first; r0 < R; r0 += G) {
            int64_t nrows = R - r0 < G ? R - r0 : G;
            const float *x = db + r0 * ld;
            int64_t stride = ld;
            if (nrows < G) { /* the last rows, copied beside zero rows */
                for (int64_t r = 0; r < nrows; r++) memcpy(spare + r * d, x + r * ld, d * 4);
                x = spare;
                stride = d;
            }
            run(x, stride, nrows, packed, p0, p1, d, base + r0, self0, exclude != 0, hs, hi, kk,
                pb, NULL, 0);
        }
    }
    for (int64_t j = 0; j < Q; j++) bar[j] = pb[j];
    free(pb);
    free(spare);
    return 0;
#else
    (void)db, (void)ld, (void)R, (void)packed, (void)Q, (void)d, (void)base;
    (void)exclude, (void)self0, (void)hs, (void)hi, (void)kk, (void)bar, (void)pass_bytes;
    return -1;
#endif
}

#ifdef TL_FUSED
/* tl_gather_product_merge's loop over groups of queries and panels of rows,
   in AVX2 (wide 0: FUSED_ROWS queries by one panel) or AVX-512 (wide 1:
   WIDE_ROWS queries by two panels). Each caller below passes `wide` as a
   constant and has the target of its kernels, so they are inlined into it.
   rows: WIDE_ROWS * d floats. */
static inline __attribute__((always_inline)) void gather_loop(
    int wide, const float *q, int64_t ldq, const int64_t *qmap, int64_t Q, const float *packed,
    int64_t R, int64_t d, int64_t base, float *hs, int64_t *hi, int64_t kk, float *bar,
    float *rows) {
    int64_t G = wide ? WIDE_ROWS : FUSED_ROWS, step = wide ? 2 : 1; /* rows, panels a tile */
    int64_t panels = (R + FUSED_LANES - 1) / FUSED_LANES;
    float out[WIDE_ROWS * 2 * FUSED_LANES];
    for (int64_t g = 0; g < Q; g += G) {
        int64_t nrows = Q - g < G ? Q - g : G;
        for (int64_t r = 0; r < nrows; r++) memcpy(rows + r * d, q + qmap[g + r] * ldq, d * 4);
        for (int64_t p = 0; p < panels; p += step) {
            int two = step == 2 && p + 1 < panels;
            const float *pp = packed + p * d * FUSED_LANES;
            if (wide)
                gather_tile512(rows, d, pp, two, out);
            else
                gather_tile(rows, d, pp, two, out);
            int64_t lanes = R - p * FUSED_LANES, most = (1 + two) * FUSED_LANES;
            uint64_t live = (1ull << (lanes < most ? lanes : most)) - 1;
            for (int64_t r = 0; r < nrows; r++) {
                int64_t j = qmap[g + r];
                const float *v = out + r * 2 * FUSED_LANES;
                uint64_t m = wide ? lanes_above512(v, bar[j]) : lanes_above(v, bar[j]);
                if (two) m |= (uint64_t)lanes_above512(v + FUSED_LANES, bar[j]) << FUSED_LANES;
                push_above(m & live, v, base + p * FUSED_LANES, hs + j * kk, hi + j * kk, kk,
                           bar + j);
            }
        }
    }
}

#define GATHER_ARGS                                                                          \
    const float *q, int64_t ldq, const int64_t *qmap, int64_t Q, const float *packed,       \
        int64_t R, int64_t d, int64_t base, float *hs, int64_t *hi, int64_t kk, float *bar, \
        float *rows
__attribute__((target("avx2,fma"))) static void gather_avx2(GATHER_ARGS) {
    gather_loop(0, q, ldq, qmap, Q, packed, R, d, base, hs, hi, kk, bar, rows);
}
__attribute__((target("avx512f,avx2,fma"))) static void gather_avx512(GATHER_ARGS) {
    gather_loop(1, q, ldq, qmap, Q, packed, R, d, base, hs, hi, kk, bar, rows);
}
#undef GATHER_ARGS
#endif

/* Score the Q queries picked by qmap (query j is row qmap[j] of q, stride
   ldq; its list is hs + qmap[j] * kk, its bar bar[qmap[j]]) against R
   database rows packed as tl_pack_queries packs queries (row r has id
   base + r), and merge them into the picked lists. For many small sets of
   rows, each met by a different subset of the queries (the inverted lists
   of an approximate index): the lists stay in place, the queries are read
   six at a time (twelve in AVX-512) from where they are, and only the rows
   are packed. Returns 0, or -1 where the processor or memory does not
   allow it. */
int tl_gather_product_merge(const float *q, int64_t ldq, const int64_t *qmap, int64_t Q,
                            const float *packed, int64_t R, int64_t d, int64_t base, float *hs,
                            int64_t *hi, int64_t kk, float *bar) {
#ifdef TL_FUSED
    if (kk < 1 || R < 1 || Q < 1) return 0;
    if (!tl_fused_ok()) return -1;
    float *rows = (float *)calloc((size_t)(WIDE_ROWS * d), sizeof(float));
    if (rows == NULL) return -1;
    (tl_wide_product && tl_avx512_ok() ? gather_avx512 : gather_avx2)(
        q, ldq, qmap, Q, packed, R, d, base, hs, hi, kk, bar, rows);
    free(rows);
    return 0;
#else
    (void)q, (void)ldq, (void)qmap, (void)Q, (void)packed, (void)R, (void)d, (void)base;
    (void)hs, (void)hi, (void)kk, (void)bar;
    return -1;
#endif
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ctopk",
                                    "Kernels of trainleak._topk (called through ctypes).", -1, NULL};

PyMODINIT_FUNC PyInit__ctopk(void) { return PyModule_Create(&module); }
