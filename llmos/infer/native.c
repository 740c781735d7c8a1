/* llmos native decode: one forward step of a Llama for a handful of tokens, in plain C.

   Why this exists. At batch 1 every weight is read once per token, so decode speed is memory
   bandwidth over weight bytes; a torch step also pays ~200 small op calls of 5-25 us each,
   which for a 15M model is more than the matmuls themselves (docs/LOG.md, session 1). llama2.c
   shows that one C function per token removes that overhead; llama.cpp shows that 8-bit weights
   multiplied against 8-bit-quantized activations (Q8_0 x Q8_0, blocks of 32) run near the
   bandwidth bound on AVX2. This file does both, in the llama2.c manner: one self-contained
   file in banner-delimited sections, built at first use by `native.py` with the machine's own
   compiler (`-O3 -march=native -fopenmp`), and called through ctypes once per step.

   The step takes n tokens, each with its own KV-cache row and slot, so the same function is
   the engine's decode (one token), a prefill (a prompt's tokens on one row) and the server's
   continuous batching (one token on each of several rows, each at its own position). The KV
   cache is the engine's torch tensors, fp32, laid out (rows, kv_heads, slots, head_dim). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

/* ----------------------------------------------------------------------------------------
   The model, as the Python side lays it out (ctypes mirrors these structs). */

enum { F32 = 0, BF16 = 1, Q8 = 2 };
#define QK 32 /* Q8: weights and activations are quantized in blocks of 32, one scale each */

/* W is rows x cols (out x in), packed by native.py so that the four rows a task works on
   together are one linear stream in memory (the hardware prefetcher follows one stream well,
   eight poorly: separate arrays for the rows and for Q8's scales ran at half the speed):

   F32, BF16: for each group of 4 rows, for each 8 columns: row 0's 8 values, row 1's, ...
   Q8:        for each group of 4 rows, for each block of 32 columns: the 4 rows' fp32 scales
              (16 bytes), then row 0's 32 int8 values, row 1's, row 2's, row 3's (144 bytes) */
typedef struct {
    int kind, rows, cols;
    const void *w; /* float, uint16 (bf16: the top half of a float) or the Q8 blocks */
} Matrix;

#define Q8_GROUP (16 + 4 * QK) /* bytes of one block of 4 rows in Q8 */

typedef struct {
    const float *attn_norm, *ffn_norm;
    Matrix qkv, o, gate_up, down; /* q, k, v and gate, up are fused: one matmul each */
} Layer;

typedef struct {
    int dim, n_layers, n_heads, n_kv_heads, head_dim, ffn, vocab;
    float eps;
    const float *embed; /* vocab x dim, fp32 */
    const float *norm;
    Matrix head;
    const Layer *layers;
} Model;

/* ----------------------------------------------------------------------------------------
   Dot products: four weight rows against one activation vector at once, per weight format.
   Four rows share each load of x and one horizontal reduction; a row at a time, the reduction
   costs as much as the dot itself for the short rows (288-768 wide) of small models. */

/* Activations quantized for a Q8 matmul: int8 values, one scale per block of 32. */
typedef struct {
    int8_t *q;
    float *d;
} QVec;

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16; /* bf16 is the top 16 bits of an fp32 */
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#ifdef __AVX2__
/* (sum a, sum b, sum c, sum d) of four 8-lane accumulators */
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

static inline __m256 load_bf16(const uint16_t *w) { /* widen 8 bf16: a shift, nothing more */
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)w));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* ggml's trick: maddubs multiplies unsigned by signed bytes, so move w's sign onto x
   (|w| * sign(w)x = wx); pairs of products are summed to int16 (|w|, |x| <= 127 cannot
   overflow), madd sums pairs to int32, and the block's two scales finish it in float. */
static inline __m256 q8_block(__m256i w, __m256i x, float scale, __m256 acc) {
    __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
    return _mm256_fmadd_ps(_mm256_set1_ps(scale), p, acc);
}
#endif

/* one fp32 dot product (attention's q.k) */
static float dot(const float *a, const float *b, int n) {
    int i = 0;
    float s = 0;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float t[8];
    _mm256_storeu_ps(t, acc);
    s = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* out[t * ldo + 0..3] = rows r..r+3 of W dotted with token t's activations (x + t * ldx;
   for Q8: xq + t * ldx and xd + t * (ldx / QK), the quantized x), for nt <= 3 tokens. r is a
   multiple of 4, cols a multiple of 8 (32 for Q8): native.py checks both. Each weight vector
   loaded serves all nt tokens (a GEMM micro-kernel of 4 rows x 3 tokens: 12 accumulators and
   one weight and three x registers, all 16 AVX2 registers); nt is a constant at each call
   site, so the compiler unrolls the token loops and keeps the arrays in registers. */
