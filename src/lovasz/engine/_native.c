/* Fused CPU kernels of the binned engine, compiled ahead of time (when the package is installed).
 *
 * The kernel contract of lovasz/engine/fused.py; lovasz/engine/kernels_native.py drives them and its
 * docstring explains the passes.  Every kernel has the signature
 *
 *     void kernel(const int64_t *args, int64_t u0, int64_t u1)
 *
 * and works on its units u0..u1; ``args`` holds its pointers and integers (in the order of the comment
 * above each kernel), ARITY[k] of them (lovasz_kernel_arity; kernels_native.ARITY declares the same).  ``lovasz_run`` runs a kernel over all its units on the calling OpenMP runtime's
 * team (``GOMP_parallel``, found by the Python side in PyTorch's runtime, so that the kernels share
 * PyTorch's threads) or on the calling thread; each unit writes its own outputs, so results do not depend
 * on the number of threads.
 *
 * Floating point: no fast-math and no contraction (-ffp-contract=off), so that an error and its bin are
 * computed alike wherever they are computed (forward, head, backward).  The hot loops vectorize; on x86-64
 * each kernel is compiled for AVX-512, AVX2 and the baseline, chosen at load time (target_clones).
 *
 * Plain C: no Python header, loaded with ctypes. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>
#define STREAM_STORES 1
#endif

#define BLOCK 256
/* A group's weight table is [2][K]: the background weights of its K bins, then the foreground ones (the
 * Python side sees it as a [G, K, 2] view).  Backward's lookups are mostly background elements, which
 * then touch half the cache lines that an interleaved [K][2] table spreads them over. */
#define CELL(k, fg, K) ((fg) * (K) + (k))

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && !defined(LOVASZ_NO_CLONES)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* Surrogate codes: lovasz/surrogates.py (checked by kernels_native.py at load time). */
enum { SOFTMAX = 0, PROBS = 1, SIGMOID = 2, SIGMOID_PROBS = 3, HINGE = 4 };

/* Signed error bits: the float32 error, its sign bit set for a foreground element, a NaN pattern for an
 * ignored one. */
#define SIGN_BIT ((int32_t)0x80000000u)
#define ABS_MASK ((int32_t)0x7FFFFFFF)
#define INF_BITS ((int32_t)0x7F800000)
#define IGNORED ((int32_t)0x7FC00000)

static inline int32_t bits_of(float v) {
    int32_t b;
    memcpy(&b, &v, 4);
    return b;
}

static inline float float_of(int32_t b) {
    float v;
    memcpy(&v, &b, 4);
    return v;
}

static inline float fmax0(float a, float b) { return a > b ? a : b; }
static inline float fmin0(float a, float b) { return a < b ? a : b; }

/* exp(v) for v <= 0: Cephes expf (Cody-Waite reduction, degree-5 polynomial). */
static inline float exp_neg(float v) {
    v = fmax0(v, -87.0f);
    float n = floorf(v * 1.4426950408889634f + 0.5f);
    float r = v - n * 0.693359375f - n * -2.12194440e-4f;
    float poly = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
                  1.6666665459e-1f) * r + 5.0000001201e-1f;
    return (poly * r * r + r + 1.0f) * float_of(((int32_t)n + 127) << 23);
}

/* Log-linear bin of a value in [0, 1/2] given by its bits (Binning._log_bin).  The sub-bin product fits
 * 32 unsigned bits (mantissa < 2^23) while per_octave < 512 (107 at the default bins), which vectorizes far
 * better than 64-bit lanes; larger per_octave take the 64-bit product. */
static inline int32_t log_bin(int32_t b, int32_t lo_bits, int32_t lo, int32_t per_octave) {
    int32_t octave = (b >> 23) - 127 - lo;
    int32_t sub = per_octave < 512 ? (int32_t)(((uint32_t)(b & 0x7FFFFF) * (uint32_t)per_octave) >> 23)
                                   : (int32_t)(((int64_t)(b & 0x7FFFFF) * per_octave) >> 23);
    int32_t k = 1 + octave * per_octave + sub;
    return b < lo_bits ? 0 : k;
}

/* Bin of an error e scaled by inv = 1/U (Binning.index, bit for bit): below x = 1/2 the log-linear bin of
 * x, above it the mirror image of the bin of 1 - x (<= 1/2 there), so one log_bin per element. */
static inline int32_t bin_of(float e, float inv, int32_t lo, int32_t per_octave, int32_t half) {
    float x = e * inv;
    int low = x < 0.5f;
    float v = low ? x : fmax0(1.0f - x, 0.0f);
    int32_t k = log_bin(bits_of(v), (127 + lo) << 23, lo, per_octave);
    return low ? k : 2 * half - 1 - k;
}

static inline int32_t encode(float v, int fg, int valid) {
    return valid ? (bits_of(v) | (fg ? SIGN_BIT : 0)) : IGNORED;
}

