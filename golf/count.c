/* The count teacher's CPU kernels, built by golf/native.py. For golf/ngram.py's query: count_lookups (each
   order's k-grams and contexts at every position), count_terms (the smoothing's per-position weights),
   count_fill (the ragged sparse part); their float32 arithmetic is the torch form's, operation for operation
   (no fused multiply-adds: golf/native.py's flags), so the CountDist they make is the torch form's bit for bit.
   For golf/losses.py's exact soft loss: count_dots (p . z) and count_grad (its gradient row), each one pass over
   a row of the student's logits where the torch form makes several over the whole batch. */
#include <stdint.h>
#include <string.h>

#define MAX_ORDER 64 /* V^ORDER < 2^63 with V >= 2 */
#define PREFETCH 16 /* places / positions whose table entries are fetched ahead: a few memory latencies' worth */
#define LANES 16 /* independent partial sums in a dot product: the compiler keeps them in vector registers */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* As torch rounds float32 to bfloat16: to nearest even, every NaN to 0x7FC0. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16;
    return (uint16_t)((u & 0x7FFFFFFF) > 0x7F800000 ? 0x7FC0 : rounded); /* a select: the loop stays vectorised */
}

static inline float dot(const float *restrict a, const float *restrict b, int64_t v) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= v; j += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[j + l] * b[j + l];
    for (int l = 0; j < v; j++, l++) acc[l] += a[j] * b[j];
    for (int w = LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

/* Index of the first of keys[lo, hi) not below x (hi if none). Branch-free (the halving is a conditional
   move): a mispredicted branch would stall the searches of other places that the CPU runs ahead on. */
static inline int64_t lower_bound(const int64_t *keys, int64_t lo, int64_t hi, int64_t x) {
    const int64_t *base = keys + lo;
    int64_t len = hi - lo;
    if (len <= 0) return lo;
    for (; len > 1; len -= len / 2) base = base[len / 2 - 1] < x ? base + len / 2 : base;
    return (base - keys) + (*base < x);
}

/* The lookups of golf.ngram.CountModel.query (its torch form's `_lookups`) for m positions of an order-n model
   over v tokens: per order k and place s = 0..m, the k-gram ending at place s, whose last token is seq[s + n - 2]
   (seq[-1] reads as 0, as the torch form pads); position i's order-k gram ends at place i + 1 and its order-k
   context is the (k-1)-gram ending at place i. Out, (n, m + 1) row-major, by place (position i in column i + 1;
   column 0 holds place 0's grams, its ci and delta unset): keys_out, found and index (the k-gram's index among
   order k's sorted keys where found, else the sentinel's, the last), ci (the position's context index among
   order k's contexts, the sentinel's where unseen; 0 at order 1) and delta (occurrences left out: leave_out (m),
   and below the top order of mkn / kn only where the position's (k+1)-gram has raw count 1).
   Order k's tables (index o = k - 1): keys (n_keys[o], sentinel-ended), raw, n_ctx[o] contexts; for k >= 2 its
   contexts' start and followers among the keys, context_of (each (k-1)-gram's context index, the sentinel's
   where it is none), the orphans (contexts that are no (k-1)-gram, n_orphans[o]) and their indices.
   A k-gram is a (k-1)-gram or orphan context followed by one of that context's followers, so from place 1 on it
   is looked up among its context's followers (a few cache lines), not all the order's keys. */
int count_lookups(int64_t m, int64_t n, int64_t v, int wb, const int64_t *seq, const uint8_t *leave_out,
                  const int64_t *const *keys, const int64_t *n_keys, const int64_t *const *raw, const int64_t *n_ctx,
                  const int64_t *const *start, const int64_t *const *followers, const int64_t *const *context_of,
                  const int64_t *const *orphans, const int64_t *n_orphans, const int64_t *const *orphan_index,
                  int64_t *keys_out, uint8_t *found, int64_t *index, int64_t *ci, int64_t *delta) {
    int64_t places = m + 1;
    /* Order by order: the places of one order are independent, so their cache misses overlap. */
    for (int64_t o = 0; o < n; o++) {
        const int64_t *k = keys[o];
        int64_t last = n_keys[o] - 1, *key = keys_out + o * places;
        for (int64_t s = 0; s < places; s++) {
            int64_t at = o * places + s, i;
            if (o > 0 && PREFETCH) /* fetch ahead what the chain will read: each step's address needs the one before */
                for (int stage = 0; stage < 3; stage++) {
                    int64_t ahead = s + (PREFETCH << stage) / 2 - 1, j = (o - 1) * places + ahead;
                    if (ahead >= places || !found[j]) continue;
                    const int64_t *c = context_of[o] + index[j];
                    if (stage == 2) __builtin_prefetch(c);
                    else if (stage == 1) __builtin_prefetch(start[o] + *c), __builtin_prefetch(followers[o] + *c);
                    else __builtin_prefetch(k + start[o][*c]);
                }
            if (s == 0 || o == 0) { /* the key from the tokens, then a search of all of the order's keys */
                key[s] = 0;
                for (int64_t j = o; j >= 0; j--) key[s] = key[s] * v + (s + n - 2 - j >= 0 ? seq[s + n - 2 - j] : 0);
                i = lower_bound(k, 0, last, key[s]);
                if (s > 0) ci[at] = 0; /* order 1: the empty context */
            } else {
                int64_t below = at - places - 1, prefix = keys_out[below], c = n_ctx[o] - 1;
                key[s] = prefix * v + seq[s + n - 2];
                if (found[below]) c = context_of[o][index[below]];
                else
                    for (int64_t r = 0; r < n_orphans[o]; r++)
                        if (orphans[o][r] == prefix) c = orphan_index[o][r];
                ci[at] = c; /* the sentinel context has no followers: an empty search */
                i = lower_bound(k, start[o][c], start[o][c] + followers[o][c], key[s]);
            }
            found[at] = i < last && k[i] == key[s];
            index[at] = found[at] ? i : last;
        }
    }
    for (int64_t o = 0; o < n; o++)
        for (int64_t s = 1; s < places; s++) {
            int64_t at = o * places + s, above = at + places;
            delta[at] = leave_out[s - 1] && (wb || o == n - 1 || (found[above] && raw[o + 1][index[above]] == 1));
        }
    return 0;
}

static inline int64_t min3(int64_t a) { return a < 3 ? a : 3; }
static inline float per(int64_t den) { return (float)(den > 1 ? den : 1); } /* den.clamp_min(1) as float32 */

/* The per-position part of golf.ngram.CountModel.query (its torch form, operation for operation) for m positions
   of an order-n model over v tokens. Order k's table (index o = k - 1): den[o], gnum[o] (its contexts), a[o] (its
   k-grams' model counts), followers[o] and start[o] (orders >= 3), dtab[o] ([0, D1, D2, D3+]); wb: Witten-Bell.
   Per order, by place as count_lookups writes them ((n, m + 1), position i in column i + 1): ci, found, gi (the
   k-gram's index), delta; avail (m, n). prev / bigram: the previous token and its bigram's index among the
   leave-one-out rows' keys. Out: p_target, correction (the target entry's weight), start / limit / scale
   ((n - 2, m): count_fill's spans), row_of, rho, beta. Returns 2 where a count left out exceeds the count (a
   broken table), else 0. */
int count_terms(int64_t m, int64_t n, int64_t v, int wb, const int64_t *const *den, const float *const *gnum,
                const int64_t *const *a, const int64_t *const *followers, const int64_t *const *start,
                const double *const *dtab, const int64_t *ci, const uint8_t *found, const int64_t *gi,
                const int64_t *delta, const uint8_t *avail, const int64_t *prev, const int64_t *bigram,
                float *p_target, float *correction, int64_t *span_start, int64_t *limit, float *scale,
                int64_t *row_of, float *rho, float *beta) {
    if (n > MAX_ORDER) return 2;
    for (int64_t i = 0; i < m; i++) {
        int64_t d[MAX_ORDER], d_out[MAX_ORDER], c[MAX_ORDER];
        float gn[MAX_ORDER], change[MAX_ORDER], num[MAX_ORDER], num_out[MAX_ORDER], g[MAX_ORDER];
        int use[MAX_ORDER];
        for (int64_t o = 0; o < n && i + PREFETCH < m; o++) { /* fetch ahead the tables' entries of a later position */
            int64_t at = o * (m + 1) + i + PREFETCH + 1, x = ci[at];
            __builtin_prefetch(den[o] + x), __builtin_prefetch(gnum[o] + x), __builtin_prefetch(a[o] + gi[at]);
            if (o >= 2) __builtin_prefetch(followers[o] + x), __builtin_prefetch(start[o] + x);
        }
        for (int64_t o = 0; o < n; o++) {
            int64_t at = o * (m + 1) + i + 1, x = ci[at], dl = delta[at];
            int64_t cnt = found[at] ? a[o][gi[at]] : 0, out = cnt - dl;
            if (out < 0) return 2;
            c[o] = x, d[o] = den[o][x], gn[o] = gnum[o][x];
            if (wb) {
                int64_t lost = cnt > 0 && out == 0;
                d_out[o] = d[o] - dl - lost, change[o] = -(float)lost;
                num[o] = (float)(double)cnt, num_out[o] = (float)(double)out;
            } else {
                d_out[o] = d[o] - dl, change[o] = (float)(dtab[o][min3(out)] - dtab[o][min3(cnt)]);
                num[o] = (float)((double)cnt - dtab[o][min3(cnt)]);
                num_out[o] = (float)((double)out - dtab[o][min3(out)]);
            }
            use[o] = avail[i * n + o] && d_out[o] > 0;
        }
        float above = 1.0f;
        for (int64_t o = n - 1; o >= 0; o--) {
            g[o] = above;
            float gamma = (gn[o] + change[o]) / per(d_out[o]);
            above = above * (use[o] ? gamma : 1.0f);
        }
        float p = above / (float)v, corr = 0.0f;
        for (int64_t o = 0; o < n; o++) p = p + (use[o] ? g[o] * num_out[o] / per(d_out[o]) : 0.0f);
        for (int64_t o = 0; o < n; o++) corr += use[o] ? g[o] * (num_out[o] - num[o]) / per(d_out[o]) : 0.0f;
        p_target[i] = p, correction[i] = corr;
        int64_t lim = 0;
        for (int64_t o = 2; o < n; o++) {
            int64_t at = (o - 2) * m + i, count = followers[o][c[o]] * use[o];
            lim = o == 2 || count < lim ? count : lim;
            span_start[at] = start[o][c[o]], limit[at] = lim;
            scale[at] = g[o] / per(d_out[o]) * (float)use[o];
        }
        float rho2 = use[1] ? g[1] * ((float)d[1] - gn[1]) / per(d_out[1]) : 0.0f;
        float b = use[0] ? g[0] * (float)d[0] / per(d_out[0]) : 0.0f;
        float rest = use[0] ? g[0] * change[0] / per(d_out[0]) : g[0]; /* uniform's own weight */
        int mixed = rho2 != 0.0f && rest != 0.0f;
        row_of[i] = mixed ? v + 1 + bigram[i] : rho2 != 0.0f ? prev[i] : v;
        rho[i] = rho2 != 0.0f ? rho2 + (mixed ? rest : 0.0f) : rest;
        beta[i] = b;
    }
    return 0;
}

/* The sparse part of golf.ngram.CountModel.query for m positions (its torch form, step for step). Position i's
   entries are [first[i], first[i] + entries[i]), all with entry_row i: its target's (id y[i], weight
   correction[i]), then one per slot j = 0 .. entries[i] - 2 among its order-3 context's followers, with id
   last3[min(base[i] + j, last3_max)] and weight num[0][base[i] + j] * scale[i] while j < limit[i], else 0.
   Each longer order o = 1 .. orders - 1 (order 3 + o) adds num[o][b + j] * s to the entry of slot
   suffix_slot[o][b + j] for j < l, with b, l, s its row o of the (orders, m) base, limit and scale. Returns 2
   where a slot falls outside its position's entries (broken tables), else 0. */
int count_fill(int64_t m, int64_t orders, const int64_t *first, const int64_t *entries, const int64_t *y,
               const float *correction, const int64_t *base, const int64_t *limit, const float *scale,
               const int64_t *last3, int64_t last3_max, const float *const *num, const int64_t *const *suffix_slot,
               int64_t *ids, float *weight, int64_t *entry_row) {
    for (int64_t i = 0; i < m; i++) {
        for (int64_t o = 0; o < orders && i + PREFETCH < m; o++) { /* a later position's followers */
            int64_t b = base[o * m + i + PREFETCH];
            __builtin_prefetch(num[o] + b);
            __builtin_prefetch(o == 0 ? last3 + (b < last3_max ? b : last3_max) : suffix_slot[o] + b);
        }
        int64_t e0 = first[i], slots = entries[i] - 1;
        for (int64_t j = 0; j <= slots; j++) entry_row[e0 + j] = i;
        ids[e0] = y[i];
        weight[e0] = correction[i];
        if (orders <= 0) continue;
        int64_t b = base[i], l = limit[i];
        float s = scale[i];
        for (int64_t j = 0; j < slots; j++) {
            ids[e0 + 1 + j] = last3[b + j < last3_max ? b + j : last3_max];
            weight[e0 + 1 + j] = j < l ? num[0][b + j] * s : 0.0f;
        }
        for (int64_t o = 1; o < orders; o++) {
            int64_t bo = base[o * m + i], lo = limit[o * m + i];
            float so = scale[o * m + i];
            for (int64_t j = 0; j < lo; j++) {
                int64_t slot = suffix_slot[o][bo + j];
                if (slot >= slots) return 2; /* a follower that is not its suffix's: broken tables */
                weight[e0 + 1 + slot] += num[o][bo + j] * so;
            }
        }
    }
    return 0;
}

/* A row of z (float32, or bfloat16 when bf16) as float32 in buf; returns the row. */
static inline const float *row_f32(const void *z, int bf16, int64_t i, int64_t v, float *buf) {
    if (!bf16) return (const float *)z + i * v;
    const uint16_t *h = (const uint16_t *)z + i * v;
    for (int64_t j = 0; j < v; j++) buf[j] = bf16_to_f32(h[j]);
    return buf;
}

/* p . z for the n rows of z (n, v): the sum over the c columns of coef[i, c] table[cols[i, c]] . z[i], plus
   weight[e] z[i, ids[e]] for the entries e with entry_row[e] - row0 == i (entry_row ascending, all in [row0,
   row0 + n)). buf: v floats of scratch. */
int count_dots(int64_t n, int64_t v, const void *z, int bf16, const float *table, int64_t c, const int64_t *cols,
               const float *coef, int64_t n_entries, const int64_t *ids, const float *weight,
               const int64_t *entry_row, int64_t row0, float *buf, float *out) {
    int64_t e = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *zi = row_f32(z, bf16, i, v, buf);
        float total = 0.0f;
        for (int64_t t = 0; t < c; t++) total += coef[i * c + t] * dot(table + cols[i * c + t] * v, zi, v);
        for (; e < n_entries && entry_row[e] - row0 == i; e++) total += weight[e] * zi[ids[e]];
        out[i] = total;
    }
    return 0;
}