static inline void dot4(float *out, size_t ldo, const Matrix *W, int r, const float *x,
                        size_t ldx, const int8_t *xq, const float *xd, const int nt) {
    const int n = W->cols, nb = n / QK;
    const size_t group = (size_t)(r / 4);
#ifdef __AVX2__
    __m256 acc[3][4];
    for (int t = 0; t < nt; t++)
        for (int k = 0; k < 4; k++) acc[t][k] = _mm256_setzero_ps();
    if (W->kind == F32 || W->kind == BF16) {
        const float *w32 = (const float *)W->w + group * 4 * n;
        const uint16_t *w16 = (const uint16_t *)W->w + group * 4 * n;
        for (int i = 0; i < n; i += 8) {
            __m256 xv[3];
            for (int t = 0; t < nt; t++) xv[t] = _mm256_loadu_ps(x + t * ldx + i);
            for (int k = 0; k < 4; k++) {
                size_t at = (size_t)i * 4 + k * 8;
                __m256 wv = W->kind == F32 ? _mm256_loadu_ps(w32 + at) : load_bf16(w16 + at);
                for (int t = 0; t < nt; t++) acc[t][k] = _mm256_fmadd_ps(wv, xv[t], acc[t][k]);
            }
        }
    } else {
        const uint8_t *g = (const uint8_t *)W->w + group * nb * Q8_GROUP;
        for (int b = 0; b < nb; b++, g += Q8_GROUP) {
            const float *sc = (const float *)g;
            const __m256i *q = (const __m256i *)(g + 16);
            __m256i xv[3];
            for (int t = 0; t < nt; t++)
                xv[t] = _mm256_loadu_si256((const __m256i *)(xq + t * ldx + b * QK));
            for (int k = 0; k < 4; k++) {
                __m256i wk = _mm256_loadu_si256(q + k);
                for (int t = 0; t < nt; t++)
                    acc[t][k] = q8_block(wk, xv[t], sc[k] * xd[t * (ldx / QK) + b], acc[t][k]);
            }
        }
    }
    for (int t = 0; t < nt; t++)
        _mm_storeu_ps(out + t * ldo, hsum4(acc[t][0], acc[t][1], acc[t][2], acc[t][3]));
#else
    /* the same sums in plain C, on the same packed layout */
    for (int t = 0; t < nt; t++, out += ldo, x += ldx, xq += ldx, xd += ldx / QK) {
        for (int k = 0; k < 4; k++) out[k] = 0;
        if (W->kind == Q8) {
            const uint8_t *g = (const uint8_t *)W->w + group * nb * Q8_GROUP;
            for (int b = 0; b < nb; b++, g += Q8_GROUP)
                for (int k = 0; k < 4; k++) {
                    const int8_t *q = (const int8_t *)(g + 16) + k * QK;
                    int32_t acc = 0;
                    for (int u = 0; u < QK; u++) acc += (int32_t)q[u] * xq[b * QK + u];
                    out[k] += ((const float *)g)[k] * xd[b] * (float)acc;
                }
            continue;
        }
        for (int i = 0; i < n; i += 8)
            for (int k = 0; k < 4; k++)
                for (int u = 0; u < 8; u++) {
                    size_t at = group * 4 * n + (size_t)i * 4 + k * 8 + u;
                    float w = W->kind == F32 ? ((const float *)W->w)[at]
                                             : bf16_to_f32(((const uint16_t *)W->w)[at]);
                    out[k] += w * x[i + u];
                }
    }
#endif
}

/* ----------------------------------------------------------------------------------------
   Matmul: out[j, r] = W[r, :] . x[j, :] for n activation vectors. */

static void quantize(QVec *qx, const float *x, int n, int cols) {
    for (int j = 0; j < n; j++) {
        for (int b = 0; b < cols / QK; b++) {
            const float *v = x + (size_t)j * cols + b * QK;
            float amax = 0;
            for (int i = 0; i < QK; i++) amax = fmaxf(amax, fabsf(v[i]));
            float d = amax / 127.0f, inv = d > 0 ? 1.0f / d : 0.0f;
            qx->d[(size_t)j * (cols / QK) + b] = d;
            for (int i = 0; i < QK; i++)
                qx->q[(size_t)j * cols + b * QK + i] = (int8_t)roundf(v[i] * inv);
        }
    }
}

#define ROW_BLOCK 16 /* rows per task: each activation vector is reused from L1 across them */
#define ATT_BLOCK 16 /* a prompt's queries per attention task (see llmos_step) */