static inline float magnitude(int32_t s) {
    int32_t a = s & ABS_MASK;
    return float_of(a > INF_BITS ? 0 : a);
}

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Ragged batches (the losses' batch=): rag is NULL, or int64 [B + S + 1]: the sample of each image
 * (images sorted by sample), then each sample's first image and one past its last (S + 1 offsets).  The
 * group of image b's class c is then (sample, class); per image (b, c); over the batch c. */
static inline int64_t group_of(const int64_t *rag, int per_image, int64_t b, int64_t C, int64_t c) {
    return rag != NULL ? rag[b] * C + c : per_image ? b * C + c : c;
}

/* Prefetches `bytes` from p into the caches.  A block reads BLOCK pixels of each of C rows, N floats
 * apart: 1 KB per page visit, too short for the hardware prefetchers to follow C streams, so each block
 * fetches its successor's rows while it works. */
static inline void prefetch(const void *p, int64_t bytes) {
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch((const char *)p + off, 0, 3);
}

/* Per image, the softmax backwards look weights up in image b's C tables ([C][2][K] float32 each, 32 KB at
 * the default bins), at random bins.  A thread meets an image's tables afresh when it starts on one of the
 * image's spans: one sweep of prefetches (the groups forward did not leave out) brings them in at streaming
 * speed instead of one miss per look-up (docs/engine.md gives the measurement).  *warm: the image last
 * fetched by this thread. */
static inline void warm_tables(const float *table, const int64_t *cut, int64_t b, int64_t C, int64_t num_bins,
                               int64_t *warm) {
    if (b == *warm) return;
    for (int64_t c = 0; c < C; c++)
        if (cut[b * C + c] >= 0) prefetch(table + (b * C + c) * num_bins * 2, num_bins * 2 * (int64_t)sizeof(float));
    *warm = b;
}


/* Copies width int32 from src to dst with non-temporal (streaming) stores where dst is 16-byte aligned.
 * Pass 1 writes the kept errors this way when the caller asks (kernels_native.STREAM_MIN_BYTES: buffers
 * larger than a last-level cache): they are read again only after the whole pass, when a buffer that
 * size has left the caches anyway, so writing around the caches saves reading each line before it is
 * written (same bits; docs/engine.md gives the measurement).  Smaller buffers are written normally and
 * stay in the caches for pass 2. */
static inline void stream_copy(int32_t *restrict dst, const int32_t *restrict src, int64_t width) {
#ifdef STREAM_STORES
    int64_t j = 0;
    if (((uintptr_t)dst & 15) == 0) {
        for (; j + 4 <= width; j += 4) _mm_stream_si128((__m128i *)(dst + j), _mm_loadu_si128((const __m128i *)(src + j)));
    }
    for (; j < width; j++) dst[j] = src[j];
#else
    memcpy(dst, src, sizeof(int32_t) * (size_t)width);
#endif
}

static inline void stream_fence(void) {
#ifdef STREAM_STORES
    _mm_sfence();
#endif
}

/* The error |1[fg] - pr| of a probability pr, clamped at 0 (rounding of a softmax can give pr > 1): pass 1,
 * both softmax backwards and the binary errors compute it here, so their errors, and bins, are the same
 * bits. */
static inline float class_error(float pr, int fg) { return fmax0(fg ? 1.0f - pr : pr, 0.0f); }

/* A span's buffer of C rows of span floats, 64-byte aligned (aligned_alloc needs a multiple of 64). */
static inline float *span_buffer(int64_t C, int64_t span) {
    return aligned_alloc(64, sizeof(float) * (size_t)(((C * span + 15) / 16) * 16));
}

/* ------------------------------------------------------------------------------------------- pass 1 */

/* The softmax (or the given probabilities) of one block: p[c][j] · den[j] for the C classes of BLOCK
 * pixels from i0 of image b (den = 1 for probabilities).  Pass 1 and the backward that recomputes both
 * call it, so their errors, and bins, are the same bits. */
static inline int32_t nonfinite(float v) { return (bits_of(v) & INF_BITS) == INF_BITS; }

static inline void block_probabilities(const float *x, int64_t C, int64_t N, int64_t b, int64_t i0, int64_t width,
                                       int from_logits, float *p, int64_t stride, float *mx, float *den,
                                       int32_t *restrict nf) {
    /* nf (pass 1; NULL in backward): lane flags, set where a score is NaN or infinite, which the loss
     * refuses (the maximum and exponential below would hide them). */
    if (!from_logits) {
        for (int64_t c = 0; c < C; c++) {
            const float *restrict xc = x + (b * C + c) * N + i0;
            float *restrict pc = p + c * stride;
            for (int64_t j = 0; j < width; j++) pc[j] = xc[j];
            if (nf != NULL)
                for (int64_t j = 0; j < width; j++) nf[j] |= nonfinite(xc[j]);
        }
        for (int64_t j = 0; j < width; j++) den[j] = 1.0f;
        return;
    }
    const float *x0 = x + (b * C) * N + i0;
    for (int64_t j = 0; j < width; j++) mx[j] = x0[j];
    if (nf != NULL)
        for (int64_t j = 0; j < width; j++) nf[j] |= nonfinite(x0[j]);
    for (int64_t c = 1; c < C; c++) {
        const float *restrict xc = x + (b * C + c) * N + i0;
        if (nf != NULL) {
            for (int64_t j = 0; j < width; j++) {
                mx[j] = fmax0(mx[j], xc[j]);
                nf[j] |= nonfinite(xc[j]);
            }
        } else {
            for (int64_t j = 0; j < width; j++) mx[j] = fmax0(mx[j], xc[j]);
        }
    }
    for (int64_t j = 0; j < width; j++) den[j] = 0.0f;
    for (int64_t c = 0; c < C; c++) {
        const float *restrict xc = x + (b * C + c) * N + i0;
        float *restrict pc = p + c * stride;
        for (int64_t j = 0; j < width; j++) {
            float v = exp_neg(xc[j] - mx[j]);
            pc[j] = v;
            den[j] += v;
        }
    }
    for (int64_t j = 0; j < width; j++) den[j] = 1.0f / den[j];
}

/* The largest errors of a class, as bits (errors are >= 0, so the orders agree), folded into LANES
 * running lane maxima m[l] over elements l, l + LANES, ...: an integer maximum of whole vectors, which
 * vectorizes where a float reduction would not, and keeps C·LANES values where one per pixel of a block
 * would stream C·BLOCK through the cache. */
#define LANES 16
static inline void lane_maxima(const int32_t *vb, int64_t width, int32_t *restrict m) {
    int64_t j0 = 0;
    for (; j0 + LANES <= width; j0 += LANES)
        for (int64_t l = 0; l < LANES; l++) m[l] = vb[j0 + l] > m[l] ? vb[j0 + l] : m[l];
    for (int64_t j = j0; j < width; j++) m[j - j0] = vb[j] > m[j - j0] ? vb[j] : m[j - j0];
}

/* Pass 1's verdict on a unit's input from its lane flags (which it clears): bit 0, a NaN or infinite
 * score; bit 1, a label out of range (neither a class nor ignore_index). */
static inline int32_t unit_flags(int32_t *nf, int32_t *bl) {
    int32_t any_nf = 0, any_bl = 0;
    for (int64_t j = 0; j < BLOCK; j++) {
        any_nf |= nf[j];
        any_bl |= bl[j];
    }
    memset(nf, 0, sizeof(int32_t) * BLOCK);
    memset(bl, 0, sizeof(int32_t) * BLOCK);
    return (any_nf ? 1 : 0) | (any_bl ? 2 : 0);
}

/* args: x, t, B, C, N, ignore, use_ignore, code, per_image, nchunks, bits, tops, groups, flags, fg_counts,
 * valid_counts, stream, rag.  Units: an image each per image, else nchunks fixed chunks of the B·N pixels;
 * tops, fg_counts and valid_counts [units, groups] (the counts int64: each group's foreground and valid
 * labels in the unit, so that the caller knows which classes are present before pass 2).  rag: see
 * group_of (with per_image 0: a chunk's lane maxima go to a sample's groups where its sample ends). */
CLONES void softmax_errors(const int64_t *a, int64_t u0, int64_t u1) {
    const float *x = (const float *)a[0];
    const int64_t *t = (const int64_t *)a[1];
    const int64_t B = a[2], C = a[3], N = a[4], ignore = a[5];
    const int use_ignore = (int)a[6], from_logits = a[7] == SOFTMAX, per_image = (int)a[8];
    const int64_t nchunks = a[9];
    int32_t *bits = (int32_t *)a[10];
    float *tops = (float *)a[11];
    const int64_t groups = a[12];
    int32_t *flags = (int32_t *)a[13]; /* [units]: what pass 1 found wrong in the unit (unit_flags) */
    int64_t *fg_counts = (int64_t *)a[14], *valid_counts = (int64_t *)a[15];
    float *p = malloc(sizeof(float) * (size_t)(C * BLOCK));
    int32_t *mtop = calloc((size_t)(C * LANES), sizeof(int32_t)); /* [C][LANES] lane maxima */
    float mx[BLOCK], inv_den[BLOCK];
    int32_t lab[BLOCK], vbits[BLOCK], nf[BLOCK] = {0}, bl[BLOCK] = {0};
    int32_t enc[BLOCK] __attribute__((aligned(64)));
    const int64_t total = B * N, step = (total + nchunks - 1) / nchunks;
    const int stream = (int)a[16]; /* write the errors with streaming stores (stream_copy) */
    const int64_t *rag = (const int64_t *)a[17];
    for (int64_t unit = u0; unit < u1; unit++) {
        int64_t start = per_image ? unit * N : min64(unit * step, total);
        int64_t stop = per_image ? (unit + 1) * N : min64(start + step, total);
        for (int64_t pos = start; pos < stop;) {
            const int64_t b = pos / N, i0 = pos - b * N;
            const int64_t width = min64(min64(BLOCK, N - i0), stop - pos);
            if (pos + width < stop) { /* the next block's rows (see prefetch) */
                const int64_t nb = (pos + width) / N, ni0 = pos + width - nb * N;
                const int64_t nw = min64(min64(BLOCK, N - ni0), stop - pos - width);
                for (int64_t c = 0; c < C; c++) prefetch(x + (nb * C + c) * N + ni0, nw * 4);
                prefetch(t + nb * N + ni0, nw * 8);
            }
            block_probabilities(x, C, N, b, i0, width, from_logits, p, BLOCK, mx, inv_den, nf);
            const int64_t *tb = t + b * N + i0;
            for (int64_t j = 0; j < width; j++) lab[j] = (use_ignore && tb[j] == ignore) ? -1 : (int32_t)tb[j];
            for (int64_t j = 0; j < width; j++) /* a label outside [0, C) (unsigned: negatives too), unignored */
                bl[j] |= (int32_t)(((uint64_t)tb[j] >= (uint64_t)C) & !(use_ignore & (tb[j] == ignore)));
            int32_t valid = 0;
            for (int64_t j = 0; j < width; j++) valid += lab[j] >= 0;
            for (int64_t c = 0; c < C; c++) {
                const float *restrict pc = p + c * BLOCK;
                int32_t *restrict out = bits + (b * C + c) * N + i0;
                int32_t *restrict dst = stream ? enc : out;
                int32_t fgs = 0;
                for (int64_t j = 0; j < width; j++) {
                    float pr = pc[j] * inv_den[j];
                    int fg = lab[j] == (int32_t)c;
                    float v = class_error(pr, fg);
                    vbits[j] = lab[j] >= 0 ? bits_of(v) : 0;
                    dst[j] = encode(v, fg, lab[j] >= 0);
                    fgs += fg;
                }
                if (stream) stream_copy(out, enc, width);
                lane_maxima(vbits, width, mtop + c * LANES);
                const int64_t g = group_of(rag, per_image, b, C, c);
                fg_counts[unit * groups + g] += fgs;
                valid_counts[unit * groups + g] += valid;
            }
            pos += width;
            /* The unit's lanes into its anchors at its end (per image, a unit is one image), and for a
             * ragged batch also where the next image belongs to another sample. */
            if (pos >= stop || (rag != NULL && rag[pos / N] != rag[b])) {
                for (int64_t c = 0; c < C; c++) {
                    const int64_t g = group_of(rag, per_image, b, C, c);
                    int32_t m = bits_of(tops[unit * groups + g]);
                    for (int64_t j = 0; j < LANES; j++) m = mtop[c * LANES + j] > m ? mtop[c * LANES + j] : m;
                    tops[unit * groups + g] = float_of(m);
                }
                memset(mtop, 0, sizeof(int32_t) * (size_t)(C * LANES));
            }
            if (pos >= stop) flags[unit] = unit_flags(nf, bl);
        }
    }
    stream_fence();
    free(p);
    free(mtop);
}

/* Error of a binary score s and its derivative w.r.t. s. */
static inline float binary_error(float s, int fg, int code, float *de) {
    if (code == SIGMOID) {
        float q = exp_neg(-fabsf(s));
        float pr = s >= 0 ? 1.0f / (1.0f + q) : q / (1.0f + q);
        float d = pr * (1.0f - pr);
        *de = fg ? -d : d;
        return class_error(pr, fg);
    }
    if (code == SIGMOID_PROBS) {
        *de = fg ? -1.0f : 1.0f;
        return class_error(s, fg);
    }
    float m = 1.0f - (fg ? s : -s); /* hinge: max(1 - s·y, 0) */
    *de = m > 0 ? (fg ? -1.0f : 1.0f) : 0.0f;
    return fmax0(m, 0.0f);
}

/* binary_error, written to e and de: inlined into a loop whose code is a constant, it vectorizes. */
static inline __attribute__((always_inline)) void binary_error_into(float s, int fg, int code, float *e, float *de) {
    float d;
    *e = binary_error(s, fg, code, &d);
    *de = d;
}

/* args: x, t, B, C, N, ignore, use_ignore, code, per_image, nchunks, bits, tops, groups, flags, rag (as
 * softmax_errors); units over the B·C·N elements (per image: a row of C·N each). */
CLONES void binary_errors(const int64_t *a, int64_t u0, int64_t u1) {
    const float *x = (const float *)a[0];
    const int64_t *t = (const int64_t *)a[1];
    const int64_t B = a[2], C = a[3], N = a[4], ignore = a[5];
    const int use_ignore = (int)a[6], code = (int)a[7], per_image = (int)a[8];
    const int64_t nchunks = a[9];
    int32_t *bits = (int32_t *)a[10];
    float *tops = (float *)a[11];
    const int64_t groups = a[12];
    int32_t *flags = (int32_t *)a[13]; /* [units]: what pass 1 found wrong in the unit (unit_flags) */
    const int64_t *rag = (const int64_t *)a[14];
    const int64_t units_len = C * N, total = B * C * N, step = (total + nchunks - 1) / nchunks;
    int32_t lanes[BLOCK] = {0}, nf[BLOCK] = {0}, bl[BLOCK] = {0};
    for (int64_t unit = u0; unit < u1; unit++) {
        int64_t start = per_image ? unit * units_len : min64(unit * step, total);
        int64_t stop = per_image ? (unit + 1) * units_len : min64(start + step, total);
        for (int64_t pos = start; pos < stop;) {
            const int64_t row = pos / N, i0 = pos - row * N;
            const int64_t width = min64(min64(BLOCK, N - i0), stop - pos);
            const int64_t b = row / C, c = row - b * C;
            const int64_t g = group_of(rag, per_image, b, C, c);
            const float *restrict xc = x + row * N + i0;
            const int64_t *restrict tc = t + row * N + i0;
            int32_t *restrict out = bits + row * N + i0;
            for (int64_t j = 0; j < width; j++) { /* lane maxima of bits, as in softmax_errors */
                int ok = !(use_ignore && tc[j] == ignore);
                int fg = tc[j] == 1;
                float de;
                float v = binary_error(xc[j], fg, code, &de);
                int32_t vb = ok ? bits_of(v) : 0;
                lanes[j] = vb > lanes[j] ? vb : lanes[j];
                nf[j] |= nonfinite(xc[j]);
                bl[j] |= (int32_t)(ok & ((uint64_t)tc[j] > 1)); /* a label other than 0, 1 (or ignore_index) */
                out[j] = encode(v, fg, ok);
            }
            pos += width;
            if (pos >= stop || pos % N == 0) { /* end of the unit or of the row: the lanes into the anchor */
                int32_t m = bits_of(tops[unit * groups + g]);
                for (int64_t j = 0; j < BLOCK; j++) m = lanes[j] > m ? lanes[j] : m;
                tops[unit * groups + g] = float_of(m);
                memset(lanes, 0, sizeof(lanes));
            }
            if (pos >= stop) flags[unit] = unit_flags(nf, bl);
        }
    }
}

/* ------------------------------------------------------------------------------------------- pass 2 */

typedef struct {
    int32_t lo, per_octave, half;
} binning_t;

/* Sub-histograms: element j of a block goes to way j % ways, so that consecutive elements of one bin
 * update different memory (a chain of read-modify-writes on one address would wait on each store).  Worth
 * it where a group has many elements per bin; merging costs a pass over the touched bins per way. */
#define WAYS 4

/* Two doubles, a histogram cell's (count, error sum), updated as one vector; cells are 16-byte aligned. */
typedef double v2d __attribute__((vector_size(16), aligned(16), may_alias));

static inline int64_t ways_for(int64_t elements, int64_t num_bins) { return elements >= 32 * num_bins ? WAYS : 1; }

/* Adds elements start..stop (positions in the B·N pixels) of class c to the histogram ways at flat
 * (ways × [K][2][2], way w at flat + w * 4K: (background, foreground) × (count, error sum)), which
 * merge_ways() adds up; records each block's highest bin in block_top; returns the touched bin range in
 * *k_lo..*k_hi (empty when k_lo > k_hi) and the number of foreground elements. */
static inline int64_t accumulate(const int32_t *bits, int64_t C, int64_t N, int64_t c, int64_t start, int64_t stop,
                                 float inv_g, binning_t bn, double *flat, int64_t ways, int32_t *kb,
                                 int32_t *block_top, int32_t *k_lo_out, int32_t *k_hi_out) {
    const int64_t way = 8 * (int64_t)bn.half; /* 4 doubles per bin, 2·half bins */
    const int32_t mask = (int32_t)ways - 1;
    int32_t k_lo = 2 * bn.half, k_hi = -1;
    int64_t m = 0, n_fg = 0;
    for (int64_t pos = start; pos < stop;) {
        const int64_t b = pos / N, i0 = pos - b * N;
        const int64_t width = min64(min64(BLOCK, N - i0), stop - pos);
        const int32_t *restrict src = bits + (b * C + c) * N + i0;
        int32_t top = -1, low = 2 * bn.half, fgs = 0;
        for (int64_t j = 0; j < width; j++) {
            int32_t k = bin_of(magnitude(src[j]), inv_g, bn.lo, bn.per_octave, bn.half);
            /* the cell's offset, or -1 for an ignored element */
            kb[j] = src[j] == IGNORED ? -1 : ((int32_t)j & mask) * (int32_t)way + k * 4 + (src[j] < 0 ? 2 : 0);
            low = k < low ? k : low;
            top = k > top ? k : top;
            fgs += src[j] < 0; /* the sign bit: foreground (an ignored element's bits are positive) */
        }
        n_fg += fgs;
        block_top[m++] = top;
        k_lo = low < k_lo ? low : k_lo;
        k_hi = top > k_hi ? top : k_hi;
        for (int64_t j = 0; j < width; j++) {
            if (kb[j] < 0) continue;
            v2d *cell = (v2d *)(flat + kb[j]); /* (count, error sum): one 16-byte read-modify-write */
            *cell += (v2d){1.0, (double)magnitude(src[j])};
        }
        pos += width;
    }
    *k_lo_out = k_lo;
    *k_hi_out = k_hi;
    return n_fg;
}

/* Adds ways 1.. of flat into way 0 (into `out` instead, when given) over bins k_lo..k_hi, and clears the
 * ways that were read (all of them when out is given), so that the buffer is zero for the next group. */
static inline void merge_ways(double *flat, double *out, int64_t ways, int32_t k_lo, int32_t k_hi, int32_t half) {
    if (k_lo > k_hi || (ways == 1 && out == NULL)) return;
    const int64_t way = 8 * (int64_t)half, lo = (int64_t)k_lo * 4, n = ((int64_t)k_hi - k_lo + 1) * 4;
    double *dst = out != NULL ? out + lo : flat + lo;
    for (int64_t i = 0; i < n; i++) {
        double v = out != NULL ? dst[i] + flat[lo + i] : flat[lo + i];
        for (int64_t w = 1; w < ways; w++) v += flat[w * way + lo + i];
        dst[i] = v;
    }
    for (int64_t w = out != NULL ? 0 : 1; w < ways; w++) memset(flat + w * way + lo, 0, sizeof(double) * (size_t)n);
}

/* A lower bound on the errors in bins >= k: the lower edge of bin k in x = e·inv (Binning), divided by inv,
 * less a margin far wider than the rounding of e·inv; 0 when every error may be there. */
static inline float error_floor(int64_t k, float inv, binning_t bn) {
    if (k <= 0 || !(inv > 0.0f)) return 0.0f;
    double x;
    if (k < bn.half) { /* log-linear below 1/2: bin 1 + octave·P + sub */
        int64_t octave = (k - 1) / bn.per_octave, sub = (k - 1) % bn.per_octave;
        x = ldexp(1.0 + (double)sub / bn.per_octave, bn.lo + (int)octave);
    } else { /* the mirror image above: x = 1 - d with d below the upper edge of d's bin */
        int64_t kd = 2 * (int64_t)bn.half - 1 - k;
        double d_hi;
        if (kd <= 0) {
            d_hi = ldexp(1.0, bn.lo);
        } else {
            int64_t octave = (kd - 1) / bn.per_octave, sub = (kd - 1) % bn.per_octave;
            d_hi = ldexp(1.0 + (double)(sub + 1) / bn.per_octave, bn.lo + (int)octave);
        }
        x = 1.0 - d_hi;
    }
    double e = x / (double)inv * (1.0 - 1e-5) - 1e-30;
    return e > 0.0 ? (float)e : 0.0f;
}

/* The valid elements of class c in images b0..b1 whose bin is >= cg (the exact head), in scan order;
 * blocks whose highest bin (block_top) is below cg are skipped.  Returns how many (at most cap). */
static inline __attribute__((always_inline)) int64_t gather_head(const int32_t *bits, int64_t C, int64_t N, int64_t c, int64_t b0, int64_t b1, int64_t cg,
                           float inv_g, binning_t bn, float *values, uint8_t *fgs, int32_t *bins, int64_t cap,
                           int32_t *kb, const int32_t *block_top) {
    int64_t m = 0, block = -1;
    if (cg >= 2 * bn.half) return 0;
    /* Errors below e_floor are certainly below bin cg (bins grow with the error): most elements are
     * passed over by one integer comparison, and only the others get their bin computed. */
    const int32_t floor_bits = bits_of(error_floor(cg, inv_g, bn));
    for (int64_t b = b0; b < b1; b++) {
        for (int64_t i0 = 0; i0 < N; i0 += BLOCK) {
            block++;
            if (block_top[block] < cg) continue;
            const int64_t width = min64(BLOCK, N - i0);
            const int32_t *restrict src = bits + (b * C + c) * N + i0;
            int32_t above = 0;
            for (int64_t j = 0; j < width; j++) {
                int32_t a = src[j] & ABS_MASK;
                above |= a >= floor_bits && a <= INF_BITS;
            }
            if (!above) continue;
            for (int64_t j = 0; j < width; j++) {
                int32_t a = src[j] & ABS_MASK;
                if (a < floor_bits || a > INF_BITS) {
                    kb[j] = -1;
                    continue;
                }
                kb[j] = bin_of(magnitude(src[j]), inv_g, bn.lo, bn.per_octave, bn.half);
            }
            for (int64_t j0 = 0; j0 < width; j0 += 16) { /* runs of 16 tested at once, as in class_gradient */
                const int64_t j1 = min64(width, j0 + 16);
                int any = 0;
                for (int64_t j = j0; j < j1; j++) any |= kb[j] >= cg;
                if (!any) continue;
                for (int64_t j = j0; j < j1; j++) {
                    if (kb[j] >= cg && src[j] != IGNORED && m < cap) {
                        values[m] = magnitude(src[j]);
                        fgs[m] = src[j] < 0;
                        bins[m] = kb[j];
                        m++;
                    }
                }
            }
        }
    }
    return m;
}

#define SMALL 64
static double H_SMALL[SMALL];

__attribute__((constructor)) static void init_harmonic(void) {
    H_SMALL[0] = 0.0;
    for (int m = 1; m < SMALL; m++) H_SMALL[m] = H_SMALL[m - 1] + 1.0 / m;
}

static inline double harmonic(int64_t m) {
    if (m < SMALL) return H_SMALL[m];
    double x = (double)m, x2 = 1.0 / (x * x);
    return log(x) + 0.5772156649015329 + 0.5 / x - x2 * (1.0 / 12.0 - x2 * (1.0 / 120.0 - x2 / 252.0));
}

/* H_a - H_b for integers a >= b >= 0, accurate also when both are large. */
static inline double harmonic_diff(int64_t a, int64_t b) {
    if (b < SMALL) return harmonic(a) - H_SMALL[b];
    double fa = (double)a, fb = (double)b, ia2 = 1.0 / (fa * fa), ib2 = 1.0 / (fb * fb);
    return log1p((fa - fb) / fb) + 0.5 * (1.0 / fa - 1.0 / fb) - (ia2 - ib2) / 12.0 +
           (ia2 * ia2 - ib2 * ib2) / 120.0 - (ia2 * ia2 * ia2 - ib2 * ib2 * ib2) / 252.0;
}

/* H_a - H_b for integers a >= b >= 0: summed directly when a - b is small (most bins of a group hold a
 * few elements; a division is much cheaper than the logarithms of harmonic_diff), else harmonic_diff. */
static inline double harmonic_range(int64_t a, int64_t b) {
    if (a - b > 8) return harmonic_diff(a, b);
    double sum = 0.0;
    for (int64_t i = a; i > b; i--) sum += 1.0 / (double)i;
    return sum;
}

/* The weights of the elements of one bin of a group: n is the group's foreground count, u = n + the
 * background elements ranked above the bin, af the foreground elements above it, f and gb the bin's own
 * foreground and background counts.  A foreground element weighs (H(u + gb) - H(u - 1)) / (gb + 1), the
 * mean of J's increments over its possible ranks among the bin's background elements; the background
 * elements share J's rise over the bin less the foreground's part.  In a background-only bin (n > 0), J
 * rises by (n - af)·gb / (u·(u + gb)), so each of its elements weighs (n - af) / (u·(u + gb)): one
 * division, where the difference of the two J values takes two and cancels.  Shared by the table walk
 * (group_table) and the exact head (head_group_weights). */
static inline __attribute__((always_inline)) void bin_weights(int64_t n, int64_t u, int64_t af, int64_t f, int64_t gb,
                                                              double *w_fg_out, double *w_bg_out) {
    double w_fg = 0.0, w_bg = 0.0;
    if (f > 0) w_fg = harmonic_range(u + gb, u - 1) / (double)(gb + 1);
    if (gb > 0 && f == 0 && n > 0) {
        w_bg = (double)(n - af) / ((double)u * (double)(u + gb));
    } else if (gb > 0) {
        double j_before = 0.0, j_after = 1.0;
        if (n > 0) {
            j_before = 1.0 - (double)(n - af) / (double)u;
            j_after = 1.0 - (double)(n - af - f) / (double)(u + gb);
        } else {
            j_before = u > 0 ? 1.0 : 0.0; /* u is the background above when n = 0 */
        }
        w_bg = (j_after - j_before - (double)f * w_fg) / (double)gb;
        w_bg = w_bg > 0.0 ? w_bg : 0.0;
    }
    *w_fg_out = w_fg;
    *w_bg_out = w_bg;
}

/* One group's histogram (slots partials at acc + s*stride, each [K][2][2]) → its weight table table_g
 * [2][K] (CELL; 0 in the exact head), its loss without the head, counts and cut, in
 * one pass from the top bin down: the head is the run of top bins holding at most `head` elements in all,
 * so a bin is in it exactly when the count so far is still <= head.  n_fg: the group's foreground count,
 * or -1 to count it here. */
static inline __attribute__((always_inline)) void group_table(const double *acc, int64_t slots, int64_t stride, int64_t head, float *table_g, int64_t num_bins, int32_t k_lo,
                        int32_t k_hi, int64_t n_fg, double *loss_out, int64_t *n_out, int64_t *total_out,
                        int64_t *cut_out) {
    int64_t n = n_fg;
    if (n < 0) {
        n = 0;
        for (int32_t k = k_hi; k >= k_lo; k--)
            for (int64_t s = 0; s < slots; s++) n += (int64_t)acc[s * stride + (int64_t)k * 4 + 2];
    }
    int64_t total = 0, cut = (int64_t)k_hi + 1, above_f = 0, above_b = 0;
    double loss = 0.0;
    for (int32_t k = k_hi; k >= k_lo; k--) {
        if (slots == 1 && acc[(int64_t)k * 4] == 0.0 && acc[(int64_t)k * 4 + 2] == 0.0) { /* an empty bin */
            if (total <= head) cut = k;
            continue;
        }
        int64_t f = 0, gb = 0;
        double sum_f = 0.0, sum_b = 0.0;
        for (int64_t s = 0; s < slots; s++) {
            const double *cell = acc + s * stride + (int64_t)k * 4;
            f += (int64_t)cell[2];
            gb += (int64_t)cell[0];
            sum_f += cell[3];
            sum_b += cell[1];
        }
        total += f + gb;
        if (total <= head) { /* the exact head: counted above the lower bins, weighted elsewhere */
            cut = k;
            above_f += f;
            above_b += gb;
            continue;
        }
        if (f == 0 && gb == 0) continue;
        double w_fg, w_bg;
        bin_weights(n, n + above_b, above_f, f, gb, &w_fg, &w_bg);
        table_g[CELL(k, 0, num_bins)] = (float)w_bg;
        table_g[CELL(k, 1, num_bins)] = (float)w_fg;
        loss += w_fg * sum_f + w_bg * sum_b;
        above_f += f;
        above_b += gb;
    }
    if (total <= head) cut = 0; /* the empty bins below k_lo too */
    *loss_out = loss;
    *n_out = n;
    *total_out = total;
    *cut_out = cut;
}

/* The exact weights of one group's head (head_weights in histogram.py): its m elements (values, fgs, in
 * scan order) are the group's largest errors; ranked by decreasing error, each run of equal errors is a
 * bin at the top of the group, weighted as the table walk weights a bin (bin_weights; n: the group's
 * foreground count).
 * Writes each element's weight (float32) into w and returns Σ weight · error, in float64.  order: scratch
 * for m indices. */
static double head_group_weights(const float *values, const uint8_t *fgs, int64_t m, int64_t n, float *w,
                                 int32_t *order) {
    for (int64_t i = 0; i < m; i++) { /* stable insertion sort by decreasing value */
        int64_t j = i;
        while (j > 0 && values[order[j - 1]] < values[i]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = (int32_t)i;
    }
    int64_t above_f = 0, above_b = 0;
    double loss = 0.0;
    for (int64_t r0 = 0; r0 < m;) {
        int64_t r1 = r0, f = 0, gb = 0;
        while (r1 < m && values[order[r1]] == values[order[r0]]) {
            f += fgs[order[r1]] != 0;
            gb += fgs[order[r1]] == 0;
            r1++;
        }
        double w_fg, w_bg;
        bin_weights(n, n + above_b, above_f, f, gb, &w_fg, &w_bg);
        for (int64_t r = r0; r < r1; r++) {
            const double wr = fgs[order[r]] ? w_fg : w_bg;
            w[order[r]] = (float)wr;
            loss += wr * (double)values[order[r]];
        }
        above_f += f;
        above_b += gb;
        r0 = r1;
    }
    return loss;
}

/* Zeroes the table entries of bins k_lo..k_hi of one group (both flags). */
static inline void zero_table_range(float *table_g, int64_t num_bins, int32_t k_lo, int32_t k_hi) {
    memset(table_g + k_lo, 0, sizeof(float) * (size_t)(k_hi - k_lo + 1));
    memset(table_g + num_bins + k_lo, 0, sizeof(float) * (size_t)(k_hi - k_lo + 1));
}

/* The images b0..b1 that hold group g's elements (all of class c): one image per image, the batch, or a
 * sample's images in a ragged batch (rag, see group_of). */
static inline void group_span(int64_t g, int64_t B, int64_t C, int per_image, const int64_t *rag, int64_t *c,
                              int64_t *b0, int64_t *b1) {
    if (rag != NULL) {
        *c = g % C;
        *b0 = rag[B + g / C];
        *b1 = rag[B + g / C + 1];
        return;
    }
    *c = per_image ? g % C : g;
    *b0 = per_image ? g / C : 0;
    *b1 = per_image ? *b0 + 1 : B;
}

/* args: bits, B, C, N, per_image, lo, per_octave, half, inv, head, losses, table, n_fg, n_valid, cut,
 * head_values, head_fg, head_counts, capacity, head_weights, skip, valid_counts, rag.  Units: groups.  losses
 * include the head's (its elements' exact weights in head_weights, [G][capacity] float32).  skip (uint8
 * [G], or 0 for none): groups whose loss is not needed (e.g. classes absent under classes="present"),
 * left out: loss 0, no foreground, valid_counts[g] valid elements ([G] int64, from pass 1), cut -1 (which
 * tells backward to give their elements no gradient) and no table entries. */
CLONES void group_tables(const int64_t *a, int64_t u0, int64_t u1) {
    const int32_t *bits = (const int32_t *)a[0];
    const int64_t B = a[1], C = a[2], N = a[3];
    const int per_image = (int)a[4];
    const binning_t bn = {(int32_t)a[5], (int32_t)a[6], (int32_t)a[7]};
    const float *inv = (const float *)a[8];
    const int64_t head = a[9];
    double *losses = (double *)a[10];
    float *table = (float *)a[11];
    int64_t *n_fg = (int64_t *)a[12], *n_valid = (int64_t *)a[13], *cut = (int64_t *)a[14];
    float *head_values = (float *)a[15];
    uint8_t *head_fg = (uint8_t *)a[16];
    int64_t *head_counts = (int64_t *)a[17];
    const int64_t cap = a[18];
    float *head_w = (float *)a[19];
    const uint8_t *skip = (const uint8_t *)a[20];
    const int64_t *valid_counts = (const int64_t *)a[21];
    const int64_t *rag = (const int64_t *)a[22];
    const int64_t num_bins = 2 * bn.half, nblocks = (N + BLOCK - 1) / BLOCK;
    const int64_t ways = ways_for((per_image ? 1 : B) * N, num_bins);
    double *local = calloc((size_t)(ways * num_bins * 4), sizeof(double));
    int32_t *block_top = malloc(sizeof(int32_t) * (size_t)(B * nblocks + 1));
    int32_t *head_bins = malloc(sizeof(int32_t) * (size_t)(cap + 1));
    int32_t kb[BLOCK];
    for (int64_t g = u0; g < u1; g++) {
        if (skip != NULL && skip[g]) {
            losses[g] = 0.0;
            n_fg[g] = 0;
            n_valid[g] = valid_counts[g];
            cut[g] = -1;
            head_counts[g] = 0;
            continue;
        }
        int64_t c, b0, b1;
        group_span(g, B, C, per_image, rag, &c, &b0, &b1);
        int32_t k_lo, k_hi;
        int64_t nf = accumulate(bits, C, N, c, b0 * N, b1 * N, inv[g], bn, local, ways, kb, block_top, &k_lo, &k_hi);
        merge_ways(local, NULL, ways, k_lo, k_hi, bn.half);
        /* The table comes uninitialized: backward reads only bins its elements fall in, k_lo..k_hi, which
         * are zeroed here before the bins that hold elements get their weights. */
        if (k_lo <= k_hi) zero_table_range(table + g * num_bins * 2, num_bins, k_lo, k_hi);
        group_table(local, 1, 0, head, table + g * num_bins * 2, num_bins, k_lo, k_hi, nf, losses + g, n_fg + g, n_valid + g,
                    cut + g);
        if (k_lo <= k_hi) memset(local + (int64_t)k_lo * 4, 0, sizeof(double) * 4 * (size_t)(k_hi - k_lo + 1));
        head_counts[g] = gather_head(bits, C, N, c, b0, b1, cut[g], inv[g], bn, head_values + g * cap,
                                     head_fg + g * cap, head_bins, cap, kb, block_top);
        losses[g] += head_group_weights(head_values + g * cap, head_fg + g * cap, head_counts[g], n_fg[g],
                                        head_w + g * cap, head_bins);
    }
    free(local);
    free(block_top);
    free(head_bins);
}

/* args: bits, B, C, N, per_image, lo, per_octave, half, inv, acc ([G][K][2][2]), rag.  Units: groups. */
CLONES void histogram_rows(const int64_t *a, int64_t u0, int64_t u1) {
    const int32_t *bits = (const int32_t *)a[0];
    const int64_t B = a[1], C = a[2], N = a[3];
    const int per_image = (int)a[4];
    const binning_t bn = {(int32_t)a[5], (int32_t)a[6], (int32_t)a[7]};
    const float *inv = (const float *)a[8];
    double *acc = (double *)a[9];
    const int64_t *rag = (const int64_t *)a[10];
    const int64_t num_bins = 2 * bn.half, nblocks = (N + BLOCK - 1) / BLOCK;
    const int64_t ways = ways_for((per_image ? 1 : B) * N, num_bins);
    double *local = calloc((size_t)(ways * num_bins * 4), sizeof(double));
    int32_t *block_top = malloc(sizeof(int32_t) * (size_t)(B * nblocks + 1));
    int32_t kb[BLOCK];
    for (int64_t g = u0; g < u1; g++) {
        int64_t c, b0, b1;
        group_span(g, B, C, per_image, rag, &c, &b0, &b1);
        int32_t k_lo, k_hi;
        accumulate(bits, C, N, c, b0 * N, b1 * N, inv[g], bn, local, ways, kb, block_top, &k_lo, &k_hi);
        merge_ways(local, acc + g * num_bins * 4, ways, k_lo, k_hi, bn.half);
    }
    free(local);
    free(block_top);
}

/* args: bits, B, C, N, per_image, cut, inv, lo, per_octave, half, values, fgs, bins (int32), counts,
 * capacity, rag.  Units: groups. */
CLONES void head_rows(const int64_t *a, int64_t u0, int64_t u1) {
    const int32_t *bits = (const int32_t *)a[0];
    const int64_t B = a[1], C = a[2], N = a[3];
    const int per_image = (int)a[4];
    const int64_t *cut = (const int64_t *)a[5];
    const float *inv = (const float *)a[6];
    const binning_t bn = {(int32_t)a[7], (int32_t)a[8], (int32_t)a[9]};
    float *values = (float *)a[10];
    uint8_t *fgs = (uint8_t *)a[11];
    int32_t *bins = (int32_t *)a[12];
    int64_t *counts = (int64_t *)a[13];
    const int64_t cap = a[14], nblocks = (N + BLOCK - 1) / BLOCK;
    const int64_t *rag = (const int64_t *)a[15];
    int32_t *block_top = malloc(sizeof(int32_t) * (size_t)(B * nblocks + 1));
    for (int64_t i = 0; i < B * nblocks; i++) block_top[i] = 2 * bn.half; /* no block skipped */
    int32_t kb[BLOCK];
    for (int64_t g = u0; g < u1; g++) {
        int64_t c, b0, b1;
        group_span(g, B, C, per_image, rag, &c, &b0, &b1);
        counts[g] = gather_head(bits, C, N, c, b0, b1, cut[g], inv[g], bn, values + g * cap, fgs + g * cap,
                                bins + g * cap, cap, kb, block_top);
    }
    free(block_top);
}

/* args: acc ([S][G][K][2][2]), S, G, K, head, losses, table, n_fg, n_valid, cut.  Units: groups. */
void tables_range(const int64_t *a, int64_t u0, int64_t u1) {
    const double *acc = (const double *)a[0];
    const int64_t S = a[1], G = a[2], K = a[3], head = a[4];
    double *losses = (double *)a[5];
    float *table = (float *)a[6];
    int64_t *n_fg = (int64_t *)a[7], *n_valid = (int64_t *)a[8], *cut = (int64_t *)a[9];
    for (int64_t g = u0; g < u1; g++)
        group_table(acc + g * K * 4, S, G * K * 4, head, table + g * K * 2, K, 0, (int32_t)(K - 1), -1, losses + g, n_fg + g,
                    n_valid + g, cut + g);
}

/* The global-batch loss (process_group) in two kernels around one all-reduce: send_rows fills this rank's
 * send buffer, the caller sums the buffers of all ranks in place, and global_tables turns the sum into
 * every rank's (identical) losses, table and exact head.  Buffer: the histogram [G][K][2][2] (background,
 * foreground) × (count, error sum) in float32 (counts exact below 2^24 per cell), then one head block
 * [3][G][capacity] per rank: candidate values (-1 where unused), foreground flags and bins, as floats. */

/* args: bits, B, C, N, per_image, lo, per_octave, half, inv, head, send (histogram part), head_block (this
 * rank's, [3][G][capacity]), capacity.  Units: groups.  A group's candidates are its local elements in
 * the bins of its local exact head: they hold every element of the global head that this rank has. */
CLONES void send_rows(const int64_t *a, int64_t u0, int64_t u1) {
    const int32_t *bits = (const int32_t *)a[0];
    const int64_t B = a[1], C = a[2], N = a[3];
    const int per_image = (int)a[4];
    const binning_t bn = {(int32_t)a[5], (int32_t)a[6], (int32_t)a[7]};
    const float *inv = (const float *)a[8];
    const int64_t head = a[9];
    float *send = (float *)a[10];
    float *block = (float *)a[11];
    const int64_t cap = a[12];
    const int64_t *rag = NULL; /* across processes the loss is over the batch: no ragged groups */
    const int64_t num_bins = 2 * bn.half, nblocks = (N + BLOCK - 1) / BLOCK, G = per_image ? B * C : C;
    const int64_t ways = ways_for((per_image ? 1 : B) * N, num_bins);
    double *local = calloc((size_t)(ways * num_bins * 4), sizeof(double));
    int32_t *block_top = malloc(sizeof(int32_t) * (size_t)(B * nblocks + 1));
    float *values = malloc(sizeof(float) * (size_t)(cap + 1));
    uint8_t *fgs = malloc((size_t)(cap + 1));
    int32_t *bins = malloc(sizeof(int32_t) * (size_t)(cap + 1));
    int32_t kb[BLOCK];
    for (int64_t g = u0; g < u1; g++) {
        int64_t c, b0, b1;
        group_span(g, B, C, per_image, rag, &c, &b0, &b1);
        int32_t k_lo, k_hi;
        accumulate(bits, C, N, c, b0 * N, b1 * N, inv[g], bn, local, ways, kb, block_top, &k_lo, &k_hi);
        merge_ways(local, NULL, ways, k_lo, k_hi, bn.half);
        float *out = send + g * num_bins * 4;
        memset(out, 0, sizeof(float) * 4 * (size_t)num_bins);
        int64_t total = 0, cut = k_hi + 1;
        for (int32_t k = k_hi; k >= k_lo; k--) { /* the local exact head's cut, as head_cut */
            const double *cell = local + (int64_t)k * 4;
            for (int i = 0; i < 4; i++) out[(int64_t)k * 4 + i] = (float)cell[i];
            total += (int64_t)cell[0] + (int64_t)cell[2];
            if (total <= head) cut = k;
        }
        if (total <= head) cut = 0;
        if (k_lo <= k_hi) memset(local + (int64_t)k_lo * 4, 0, sizeof(double) * 4 * (size_t)(k_hi - k_lo + 1));
        const int64_t m = gather_head(bits, C, N, c, b0, b1, cut, inv[g], bn, values, fgs, bins, cap, kb, block_top);
        for (int64_t i = 0; i < cap; i++) {
            block[g * cap + i] = i < m ? values[i] : -1.0f;
            block[(G + g) * cap + i] = i < m ? (float)fgs[i] : 0.0f;
            block[(2 * G + g) * cap + i] = i < m ? (float)bins[i] : 0.0f;
        }
    }
    free(local);
    free(block_top);
    free(values);
    free(fgs);
    free(bins);
}

/* args: recv (the summed buffer), G, K, head, world, capacity, losses, table ([G][2][K]), n_fg, n_valid, cut,
 * values, fgs (uint8), weights (each [G][world·capacity]: every rank's candidates side by side, -1 / 0 / 0
 * where unused or below the global cut).  Units: groups. */
CLONES void global_tables(const int64_t *a, int64_t u0, int64_t u1) {
    const float *recv = (const float *)a[0];
    const int64_t G = a[1], K = a[2], head = a[3], world = a[4], cap = a[5];
    double *losses = (double *)a[6];
    float *table = (float *)a[7];
    int64_t *n_fg = (int64_t *)a[8], *n_valid = (int64_t *)a[9], *cut = (int64_t *)a[10];
    float *values = (float *)a[11];
    uint8_t *fgs = (uint8_t *)a[12];
    float *weights = (float *)a[13];
    const int64_t width = world * cap;
    const float *blocks = recv + G * K * 4;
    double *acc = malloc(sizeof(double) * (size_t)(K * 4));
    float *hv = malloc(sizeof(float) * (size_t)(width + 1));
    uint8_t *hf = malloc((size_t)(width + 1));
    float *hw = malloc(sizeof(float) * (size_t)(width + 1));
    int32_t *order = malloc(sizeof(int32_t) * (size_t)(width + 1));
    int64_t *slot = malloc(sizeof(int64_t) * (size_t)(width + 1));
    for (int64_t g = u0; g < u1; g++) {
        for (int64_t i = 0; i < K * 4; i++) acc[i] = (double)recv[g * K * 4 + i];
        float *table_g = table + g * K * 2;
        memset(table_g, 0, sizeof(float) * 2 * (size_t)K);
        group_table(acc, 1, 0, head, table_g, K, 0, (int32_t)(K - 1), -1, losses + g, n_fg + g, n_valid + g, cut + g);
        /* The global head: every rank's candidates in the bins >= the global cut. */
        int64_t m = 0;
        for (int64_t i = 0; i < width; i++) {
            const int64_t r = i / cap, j = i - r * cap;
            const float *blk = blocks + r * 3 * G * cap;
            const float v = blk[g * cap + j], bin = blk[(G + g) * cap + j + G * cap];
            const int keep = v >= 0.0f && (int64_t)lrintf(bin) >= cut[g];
            values[g * width + i] = keep ? v : -1.0f;
            fgs[g * width + i] = keep && blk[(G + g) * cap + j] > 0.5f;
            weights[g * width + i] = 0.0f;
            if (keep) {
                hv[m] = v;
                hf[m] = fgs[g * width + i];
                slot[m++] = i;
            }
        }
        losses[g] += head_group_weights(hv, hf, m, n_fg[g], hw, order);
        for (int64_t i = 0; i < m; i++) weights[g * width + slot[i]] = hw[i];
    }
    free(acc);
    free(hv);
    free(hf);
    free(hw);
    free(order);
    free(slot);
}

/* --------------------------------------------------------------------------------------------- backward */

/* Weight of a head element of group g: the head entry with the same foreground flag and nearest error. */
static inline float head_weight(const float *hv, const uint8_t *hf, const float *hw, int64_t cap, float e, int fg) {
    int64_t best = -1;
    double gap = INFINITY;
    for (int64_t i = 0; i < cap; i++) {
        if ((hf[i] != 0) == (fg != 0)) {
            double d = fabs((double)hv[i] - (double)e);
            if (d < gap) {
                gap = d;
                best = i;
            }
        }
    }
    return best >= 0 ? hw[best] : 0.0f;
}

/* One class of one softmax backward block, from its decoded elements: the error ev[j], the foreground flag
 * fgv[j], the bin kb[j] (-1 where ignored), the table cell (2·bin + foreground) and the probability pv[j] as
 * the kept errors give it.  Writes d loss / d p into gc (the group's table entries scaled by sg, or the
 * exact head's weight for elements in bins >= cg; 0 where ignored) and adds p · d loss / d p to dot, with
 * fused multiply-adds, as PyTorch's softmax backward rounds it.  Both softmax backwards call it. */
static inline void class_gradient(const float *ev, const int32_t *fgv, const int32_t *kb, const int32_t *cell,
                                  const float *pv, int32_t top, const float *tg, float sg, int64_t cg,
                                  const float *hv, const uint8_t *hf, const float *hw, int64_t cap, int64_t width,
                                  float *wv, float *gc, float *dot) {
    for (int64_t j = 0; j < width; j++) wv[j] = tg[cell[j]] * sg; /* as PyTorch's table * scale: one rounding */
    for (int64_t j = 0; j < width; j++) {
        float w = fgv[j] ? -wv[j] : wv[j]; /* d error / d p = -1 (foreground) or +1 (background) */
        w = kb[j] >= 0 ? w : 0.0f;
        gc[j] = w;
        dot[j] = fmaf(pv[j], w, dot[j]);
    }
    if (top >= cg) { /* elements of the exact head (their table entries are 0): few, so each run of 16
                      * elements is first tested at once (a vector comparison) and searched only if one is */
        for (int64_t j0 = 0; j0 < width; j0 += 16) {
            const int64_t j1 = min64(width, j0 + 16);
            int any = 0;
            for (int64_t j = j0; j < j1; j++) any |= kb[j] >= cg;
            if (!any) continue;
            for (int64_t j = j0; j < j1; j++) {
                if (kb[j] >= cg) {
                    float w = head_weight(hv, hf, hw, cap, ev[j], fgv[j]);
                    w = fgv[j] ? -w : w;
                    gc[j] = w;
                    dot[j] = fmaf(pv[j], w, dot[j]);
                }
            }
        }
    }
}


/* The softmax backwards work on spans of `span` pixels (a multiple of BLOCK) of one image: class by class
 * over the whole span (phase 1: each element's weight from its class's table, written into the gradient,
 * and Σ_k p_k g_k accumulated per pixel in `dot`), then once more over the span (phase 2: the softmax
 * derivative).  With many classes the tables (32 KB each at the default bins) do not fit the caches
 * together, and a class's random table reads over a long span reuse its lines where a 256-pixel block
 * would fetch most of the table again for every block; with few classes span = BLOCK.  The span changes
 * no result bit: each pixel's dot still adds its classes in order. */

/* args: x, t, B, C, N, ignore, use_ignore, code, per_image, lo, per_octave, half, inv, table ([G][2][K]),
 * cut, head_values, head_fg, head_w, capacity, grad, scale, span, stream, rag.  Units: (image, span of pixels).
 * scale: [G] float32, each group's upstream gradient, applied to its table entries here (so that the
 * caller makes no scaled copy of the table), or 0 for a table that is already scaled.
 *
 * Recomputes each block's probabilities and errors from the scores (nothing of the size of the input is
 * kept between forward and backward), looks the weights up in the table (or the head) and applies the
 * softmax derivative: d/dx_c = p_c (g_c - Σ_k p_k g_k) with g_c = ∓w_c.  The same code as pass 1 on the
 * same numbers gives the same errors, and the probability is then taken as the kept errors give it
 * (1 - e for the foreground), so the gradient is the same bits as softmax_backward_kept's. */
CLONES void softmax_backward(const int64_t *a, int64_t u0, int64_t u1) {
    const float *x = (const float *)a[0];
    const int64_t *t = (const int64_t *)a[1];
    const int64_t C = a[3], N = a[4], ignore = a[5];
    const int use_ignore = (int)a[6], from_logits = a[7] == SOFTMAX, per_image = (int)a[8];
    const binning_t bn = {(int32_t)a[9], (int32_t)a[10], (int32_t)a[11]};
    const float *inv = (const float *)a[12];
    const float *table = (const float *)a[13];
    const int64_t *cut = (const int64_t *)a[14];
    const float *hv = (const float *)a[15];
    const uint8_t *hf = (const uint8_t *)a[16];
    const float *hw = (const float *)a[17];
    const int64_t cap = a[18];
    float *grad = (float *)a[19];
    const float *scale = (const float *)a[20]; /* per group: the upstream gradient of its loss (0: none) */
    const int64_t span = a[21];
    const int stream = (int)a[22] && from_logits; /* gradient rows through a span buffer, streamed out */
    const int64_t *rag = (const int64_t *)a[23];
    const int64_t num_bins = 2 * bn.half, nspans = (N + span - 1) / span;
    float *p = malloc(sizeof(float) * (size_t)(C * span)); /* [C][span] */
    float *gbuf = stream ? span_buffer(C, span) : NULL;
    float *den = malloc(sizeof(float) * (size_t)span), *dot = malloc(sizeof(float) * (size_t)span);
    int32_t *lab = malloc(sizeof(int32_t) * (size_t)span);
    float wv[BLOCK], mx[BLOCK], ev[BLOCK];
    int32_t kb[BLOCK], cell[BLOCK], fgv[BLOCK];
    int64_t warm = -1; /* the image whose tables this thread has fetched (warm_tables) */
    for (int64_t unit = u0; unit < u1; unit++) {
        const int64_t b = unit / nspans, s0 = (unit - b * nspans) * span;
        const int64_t swidth = min64(N, s0 + span) - s0;
        if (per_image) warm_tables(table, cut, b, C, num_bins, &warm);
        for (int64_t i0 = 0; i0 < swidth; i0 += BLOCK) {
            const int64_t width = min64(BLOCK, swidth - i0);
            block_probabilities(x, C, N, b, s0 + i0, width, from_logits, p + i0, span, mx, den + i0, NULL);
        }
        const int64_t *tb = t + b * N + s0;
        for (int64_t j = 0; j < swidth; j++) lab[j] = (use_ignore && tb[j] == ignore) ? -1 : (int32_t)tb[j];
        for (int64_t j = 0; j < swidth; j++) dot[j] = 0.0f;
        for (int64_t c = 0; c < C; c++) {
            const int64_t g = group_of(rag, per_image, b, C, c);
            const float *restrict tg = table + g * num_bins * 2;
            const float inv_g = inv[g], sg = scale != NULL ? scale[g] : 1.0f;
            float *restrict out = stream ? gbuf + c * span : grad + (b * C + c) * N + s0;
            if (cut[g] < 0) { /* a group forward left out (group_tables' skip): no gradient from it */
                for (int64_t j = 0; j < swidth; j++) {
                    const int fg = lab[j] == (int32_t)c;
                    const float pr = p[c * span + j] * den[j];
                    const float e = lab[j] >= 0 ? class_error(pr, fg) : 0.0f;
                    p[c * span + j] = fg ? 1.0f - e : e; /* as below, for the softmax derivative */
                    out[j] = 0.0f;
                }
                continue;
            }
            for (int64_t i0 = 0; i0 < swidth; i0 += BLOCK) {
                const int64_t width = min64(BLOCK, swidth - i0);
                float *restrict pc = p + c * span + i0;
                const float *restrict dn = den + i0;
                const int32_t *restrict lb = lab + i0;
                int32_t top = 0;
                for (int64_t j = 0; j < width; j++) {
                    int fg = lb[j] == (int32_t)c;
                    float pr = pc[j] * dn[j];
                    float e = class_error(pr, fg); /* as pass 1 */
                    e = lb[j] >= 0 ? e : 0.0f;
                    ev[j] = e;
                    fgv[j] = fg;
                    pc[j] = fg ? 1.0f - e : e; /* the probability as the kept errors give it: the same bits */
                    int32_t k = bin_of(e, inv_g, bn.lo, bn.per_octave, bn.half);
                    kb[j] = lb[j] >= 0 ? k : -1;
                    cell[j] = CELL(k, fg, num_bins);
                    top = kb[j] > top ? kb[j] : top;
                }
                class_gradient(ev, fgv, kb, cell, pc, top, tg, sg, cut[g], hv + g * cap, hf + g * cap, hw + g * cap,
                               cap, width, wv, out + i0, dot + i0);
            }
        }
        if (!from_logits) continue; /* the gradient with respect to the probabilities: written */
        for (int64_t c = 0; c < C; c++) {
            const float *restrict pc = p + c * span;
            float *restrict out = grad + (b * C + c) * N + s0;
            float *restrict gc = stream ? gbuf + c * span : out; /* the span buffer, then streamed out */
            for (int64_t j = 0; j < swidth; j++) gc[j] = pc[j] * (gc[j] - dot[j]);
            if (stream) stream_copy((int32_t *)out, (const int32_t *)gc, swidth);
        }
    }
    stream_fence();
    free(gbuf);
    free(p);
    free(den);
    free(dot);
    free(lab);
}

/* args: bits, B, C, N, code, per_image, lo, per_octave, half, inv, table ([G][2][K]), cut, head_values,
 * head_fg, head_w, capacity, grad, scale, span, stream, rag (as softmax_backward's).  Units: (image, span
 * of pixels).
 *
 * From the signed errors that forward kept: a probability is e (background) or 1 - e (foreground), so no
 * exponential is recomputed (the default; softmax_backward recomputes instead and keeps nothing). */
CLONES void softmax_backward_kept(const int64_t *a, int64_t u0, int64_t u1) {
    const int32_t *bits = (const int32_t *)a[0];
    const int64_t C = a[2], N = a[3];
    const int from_logits = a[4] == SOFTMAX, per_image = (int)a[5];
    const binning_t bn = {(int32_t)a[6], (int32_t)a[7], (int32_t)a[8]};
    const float *inv = (const float *)a[9];
    const float *table = (const float *)a[10];
    const int64_t *cut = (const int64_t *)a[11];
    const float *hv = (const float *)a[12];
    const uint8_t *hf = (const uint8_t *)a[13];
    const float *hw = (const float *)a[14];
    const int64_t cap = a[15];
    float *grad = (float *)a[16];
    const float *scale = (const float *)a[17]; /* per group: the upstream gradient of its loss (0: none) */
    const int64_t span = a[18];
    const int stream = (int)a[19] && from_logits; /* gradient rows through a span buffer, streamed out */
    const int64_t *rag = (const int64_t *)a[20];
    const int64_t num_bins = 2 * bn.half, nspans = (N + span - 1) / span;
    float *dot = malloc(sizeof(float) * (size_t)span);
    float *gbuf = stream ? span_buffer(C, span) : NULL;
    float wv[BLOCK], ev[BLOCK], pv[BLOCK];
    int32_t kb[BLOCK], cell[BLOCK], fgv[BLOCK];
    int64_t warm = -1; /* the image whose tables this thread has fetched (warm_tables) */
    for (int64_t unit = u0; unit < u1; unit++) {
        const int64_t b = unit / nspans, s0 = (unit - b * nspans) * span;
        const int64_t swidth = min64(N, s0 + span) - s0;
        if (per_image) warm_tables(table, cut, b, C, num_bins, &warm);
        const int64_t nb = (unit + 1) / nspans, ns0 = (unit + 1 - nb * nspans) * span; /* the next unit */
        const int64_t next_width = unit + 1 < u1 ? min64(min64(N, ns0 + span) - ns0, BLOCK) : 0;
        for (int64_t j = 0; j < swidth; j++) dot[j] = 0.0f;
        for (int64_t c = 0; c < C; c++) {
            const int64_t g = group_of(rag, per_image, b, C, c);
            const float *restrict tg = table + g * num_bins * 2;
            const float inv_g = inv[g], sg = scale != NULL ? scale[g] : 1.0f;
            float *restrict out = stream ? gbuf + c * span : grad + (b * C + c) * N + s0;
            prefetch(bits + (nb * C + c) * N + ns0, next_width * 4);
            if (cut[g] < 0) { /* a group forward left out (group_tables' skip): no gradient from it */
                for (int64_t j = 0; j < swidth; j++) out[j] = 0.0f;
                continue;
            }
            for (int64_t i0 = 0; i0 < swidth; i0 += BLOCK) {
                const int64_t width = min64(BLOCK, swidth - i0);
                const int32_t *restrict src = bits + (b * C + c) * N + s0 + i0;
                int32_t top = 0;
                for (int64_t j = 0; j < width; j++) { /* decoded: error, flag, bin (-1 where ignored), probability */
                    const int32_t sj = src[j];
                    const float e = magnitude(sj);
                    const int fg = sj < 0, valid = sj != IGNORED;
                    const int32_t k = bin_of(e, inv_g, bn.lo, bn.per_octave, bn.half);
                    ev[j] = e;
                    fgv[j] = fg;
                    pv[j] = fg ? 1.0f - e : e;
                    kb[j] = valid ? k : -1;
                    cell[j] = CELL(k, fg, num_bins);
                    top = kb[j] > top ? kb[j] : top;
                }
                class_gradient(ev, fgv, kb, cell, pv, top, tg, sg, cut[g], hv + g * cap, hf + g * cap, hw + g * cap,
                               cap, width, wv, out + i0, dot + i0);
            }
        }
        if (!from_logits) continue; /* the gradient with respect to the probabilities: written */
        for (int64_t c = 0; c < C; c++) {
            const int32_t *restrict src = bits + (b * C + c) * N + s0;
            float *restrict out = grad + (b * C + c) * N + s0;
            float *restrict gc = stream ? gbuf + c * span : out;
            for (int64_t j = 0; j < swidth; j++) {
                float e = magnitude(src[j]);
                gc[j] = (src[j] < 0 ? 1.0f - e : e) * (gc[j] - dot[j]);
            }
            if (stream) stream_copy((int32_t *)out, (const int32_t *)gc, swidth);
        }
    }
    stream_fence();
    free(gbuf);
    free(dot);
}

/* args: x, t, B, C, N, ignore, use_ignore, code, per_image, lo, per_octave, half, inv, table, cut,
 * head_values, head_fg, head_w, capacity, grad, scale, rag (as softmax_backward's).  Units: (row, block),
 * recomputing the errors. */
CLONES void binary_backward(const int64_t *a, int64_t u0, int64_t u1) {
    const float *x = (const float *)a[0];
    const int64_t *t = (const int64_t *)a[1];
    const int64_t C = a[3], N = a[4], ignore = a[5];
    const int use_ignore = (int)a[6], code = (int)a[7], per_image = (int)a[8];
    const binning_t bn = {(int32_t)a[9], (int32_t)a[10], (int32_t)a[11]};
    const float *inv = (const float *)a[12];
    const float *table = (const float *)a[13];
    const int64_t *cut = (const int64_t *)a[14];
    const float *hv = (const float *)a[15];
    const uint8_t *hf = (const uint8_t *)a[16];
    const float *hw = (const float *)a[17];
    const int64_t cap = a[18];
    float *grad = (float *)a[19];
    const float *scale = (const float *)a[20]; /* per group: the upstream gradient of its loss (0: none) */
    const int64_t *rag = (const int64_t *)a[21];
    const int64_t num_bins = 2 * bn.half, nblocks = (N + BLOCK - 1) / BLOCK;
    float ev[BLOCK], dev[BLOCK], wv[BLOCK];
    int32_t kb[BLOCK], cell[BLOCK], fgv[BLOCK];
    for (int64_t unit = u0; unit < u1; unit++) {
        const int64_t row = unit / nblocks, i0 = (unit - row * nblocks) * BLOCK;
        const int64_t width = min64(N, i0 + BLOCK) - i0;
        const int64_t b = row / C, c = row - b * C;
        const int64_t g = group_of(rag, per_image, b, C, c);
        const float *restrict tg = table + g * num_bins * 2;
        const float sg = scale != NULL ? scale[g] : 1.0f;
        const float inv_g = inv[g];
        const float *restrict xc = x + row * N + i0;
        const int64_t *restrict tc = t + row * N + i0;
        float *restrict out = grad + row * N + i0;
        const int64_t cg = cut[g];
        int32_t top = 0;
        /* Errors and their derivatives, one loop per surrogate (the code is fixed for a call: a loop with
         * no branch on it vectorizes, where binary_error's branches kept it scalar), then the bins. */
        if (code == HINGE) {
            for (int64_t j = 0; j < width; j++) binary_error_into(xc[j], tc[j] == 1, HINGE, ev + j, dev + j);
        } else if (code == SIGMOID) {
            for (int64_t j = 0; j < width; j++) binary_error_into(xc[j], tc[j] == 1, SIGMOID, ev + j, dev + j);
        } else {
            for (int64_t j = 0; j < width; j++) binary_error_into(xc[j], tc[j] == 1, SIGMOID_PROBS, ev + j, dev + j);
        }
        for (int64_t j = 0; j < width; j++) {
            int fg = tc[j] == 1;
            int32_t k = bin_of(ev[j], inv_g, bn.lo, bn.per_octave, bn.half);
            fgv[j] = fg;
            kb[j] = (use_ignore && tc[j] == ignore) ? -1 : k;
            cell[j] = CELL(k, fg, num_bins);
            top = kb[j] > top ? kb[j] : top;
        }
        for (int64_t j = 0; j < width; j++) wv[j] = tg[cell[j]] * sg;
        if (top >= cg) { /* the exact head's elements, a run of 16 tested at once */
            for (int64_t j0 = 0; j0 < width; j0 += 16) {
                const int64_t j1 = min64(width, j0 + 16);
                int any = 0;
                for (int64_t j = j0; j < j1; j++) any |= kb[j] >= cg;
                if (!any) continue;
                for (int64_t j = j0; j < j1; j++)
                    if (kb[j] >= cg) wv[j] = head_weight(hv + g * cap, hf + g * cap, hw + g * cap, cap, ev[j], fgv[j]);
            }
        }
        for (int64_t j = 0; j < width; j++) out[j] = kb[j] >= 0 ? wv[j] * dev[j] : 0.0f;
    }
}

/* ------------------------------------------------------------------------------------------------ driver */

typedef void (*kernel_fn)(const int64_t *, int64_t, int64_t);
typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);

static const kernel_fn KERNELS[] = {softmax_errors,   binary_errors,   group_tables,          histogram_rows,
                                    head_rows,        tables_range,    softmax_backward,      binary_backward,
                                    softmax_backward_kept, send_rows, global_tables};
#define NUM_KERNELS ((int)(sizeof(KERNELS) / sizeof(KERNELS[0])))
/* How many int64 arguments each kernel of KERNELS reads (the length of its args array). */
static const int ARITY[] = {18, 15, 23, 11, 16, 10, 24, 22, 21, 13, 14};
_Static_assert(sizeof(ARITY) / sizeof(ARITY[0]) == sizeof(KERNELS) / sizeof(KERNELS[0]), "one arity per kernel");

typedef struct {
    kernel_fn fn;
    const int64_t *args;
    int64_t units, tasks;
    int64_t next; /* the next task to claim (atomic) */
} job_t;

static void job_body(void *p) {
    job_t *job = p;
    for (;;) {
        int64_t k = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (k >= job->tasks) return;
        int64_t u0 = job->units * k / job->tasks, u1 = job->units * (k + 1) / job->tasks;
        if (u0 < u1) job->fn(job->args, u0, u1);
    }
}

int lovasz_num_kernels(void) { return NUM_KERNELS; }

/* The argument count of kernel k (-1 for no such kernel); kernels_native.py compares it with its own. */
int lovasz_kernel_arity(int k) { return k >= 0 && k < NUM_KERNELS ? ARITY[k] : -1; }

/* The surrogate codes this library was written for, in the order softmax, probs, sigmoid, sigmoid_probs,
 * hinge (kernels_native.py compares them with lovasz/surrogates.py when it loads the library). */
void lovasz_surrogate_codes(int32_t *out) {
    out[0] = SOFTMAX;
    out[1] = PROBS;
    out[2] = SIGMOID;
    out[3] = SIGMOID_PROBS;
    out[4] = HINGE;
}

/* Pixels per block, the unit of the backward kernels (their unit count is images (or rows) × blocks). */
int lovasz_block(void) { return BLOCK; }

#ifndef LOVASZ_SOURCE_DIGEST
#define LOVASZ_SOURCE_DIGEST "" /* built without setup.py: no record of the source */
#endif

/* The first 16 hex digits of the SHA-256 of the source this library was built from (setup.py). */
const char *lovasz_source_digest(void) { return LOVASZ_SOURCE_DIGEST; }

/* Runs kernel `kernel` over units u0..u1 on the calling thread. */
int lovasz_run_range(int kernel, const int64_t *args, int64_t u0, int64_t u1) {
    if (kernel < 0 || kernel >= NUM_KERNELS) return -1;
    if (u0 < u1) KERNELS[kernel](args, u0, u1);
    return 0;
}

/* Runs kernel `kernel` over its `units` units split into `tasks` contiguous ranges, on `workers` threads
 * of the OpenMP team of `gomp_parallel` (GOMP_parallel of PyTorch's runtime), or on the calling thread when
 * it is NULL or workers is 1.  Threads claim ranges in turn; each range writes its own outputs. */
int lovasz_run(int kernel, const int64_t *args, int64_t units, int64_t tasks, int64_t workers, void *gomp_parallel) {
    if (kernel < 0 || kernel >= NUM_KERNELS) return -1;
    if (units <= 0) return 0;
    if (tasks < 1) tasks = 1;
    if (tasks > units) tasks = units;
    job_t job = {KERNELS[kernel], args, units, tasks, 0};
    if (gomp_parallel == NULL || workers <= 1 || tasks == 1) {
        KERNELS[kernel](args, 0, units);
        return 0;
    }
    ((gomp_parallel_fn)gomp_parallel)(job_body, &job, (unsigned)workers, 0);
    return 0;
}

/* setuptools builds this file as an extension module; it is loaded with ctypes, never imported. */
void *PyInit__native(void) { return NULL; }