/* The soft loss's gradient for the n rows of q (n, v) float32:
   g_i = scale[i] q[i] + the sum over the c columns of coef[i, c] table[cols[i, c]] + entry_grad[e] at ids[e]
         for row i's entries (as count_dots's) - g at y[i],
   written over q, or, when bf16, rounded to bfloat16 into out (n, v) (q left as it was; buf: v floats of
   scratch). */
int count_grad(int64_t n, int64_t v, float *q, const float *scale, float g, const int64_t *y, const float *table,
               int64_t c, const int64_t *cols, const float *coef, int64_t n_entries, const int64_t *ids,
               const float *entry_grad, const int64_t *entry_row, int64_t row0, int bf16, uint16_t *out,
               float *buf) {
    int64_t e = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *restrict qi = q + i * v;
        float *restrict gi = bf16 ? buf : q + i * v;
        float s = scale[i];
        for (int64_t j = 0; j < v; j++) gi[j] = s * qi[j];
        for (int64_t t = 0; t < c; t++) {
            const float *restrict r = table + cols[i * c + t] * v;
            float a = coef[i * c + t];
            for (int64_t j = 0; j < v; j++) gi[j] += a * r[j];
        }
        for (; e < n_entries && entry_row[e] - row0 == i; e++) gi[ids[e]] += entry_grad[e];
        gi[y[i]] -= g;
        if (bf16)
            for (int64_t j = 0; j < v; j++) out[i * v + j] = f32_to_bf16(gi[j]);
    }
    return 0;
}
