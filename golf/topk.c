/* Row-wise top-k of float32 log-probabilities (every value <= 0, -inf allowed), built by golf/topk.py.

   Keys are the float32 bits without the sign: for values <= 0 a smaller key is a larger value, -inf and NaN
   come last. Per row of v keys:
   1. the minimum key of each of s = min(2k, v) strided sets {c, c + s, c + 2s, ...};
   2. thr = the k-th smallest of those minima: k distinct elements are <= thr, so the top k all are;
   3. the candidates (keys <= thr, ~1.3k of them on teacher rows) are flagged in a vectorised pass, then
      packed as (key << 32 | id) by walking the set bytes of each 8-byte word of flags;
   4. each candidate's rank among the others places it, or, when ties leave many candidates, an insertion
      into the k best so far (ranking is quadratic in the candidates).
   Every full pass over a row is a loop the compiler vectorises; ties keep the lower id first. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "golf/topk.c reads flag bytes as little-endian words; golf/topk.py falls back to torch's top-K"
#endif

static inline int32_t key_of(const float *p) {
    int32_t bits;
    memcpy(&bits, p, sizeof bits);
    return bits & 0x7FFFFFFF;
}

/* Keep the k smallest of the n candidates, ascending, in best[0..k). */
static void insert_smallest(const int64_t *cand, int64_t n, int64_t k, int64_t *best) {
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t c = cand[i], p;
        if (kept < k) p = kept++;
        else if (c < best[k - 1]) p = k - 1;
        else continue;
        for (; p > 0 && best[p - 1] > c; p--) best[p] = best[p - 1];
        best[p] = c;
    }
}

/* x: rows x v float32, row-major; out_id: rows x k ids of the k largest values of each row, largest first.
   Returns 0, or -1 when out of memory. Needs 1 <= k <= v. */
int topk_rows(const float *x, int64_t rows, int64_t v, int64_t k, int64_t *out_id) {
    int64_t sets = 2 * k < v ? 2 * k : v;
    int32_t *mins = malloc(sets * sizeof *mins);
    int64_t *cand = malloc(v * sizeof *cand);
    int64_t *best = malloc(k * sizeof *best);
    uint8_t *restrict flag = calloc(v + 8, 1);  /* zero padding: the last word may run past v */
    if (!mins || !cand || !best || !flag) {
        free(mins), free(cand), free(best), free(flag);
        return -1;
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict row = x + r * v;  /* restrict: flag's stores cannot alias it */
        int64_t *out = out_id + r * k;
        for (int64_t c = 0; c < sets; c++) mins[c] = key_of(row + c);
        for (int64_t a = sets; a < v; a += sets) {
            int64_t len = v - a < sets ? v - a : sets;
            for (int64_t c = 0; c < len; c++) {
                int32_t key = key_of(row + a + c);
                mins[c] = key < mins[c] ? key : mins[c];
            }
        }
        int32_t thr = 0x7FFFFFFF;
        for (int64_t c = 0; c < sets; c++) {
            int32_t at_most = 0, m = mins[c];
            for (int64_t d = 0; d < sets; d++) at_most += mins[d] <= m;
            thr = at_most >= k && m < thr ? m : thr;
        }
        for (int64_t j = 0; j < v; j++) flag[j] = key_of(row + j) <= thr;
        int64_t n = 0;
        for (int64_t w = 0; w < v; w += 8) {
            uint64_t bits;
            memcpy(&bits, flag + w, 8);
            for (; bits; bits &= bits - 1) {
                int64_t j = w + (__builtin_ctzll(bits) >> 3);
                cand[n++] = (int64_t)key_of(row + j) << 32 | j;
            }
        }
        if (n <= 4 * k) {
            for (int64_t i = 0; i < n; i++) {
                int64_t rank = 0, c = cand[i];
                for (int64_t j = 0; j < n; j++) rank += cand[j] < c;
                if (rank < k) out[rank] = c & 0xFFFFFFFF;
            }
        } else {
            insert_smallest(cand, n, k, best);
            for (int64_t j = 0; j < k; j++) out[j] = best[j] & 0xFFFFFFFF;
        }
    }
    free(mins), free(cand), free(best), free(flag);
    return 0;
}