static void matmul(float *out, const float *x, int n, const Matrix *W) {
    const int rows = W->rows, cols = W->cols;
    QVec qx = {0};
    if (W->kind == Q8) {
        qx.q = malloc((size_t)n * cols);
        qx.d = malloc((size_t)n * (cols / QK) * sizeof(float));
        quantize(&qx, x, n, cols);
    }
    /* rows is a multiple of 4 for every model we load (Python checks); each task is a block
       of rows for every token, so a weight block is read from memory once per step */
#pragma omp parallel for schedule(static)
    for (int r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
        int r1 = r0 + ROW_BLOCK < rows ? r0 + ROW_BLOCK : rows;
        for (int j = 0; j < n; j += 3) { /* tokens three at a time, then the rest */
            const int nt = n - j < 3 ? n - j : 3;
            float *o = out + (size_t)j * rows;
            const float *xj = x + (size_t)j * cols;
            const int8_t *qj = qx.q + (size_t)j * cols;
            const float *dj = qx.d + (size_t)j * (cols / QK);
            for (int r = r0; r < r1; r += 4) {
                if (nt == 3) dot4(o + r, rows, W, r, xj, cols, qj, dj, 3);
                else if (nt == 2) dot4(o + r, rows, W, r, xj, cols, qj, dj, 2);
                else dot4(o + r, rows, W, r, xj, cols, qj, dj, 1);
            }
        }
    }
    free(qx.q);
    free(qx.d);
}

/* ----------------------------------------------------------------------------------------
   The pieces of a block. */

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    float ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float inv = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * inv * w[i];
}

/* Rotary embedding in Hugging Face's half-split layout: element i pairs with i + hd/2. The
   cos/sin tables (positions x head_dim) come from model.rope_tables, so both paths agree. */
static void rope(float *v, const float *cos, const float *sin, int hd) {
    int h = hd / 2;
    for (int i = 0; i < h; i++) {
        float a = v[i], b = v[i + h];
        v[i] = a * cos[i] - b * sin[i];
        v[i + h] = b * cos[i + h] + a * sin[i + h];
    }
}

/* ----------------------------------------------------------------------------------------
   The step. Token j is `tokens[j]`, stored in cache row `rows[j]` at slot `slots[j]`; it
   attends to slots first[j]..slots[j] of its row (first > 0 skips left padding), and its
   rotary position is slots[j] - first[j]. A padding token (slot < first) attends to itself
   only. Logits are written for the n_out tokens listed in `out_idx` (the head is the largest
   matrix of a small model: a prefill needs it for the last token only). */

int llmos_step(const Model *m, int n, const int *tokens, const int *rows, const int *slots,
               const int *first, float *const *kc, float *const *vc, int S, const float *cos_t,
               const float *sin_t, int n_out, const int *out_idx, float *logits) {
    const int dim = m->dim, hd = m->head_dim, nh = m->n_heads, nkv = m->n_kv_heads;
    const int qkv_dim = (nh + 2 * nkv) * hd, group = nh / nkv;
    float *x = malloc(sizeof(float) * n * dim);
    float *h = malloc(sizeof(float) * n * dim);
    float *qkv = malloc(sizeof(float) * n * qkv_dim);
    float *att = malloc(sizeof(float) * n * nh * hd);
    float *gu = malloc(sizeof(float) * n * 2 * m->ffn);
    float *act = malloc(sizeof(float) * n * m->ffn);
    int *blocks = malloc(sizeof(int) * (n + 1));
    if (!x || !h || !qkv || !att || !gu || !act || !blocks) return -1;
    for (int j = 0; j < n; j++) memcpy(x + j * dim, m->embed + (size_t)tokens[j] * dim, 4 * dim);

    for (int l = 0; l < m->n_layers; l++) {
        const Layer *L = &m->layers[l];
        for (int j = 0; j < n; j++) rmsnorm(h + j * dim, x + j * dim, L->attn_norm, dim, m->eps);
        matmul(qkv, h, n, &L->qkv);
        /* rotate q and k, then store k and v: every token's entry is in the cache before any
           token attends, so tokens of one prompt see each other causally */
        for (int j = 0; j < n; j++) {
            int p = slots[j] - first[j] > 0 ? slots[j] - first[j] : 0;
            float *t = qkv + (size_t)j * qkv_dim;
            for (int k = 0; k < nh + nkv; k++) rope(t + k * hd, cos_t + (size_t)p * hd, sin_t + (size_t)p * hd, hd);
            for (int k = 0; k < nkv; k++) {
                size_t at = (((size_t)rows[j] * nkv + k) * S + slots[j]) * hd;
                memcpy(kc[l] + at, t + (nh + k) * hd, 4 * hd);
                memcpy(vc[l] + at, t + (nh + nkv + k) * hd, 4 * hd);
            }
        }
        /* attention: softmax(q.k / sqrt(hd)) . v over each token's row, one task per block of
           tokens and one head. A prompt's tokens share a row, so a block of up to ATT_BLOCK of
           them reads each key and value once for all its queries: a token at a time, a 3k-token
           prefill read the row's keys 3k times per head (O(n^2) memory traffic, not compute,
           bound it). Decode tokens of different rows make blocks of one. */
        int nb = 0;
        for (int j = 0; j < n; nb++) {
            blocks[nb] = j;
            int j0 = j++;
            while (j < n && j - j0 < ATT_BLOCK && rows[j] == rows[j0] && first[j] == first[j0] &&
                   slots[j0] >= first[j0] && slots[j] >= first[j])
                j++;
        }
        blocks[nb] = n;
#pragma omp parallel
        {
            float *score = malloc(sizeof(float) * (size_t)ATT_BLOCK * S);
#pragma omp for schedule(dynamic)
            for (int bh = 0; bh < nb * nh; bh++) {
                int b = bh / nh, hh = bh % nh, kv = hh / group;
                int j0 = blocks[b], nq = blocks[b + 1] - j0, r = rows[j0];
                int lo = slots[j0] >= first[j0] ? first[j0] : slots[j0], hi = lo;
                for (int q = 0; q < nq; q++) hi = slots[j0 + q] > hi ? slots[j0 + q] : hi;
                const float *K = kc[l] + ((size_t)r * nkv + kv) * S * hd;
                const float *V = vc[l] + ((size_t)r * nkv + kv) * S * hd;
                const float scale = 1.0f / sqrtf((float)hd);
                float mx[ATT_BLOCK], sum[ATT_BLOCK];
                for (int q = 0; q < nq; q++) mx[q] = -INFINITY, sum[q] = 0;
                for (int t = lo; t <= hi; t++) { /* scores: each key once, for every query */
                    const float *k = K + (size_t)t * hd;
                    for (int q = 0; q < nq; q++) {
                        if (t > slots[j0 + q]) continue; /* causal: only keys up to its slot */
                        float sc = dot(k, qkv + (size_t)(j0 + q) * qkv_dim + hh * hd, hd) * scale;
                        score[(size_t)q * S + t] = sc;
                        mx[q] = fmaxf(mx[q], sc);
                    }
                }
                for (int q = 0; q < nq; q++) {
                    float *o = att + (size_t)(j0 + q) * nh * hd + hh * hd;
                    memset(o, 0, 4 * hd);
                    for (int t = lo; t <= slots[j0 + q]; t++) {
                        float p = expf(score[(size_t)q * S + t] - mx[q]);
                        score[(size_t)q * S + t] = p;
                        sum[q] += p;
                    }
                }
                for (int t = lo; t <= hi; t++) { /* weighted values: each value once */
                    const float *v = V + (size_t)t * hd;
                    for (int q = 0; q < nq; q++) {
                        if (t > slots[j0 + q]) continue;
                        float p = score[(size_t)q * S + t];
                        float *o = att + (size_t)(j0 + q) * nh * hd + hh * hd;
                        for (int i = 0; i < hd; i++) o[i] += p * v[i];
                    }
                }
                for (int q = 0; q < nq; q++) {
                    float *o = att + (size_t)(j0 + q) * nh * hd + hh * hd;
                    for (int i = 0; i < hd; i++) o[i] /= sum[q];
                }
            }
            free(score);
        }
        matmul(h, att, n, &L->o);
        for (int i = 0; i < n * dim; i++) x[i] += h[i];
        for (int j = 0; j < n; j++) rmsnorm(h + j * dim, x + j * dim, L->ffn_norm, dim, m->eps);
        matmul(gu, h, n, &L->gate_up);
        for (int j = 0; j < n; j++) { /* SwiGLU: silu(gate) * up */
            const float *g = gu + (size_t)j * 2 * m->ffn, *u = g + m->ffn;
            for (int i = 0; i < m->ffn; i++) act[(size_t)j * m->ffn + i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        }
        matmul(h, act, n, &L->down);
        for (int i = 0; i < n * dim; i++) x[i] += h[i];
    }
    for (int j = 0; j < n_out; j++) rmsnorm(h + j * dim, x + (size_t)out_idx[j] * dim, m->norm, dim, m->eps);
    matmul(logits, h, n_out, &m->head);
    free(x), free(h), free(qkv), free(att), free(gu), free(act), free(blocks);
    return 0;
}

void llmos_set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
}
