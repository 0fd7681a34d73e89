/* Micro-kernels the Cortex-M backend's TIR kernels call through T.call_extern (its int8.py).
 *
 * Integer dot products of uint8 activations with int8 weights, the one thing the Cortex-M's
 * DSP extension does fast: __smlad multiplies two pairs of int16 and adds both products to an
 * accumulator. The int8 weights stay int8 in flash (in the order each micro-kernel reads
 * them); both operands are widened into the same pairs:
 * - fully connected layers: the input widened once into (x0, x2), (x1, x3) per 4 bytes
 *   (utvm_widen_u8_x4), each weight word extended by __sxtb16 and its ror-8 twin
 *   (utvm_dense_c4); unpooled convolutions on uint8 widen both in the inner loop;
 * - convolutions reuse each weight over many pixels: they are widened once into natural pairs
 *   (w0, w1), (w2, w3) in arena scratch (utvm_widen_s8x4_pairs, from flash stored in the
 *   order __sxtb16 extracts; utvm_widen_s8_s16_pairs for the unpooled path), and the
 *   activations are int16 pairs too: a convolution's int16 output, rows widened by
 *   utvm_widen_u8_s16, or one channel's rows paired across rows by utvm_rowpairs_u8.
 *
 * Targets without the DSP extension (the host stand-in, native64) get plain loops over the
 * same data layouts. Integer sums are exact in any order, so both give the same bits.
 *
 * Pointers come as (base, element offset) pairs: TVM 0.27's AttachGlobalSymbol cannot rewrite
 * a module whose call_extern arguments are address_of() calls, so TIR passes buffer data.
 *
 * Conv shapes: a pixel's window is `rows` segments of `len` consecutive activation bytes,
 * `x_row` bytes apart; the next pixel starts `x_pix` bytes later. A channel's weights are
 * its window's rows, packed (`len` apart); channels are `w_ch` bytes apart.
 */
#ifndef UTVM_CORTEX_M_MICROKERNELS_H_
#define UTVM_CORTEX_M_MICROKERNELS_H_

#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define UTVM_DSP 1
#else
#define UTVM_DSP 0
#endif

/* The hot loops in assembly take their shapes as immediates, which only exist once gcc has
 * propagated the constant arguments: unoptimized builds get the C loops. */
#if UTVM_DSP && defined(__OPTIMIZE__)
#define UTVM_ASM 1
#else
#define UTVM_ASM 0
#endif

#define UTVM_INLINE static inline __attribute__((always_inline))
/* unused: a model may not need every helper, and -Wall must stay quiet */
#define UTVM_NOINLINE static __attribute__((noinline, unused))

UTVM_INLINE uint32_t utvm_load32(const void* p) {
  uint32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* Weights of `channels` output channels (w_ch bytes apart, rows x len each) as int16 pairs
 * (w[2j], w[2j + 1]), zero past len: out[(c * rows + r) * ceil(len / 2) + j]. For the int16
 * input path, where the activations are already pairs in this order. */
UTVM_NOINLINE int32_t utvm_widen_s8_s16_pairs(int8_t* w_base, int32_t w_off, int32_t channels, int32_t w_ch,
                                       int32_t rows, int32_t len, uint32_t* out) {
  const int32_t pairs = (len + 1) / 2;
  for (int32_t c = 0; c < channels; ++c) {
    for (int32_t r = 0; r < rows; ++r) {
      const int8_t* w = w_base + w_off + c * w_ch + r * len;
      for (int32_t j = 0; j < pairs; ++j) {
        int32_t hi = 2 * j + 1 < len ? w[2 * j + 1] : 0;
        *out++ = (uint16_t)(int16_t)w[2 * j] | ((uint32_t)(uint16_t)(int16_t)hi << 16);
      }
    }
  }
  return 0;
}

/* out[i] = x[i], uint8 → int16, for i < n. */
UTVM_NOINLINE int32_t utvm_widen_u8_s16(uint8_t* x_base, int32_t x_off, int32_t n, int16_t* out) {
  const uint8_t* x = x_base + x_off;
  int32_t i = 0;
#if UTVM_DSP
  const int32_t whole = n & ~3;
  for (; i < whole; i += 4) {
    uint32_t v = utvm_load32(x + i);
    uint32_t even = __uxtb16(v), odd = __uxtb16(v >> 8); /* (x0, x2), (x1, x3) */
    uint32_t pair01 = (even & 0xFFFFu) | (odd << 16), pair23 = (odd & 0xFFFF0000u) | (even >> 16);
    memcpy(out + i, &pair01, 4);
    memcpy(out + i + 2, &pair23, 4);
  }
#endif
  for (; i < n; ++i) {
    out[i] = x[i];
  }
  return 0;
}

/* 0201's requantization of an int32 sum: clip(rint(float(acc) * m) + zp, lo, hi) with float
 * operations (0 <= lo <= hi <= 255). On the DSP: one rounding conversion (the FPSCR's
 * round-to-nearest-even, as nearbyintf), saturating, then a saturating add and an integer
 * clip. The same value: while |rint| < 2^24 the float add is exact, and beyond it both sides
 * clip to the same bound. lo and hi are constants: the clip costs nothing at 0 and 255. */
#if UTVM_DSP
UTVM_INLINE uint8_t utvm_requantize(int32_t acc, float m, int32_t zp, int32_t lo, int32_t hi) {
  float f = (float)acc * m, t;
  int32_t r;
  __asm__("vcvtr.s32.f32 %[t], %[f]\n\tvmov %[r], %[t]" : [t] "=&t"(t), [r] "=r"(r) : [f] "t"(f));
  r = __usat(__qadd(r, zp), 8);
  r = hi < 255 && r > hi ? hi : r;
  return (uint8_t)(lo > 0 && r < lo ? lo : r);
}
#else
float nearbyintf(float);
UTVM_INLINE uint8_t utvm_requantize(int32_t acc, float m, int32_t zp, int32_t lo, int32_t hi) {
  float f = nearbyintf((float)acc * m) + (float)zp;
  f = f < (float)hi ? f : (float)hi;
  f = f > (float)lo ? f : (float)lo;
  return (uint8_t)f;
}
#endif

/* The same with a per-channel multiplier, given as the bits of its float32 (it sits in the
 * kernel's int32 bias constant, after the biases). */
UTVM_INLINE uint8_t utvm_requantize_bits(int32_t acc, int32_t m_bits, int32_t zp, int32_t lo, int32_t hi) {
  float m;
  memcpy(&m, &m_bits, sizeof m);
  return utvm_requantize(acc, m, zp, lo, hi);
}

/* Weights stored for the DSP: each word of 4 bytes [b0 b1 b2 b3] holds the two int16 pairs
 * (b0, b2) and (b1, b3), the order __sxtb16 and its ror-8 twin extract, so widening is one load
 * and two extends per 2 pairs (int8.py writes the flash constants in this order):
 * out[2m] = (w[4m], w[4m + 2]), out[2m + 1] = (w[4m + 1], w[4m + 3]) for m < words. */
UTVM_NOINLINE int32_t utvm_widen_s8x4_pairs(int8_t* w_base, int32_t w_off, int32_t words, uint32_t* out) {
  const int8_t* w = w_base + w_off;
  for (int32_t m = 0; m < words; ++m) {
#if UTVM_DSP
    uint32_t v = utvm_load32(w + 4 * m);
    uint32_t lo = __sxtb16(v), hi;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(hi) : "r"(v));
    out[2 * m] = lo;
    out[2 * m + 1] = hi;
#else
    out[2 * m] = (uint16_t)(int16_t)w[4 * m] | ((uint32_t)(uint16_t)(int16_t)w[4 * m + 2] << 16);
    out[2 * m + 1] = (uint16_t)(int16_t)w[4 * m + 1] | ((uint32_t)(uint16_t)(int16_t)w[4 * m + 3] << 16);
#endif
  }
  return 0;
}

/* o[c] = (a[c], a[c + step]) as a pair of int16, for c < n (reads a[n - 1 + step] at most). */
UTVM_INLINE void utvm_pair_bytes(const uint8_t* a, int32_t step, int32_t n, uint32_t* o) {
  int32_t c = 0;
#if UTVM_DSP
  const int32_t whole = n & ~3;
  for (; c < whole; c += 4) {
    uint32_t va = utvm_load32(a + c), vb = utvm_load32(a + c + step), ae, ao, be, bo, p0, p1, p2, p3;
    __asm__("uxtb16 %[ae], %[va]\n\t"
            "uxtb16 %[ao], %[va], ror #8\n\t"
            "uxtb16 %[be], %[vb]\n\t"
            "uxtb16 %[bo], %[vb], ror #8\n\t"
            "pkhbt %[p0], %[ae], %[be], lsl #16\n\t"
            "pkhbt %[p1], %[ao], %[bo], lsl #16\n\t"
            "pkhtb %[p2], %[be], %[ae], asr #16\n\t"
            "pkhtb %[p3], %[bo], %[ao], asr #16"
            : [ae] "=&r"(ae), [ao] "=&r"(ao), [be] "=&r"(be), [bo] "=&r"(bo), [p0] "=&r"(p0), [p1] "=&r"(p1),
              [p2] "=&r"(p2), [p3] "=&r"(p3)
            : [va] "r"(va), [vb] "r"(vb));
    o[c] = p0;
    o[c + 1] = p1;
    o[c + 2] = p2;
    o[c + 3] = p3;
  }
#endif
  for (; c < n; ++c) {
    o[c] = (uint32_t)a[c] | ((uint32_t)a[c + step] << 16);
  }
}

/* One input channel: the rows a pooling row of a kh x kw convolution reads (kh + 1 rows of
 * `width` uint8 from x), as words of int16 pairs, `width` words per buffer:
 * - buffer i < 2 * (kh / 2): vertical pairs (row i, row i + 1) of each column;
 * - kh odd, buffers kh - 1 and kh: horizontal pairs (column c, column c + 1) of rows kh - 1
 *   and kh (the last column's second half is 0; it meets a zero weight).
 * Kernel rows 2i and 2i + 1 then meet their taps of one column in one pair, and the odd last
 * row its taps two by two, so a 5x5 window is 13 pairs, not 5 rows of 3 (one half empty). */
UTVM_NOINLINE int32_t utvm_rowpairs_u8(uint8_t* x_base, int32_t x_off, int32_t width, int32_t kh, uint32_t* out) {
  const uint8_t* x = x_base + x_off;
  const int32_t vertical = 2 * (kh / 2);
  for (int32_t i = 0; i < kh + (kh & 1); ++i) {
    /* one loop for both kinds, so the pairing code is there once */
    const int32_t across = i >= vertical;
    const uint8_t* a = x + (across ? kh - 1 + i - vertical : i) * width;
    uint32_t* o = out + i * width;
    utvm_pair_bytes(a, across ? 1 : width, width - across, o);
    if (across) {
      o[width - 1] = a[width - 1];
    }
  }
  return 0;
}

/* acc[0], acc[1]: the largest of a pooling window's 4 sums of each of 2 channels. */
UTVM_INLINE void utvm_pool_max(int32_t a0, int32_t a1, int32_t a2, int32_t a3, int32_t b0, int32_t b1, int32_t b2,
                               int32_t b3, int32_t* acc) {
  a0 = a0 > a1 ? a0 : a1;
  a2 = a2 > a3 ? a2 : a3;
  b0 = b0 > b1 ? b0 : b1;
  b2 = b2 > b3 ? b2 : b3;
  acc[0] = a0 > a2 ? a0 : a2;
  acc[1] = b0 > b2 ? b0 : b2;
}

/* The pooled convolution of one input channel on the buffers of utvm_rowpairs_u8: the 4 pixels
 * of the pooling window at column x (x, x + 1 in the top row, the same in the row below) x 2
 * channels, weights as widened pairs (channel 0, channel 1) per tap pair, in the order the
 * window meets them (rows 2i / 2i + 1 column by column, then the odd last row two by two);
 * acc[c] = the largest of channel c's 4 sums. On the DSP a tap pair is 3 double-word loads
 * (the 2 weights, the 2 top pixels, the 2 bottom pixels) and 8 __smlad, in assembly: gcc 12
 * spills the loop's state out of the 14 registers it needs. width + kw must stay below 256
 * (the loads' offsets; int8.py checks). */
UTVM_INLINE int32_t utvm_pool_pairs_p4c2(uint32_t* buf, int32_t x, int32_t width, uint32_t* w_base, int32_t w_off,
                                         int32_t kh, int32_t kw, int32_t* acc) {
  const uint32_t* w = w_base + w_off;
  const uint32_t* top = buf + x;
  int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
#if UTVM_ASM
#define UTVM_PAIRS_STEP(advance)                              \
  "ldrd %[wa], %[wb], [%[w]], #8\n\t"                         \
  "ldrd %[t0], %[t1], [%[top], %[below]]\n\t"                 \
  "smlad %[a2], %[t0], %[wa], %[a2]\n\t"                      \
  "smlad %[b2], %[t0], %[wb], %[b2]\n\t"                      \
  "smlad %[a3], %[t1], %[wa], %[a3]\n\t"                      \
  "smlad %[b3], %[t1], %[wb], %[b3]\n\t"                      \
  "ldrd %[t0], %[t1], [%[top]], #" advance "\n\t"             \
  "smlad %[a0], %[t0], %[wa], %[a0]\n\t"                      \
  "smlad %[b0], %[t0], %[wb], %[b0]\n\t"                      \
  "smlad %[a1], %[t1], %[wa], %[a1]\n\t"                      \
  "smlad %[b1], %[t1], %[wb], %[b1]\n\t"
  const uint32_t* w_end = w + 2 * (kh / 2) * kw; /* where the row pairs end */
  uint32_t wa, wb, t0, t1;
  __asm__(
      ".if %c[row_pairs]\n"
      "1:\n\t"
      ".rept %c[kw]\n\t" UTVM_PAIRS_STEP("4") ".endr\n\t"
      "add %[top], %[top], %[skip]\n\t"
      "ldr %[t0], %[w_end]\n\t"
      "cmp %[w], %[t0]\n\t"
      "bne 1b\n"
      ".endif\n"
      ".rept %c[last_row]\n\t" UTVM_PAIRS_STEP("8") ".endr\n"
      : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [b0] "+r"(b0), [b1] "+r"(b1),
        [b2] "+r"(b2), [b3] "+r"(b3), [wa] "=&r"(wa), [wb] "=&r"(wb), [t0] "=&r"(t0), [t1] "=&r"(t1),
        [top] "+r"(top), [w] "+r"(w)
      : [below] "i"(4 * width), [skip] "i"(4 * (2 * width - kw)), [kw] "i"(kw), [row_pairs] "i"(kh / 2),
        [last_row] "i"((kh & 1) * ((kw + 1) / 2)), [w_end] "m"(w_end)
      : "cc", "memory");
#undef UTVM_PAIRS_STEP
#else
#define UTVM_PAIR_DOT(v, p) ((int32_t)(int16_t)((v) & 0xFFFFu) * (int16_t)((p) & 0xFFFFu) + \
                             (int32_t)(int16_t)((v) >> 16) * (int16_t)((p) >> 16))
  for (int32_t step = 0; step < (kh / 2) * kw + (kh & 1) * ((kw + 1) / 2); ++step) {
    const int32_t in_pairs = step < (kh / 2) * kw;
    const uint32_t* t = in_pairs ? top + (step / kw) * 2 * width + step % kw
                                 : top + (kh - 1) * width + 2 * (step - (kh / 2) * kw);
    a0 += UTVM_PAIR_DOT(t[0], w[0]);
    b0 += UTVM_PAIR_DOT(t[0], w[1]);
    a1 += UTVM_PAIR_DOT(t[1], w[0]);
    b1 += UTVM_PAIR_DOT(t[1], w[1]);
    a2 += UTVM_PAIR_DOT(t[width], w[0]);
    b2 += UTVM_PAIR_DOT(t[width], w[1]);
    a3 += UTVM_PAIR_DOT(t[width + 1], w[0]);
    b3 += UTVM_PAIR_DOT(t[width + 1], w[1]);
    w += 2;
  }
#undef UTVM_PAIR_DOT
#endif
  utvm_pool_max(a0, a1, a2, a3, b0, b1, b2, b3, acc);
  return 0;
}

/* A fully connected layer's input, widened once for all its output channels: the uint8 vector
 * x[0..n) in groups of 4, group g as the int16 pairs (x0, x2), (x1, x3) that __sxtb16 and its
 * ror-8 twin make of 4 weight bytes; the last group is padded with 0. out: 2 * ceil(n / 4) words. */
UTVM_NOINLINE int32_t utvm_widen_u8_x4(uint8_t* x, int32_t n, uint32_t* out) {
  int32_t g = 0;
#if UTVM_DSP
  for (; g < n / 4; ++g) {
    uint32_t v = utvm_load32(x + 4 * g), odd;
    __asm__("uxtb16 %0, %1, ror #8" : "=r"(odd) : "r"(v));
    out[2 * g] = __uxtb16(v);
    out[2 * g + 1] = odd;
  }
#endif
  for (int32_t i = 4 * g; i < 4 * ((n + 3) / 4); ++i) {
    /* element i of its group: word 2g + (i & 1), half (i >> 1) & 1 */
    uint16_t v = i < n ? x[i] : 0;
    memcpy((uint8_t*)out + 2 * ((i & ~3) + 2 * (i & 1) + ((i >> 1) & 1)), &v, 2);
  }
  return 0;
}

/* acc[c] = the dot product of channel c (c < nch <= 4) with the input of utvm_widen_u8_x4, over
 * `groups` groups of 4. Weights at w_base + w_off, for the nch channels of a block: group by
 * group, each channel's 4 bytes in input order (int8.py pads the rows with 0 to whole groups).
 * On the DSP, a block of 4 channels is one double-word load of the input, one 4-word load of
 * the weights, 8 extends and 8 __smlad per 16 multiply-adds. */
UTVM_NOINLINE int32_t utvm_dense_c4(uint32_t* xw, int8_t* w_base, int32_t w_off, int32_t groups, int32_t nch,
                                    int32_t* acc) {
  const int8_t* w = w_base + w_off;
#if UTVM_ASM
  if (nch == 4) {
    /* the 4-word load names its registers in ascending order */
    register uint32_t w0 __asm__("r8"), w1 __asm__("r9"), w2 __asm__("r10"), w3 __asm__("r11");
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    uint32_t x02, x13, t;
    const uint32_t* xp = xw;
    __asm__(
        "1:\n\t"
        "ldrd %[x02], %[x13], [%[x]], #8\n\t"
        "ldmia %[w]!, {%[w0], %[w1], %[w2], %[w3]}\n\t"
        "sxtb16 %[t], %[w0]\n\t"
        "smlad %[a0], %[x02], %[t], %[a0]\n\t"
        "sxtb16 %[t], %[w0], ror #8\n\t"
        "smlad %[a0], %[x13], %[t], %[a0]\n\t"
        "sxtb16 %[t], %[w1]\n\t"
        "smlad %[a1], %[x02], %[t], %[a1]\n\t"
        "sxtb16 %[t], %[w1], ror #8\n\t"
        "smlad %[a1], %[x13], %[t], %[a1]\n\t"
        "sxtb16 %[t], %[w2]\n\t"
        "smlad %[a2], %[x02], %[t], %[a2]\n\t"
        "sxtb16 %[t], %[w2], ror #8\n\t"
        "smlad %[a2], %[x13], %[t], %[a2]\n\t"
        "sxtb16 %[t], %[w3]\n\t"
        "smlad %[a3], %[x02], %[t], %[a3]\n\t"
        "sxtb16 %[t], %[w3], ror #8\n\t"
        "smlad %[a3], %[x13], %[t], %[a3]\n\t"
        "subs %[n], %[n], #1\n\t"
        "bne 1b"
        : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [x02] "=&r"(x02), [x13] "=&r"(x13),
          [t] "=&r"(t), [w0] "=&r"(w0), [w1] "=&r"(w1), [w2] "=&r"(w2), [w3] "=&r"(w3), [x] "+r"(xp),
          [w] "+r"(w), [n] "+r"(groups)
        :
        : "cc", "memory");
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
    return 0;
  }
#endif
  for (int32_t c = 0; c < nch; ++c) {
    int32_t sum = 0;
    for (int32_t g = 0; g < groups; ++g) {
      const int8_t* b = w + (g * nch + c) * 4;
      uint32_t x02 = xw[2 * g], x13 = xw[2 * g + 1];
      sum += (int32_t)(x02 & 0xFFFFu) * b[0] + (int32_t)(x13 & 0xFFFFu) * b[1] + (int32_t)(x02 >> 16) * b[2] +
             (int32_t)(x13 >> 16) * b[3];
    }
    acc[c] = sum;
  }
  return 0;
}

#if UTVM_DSP

/* The extends rotate their operand for free, but gcc 12 has no ACLE __ror and does not fold
   a rotate into __uxtb16/__sxtb16 (it emits two instructions), so these are written out. */
UTVM_INLINE uint32_t utvm_uxtb16_ror8(uint32_t v) {
  uint32_t r;
  __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}

UTVM_INLINE uint32_t utvm_sxtb16_ror8(uint32_t v) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
  return r;
}

/* acc[c * 2 + p] += window(x + p * x_pix) . channel c of w, for 2 pixels and 2 channels. */
UTVM_INLINE int32_t utvm_dot_u8s8_p2c2(uint8_t* x_base, int32_t x_off, int32_t x_pix, int32_t x_row,
                                  int8_t* w_base, int32_t w_off, int32_t w_ch, int32_t rows, int32_t len,
                                  int32_t* acc_base, int32_t acc_off) {
  const uint8_t* x = x_base + x_off;
  const int8_t* w = w_base + w_off;
  int32_t* acc = acc_base + acc_off;
  int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
  for (int32_t r = 0; r < rows; ++r) {
    const uint8_t* x0 = x + r * x_row;
    const uint8_t* x1 = x0 + x_pix;
    const int8_t* w0 = w + r * len;
    const int8_t* w1 = w0 + w_ch;
    int32_t i = 0;
    for (; i + 4 <= len; i += 4) {
      uint32_t xa = utvm_load32(x0 + i), xb = utvm_load32(x1 + i);
      uint32_t wa = utvm_load32(w0 + i), wb = utvm_load32(w1 + i);
      uint32_t xa02 = __uxtb16(xa), xb02 = __uxtb16(xb);
      uint32_t wa02 = __sxtb16(wa), wb02 = __sxtb16(wb);
      a00 = __smlad(xa02, wa02, a00);
      a01 = __smlad(xb02, wa02, a01);
      a10 = __smlad(xa02, wb02, a10);
      a11 = __smlad(xb02, wb02, a11);
      uint32_t xa13 = utvm_uxtb16_ror8(xa), xb13 = utvm_uxtb16_ror8(xb);
      uint32_t wa13 = utvm_sxtb16_ror8(wa), wb13 = utvm_sxtb16_ror8(wb);
      a00 = __smlad(xa13, wa13, a00);
      a01 = __smlad(xb13, wa13, a01);
      a10 = __smlad(xa13, wb13, a10);
      a11 = __smlad(xb13, wb13, a11);
    }
    for (; i < len; ++i) {
      int32_t xa = x0[i], xb = x1[i], wa = w0[i], wb = w1[i];
      a00 += xa * wa;
      a01 += xb * wa;
      a10 += xa * wb;
      a11 += xb * wb;
    }
  }
  acc[0] = a00;
  acc[1] = a01;
  acc[2] = a10;
  acc[3] = a11;
  return 0;
}

/* The int16 input path: acc[c * 2 + p] += window(x + p * x_pix) . channel c, for 2 pixels
 * and 2 channels; x holds int16 values whose window rows start on 4-byte boundaries, w the
 * pairs of utvm_widen_s8_s16_pairs (channel 1 right after channel 0). A row of odd length reads one
 * element past its end, which meets a zero weight. */
UTVM_INLINE int32_t utvm_dot_s16_p2c2(int16_t* x_base, int32_t x_off, int32_t x_pix, int32_t x_row,
                                      uint32_t* w, int32_t rows, int32_t pairs, int32_t* acc_base,
                                      int32_t acc_off) {
  const int16_t* x = x_base + x_off;
  int32_t* acc = acc_base + acc_off;
  int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
  for (int32_t r = 0; r < rows; ++r) {
    const uint32_t* x0 = (const uint32_t*)(const void*)(x + r * x_row);
    const uint32_t* x1 = (const uint32_t*)(const void*)(x + r * x_row + x_pix);
    const uint32_t* w0 = w + r * pairs;
    const uint32_t* w1 = w0 + rows * pairs;
#pragma GCC unroll 4
    for (int32_t j = 0; j < pairs; ++j) {
      uint32_t xa = x0[j], xb = x1[j], wa = w0[j], wb = w1[j];
      a00 = __smlad(xa, wa, a00);
      a01 = __smlad(xb, wa, a01);
      a10 = __smlad(xa, wb, a10);
      a11 = __smlad(xb, wb, a11);
    }
  }
  acc[0] = a00;
  acc[1] = a01;
  acc[2] = a10;
  acc[3] = a11;
  return 0;
}

/* A conv followed by a 2x2 max-pool, on int16 activations (a convolution's int16 output, or
 * uint8 rows widened by utvm_widen_u8_s16): the 4 pixels of a pooling window (x, x + x_pix,
 * x + x_row, x + x_row + x_pix) x 2 channels, all 8 sums in registers; writes acc[c] = the
 * largest of channel c's 4 sums. Weights at w + w_off: utvm_widen_s8x4_pairs's pairs, row by row,
 * pair by pair, channel 0's before channel 1's (one double-word load serves both). Each pair
 * of weights loaded serves 4 pixels: 13 instructions per 16 multiply-adds. In assembly, the
 * loop unrolled by a divisor of `pairs` (3 before 5: 5 costs more flash than its fewer loop
 * branches save), when the offsets fit the loads' immediates (gcc 12 runs out of registers
 * on the C loop); x_pix may be odd (3 input channels): word loads may be unaligned, which
 * the M7 allows. */
#define UTVM_UNROLL(n) ((n) % 3 == 0 ? 3 : (n) % 4 == 0 ? 4 : (n) % 2 == 0 ? 2 : 1)
UTVM_INLINE int32_t utvm_pool_s16_p4c2(int16_t* x_base, int32_t x_off, int32_t x_pix, int32_t x_row,
                                       uint32_t* w_base, int32_t w_off, int32_t rows, int32_t pairs,
                                       int32_t* acc) {
  const int16_t* x = x_base + x_off;
  const uint32_t* w = w_base + w_off;
  int32_t a0, a1, a2, a3, b0, b1, b2, b3;
#if UTVM_ASM
  if (2 * (x_row + x_pix) < 4096 && 2 * x_row >= 4 * pairs && 2 * x_row - 4 * pairs < 4096) {
    uint32_t wa, wb, t, count;
    int32_t rows_left = rows;
    __asm__(
        "movs %[a0], #0\n\t" "movs %[a1], #0\n\t" "movs %[a2], #0\n\t" "movs %[a3], #0\n\t"
        "movs %[b0], #0\n\t" "movs %[b1], #0\n\t" "movs %[b2], #0\n\t" "movs %[b3], #0\n"
        "1:\n\t"
        "movs %[count], %[chunks]\n"
        "2:\n\t"
        ".rept %c[unroll]\n\t"
        "ldrd %[wa], %[wb], [%[w]], #8\n\t"
        "ldr %[t], [%[x], %[pix]]\n\t"
        "smlad %[a1], %[t], %[wa], %[a1]\n\t"
        "smlad %[b1], %[t], %[wb], %[b1]\n\t"
        "ldr %[t], [%[x], %[row]]\n\t"
        "smlad %[a2], %[t], %[wa], %[a2]\n\t"
        "smlad %[b2], %[t], %[wb], %[b2]\n\t"
        "ldr %[t], [%[x], %[row_pix]]\n\t"
        "smlad %[a3], %[t], %[wa], %[a3]\n\t"
        "smlad %[b3], %[t], %[wb], %[b3]\n\t"
        "ldr %[t], [%[x]], #4\n\t"
        "smlad %[a0], %[t], %[wa], %[a0]\n\t"
        "smlad %[b0], %[t], %[wb], %[b0]\n\t"
        ".endr\n\t"
        "subs %[count], %[count], #1\n\t"
        "bne 2b\n\t"
        "add %[x], %[x], %[skip]\n\t"
        "ldr %[t], %[rows_left]\n\t"
        "subs %[t], %[t], #1\n\t"
        "str %[t], %[rows_left]\n\t"
        "bne 1b\n"
        : [a0] "=&r"(a0), [a1] "=&r"(a1), [a2] "=&r"(a2), [a3] "=&r"(a3), [b0] "=&r"(b0), [b1] "=&r"(b1),
          [b2] "=&r"(b2), [b3] "=&r"(b3), [wa] "=&r"(wa), [wb] "=&r"(wb), [t] "=&r"(t), [count] "=&r"(count),
          [x] "+r"(x), [w] "+r"(w), [rows_left] "+m"(rows_left)
        : [pix] "i"(2 * x_pix), [row] "i"(2 * x_row), [row_pix] "i"(2 * (x_row + x_pix)),
          [chunks] "i"(pairs / UTVM_UNROLL(pairs)), [unroll] "i"(UTVM_UNROLL(pairs)),
          [skip] "i"(2 * x_row - 4 * pairs)
        : "cc", "memory");
  } else
#endif
  {
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = 0;
    for (int32_t r = 0; r < rows; ++r) {
      const int16_t* xr = x + r * x_row;
      const uint32_t* wr = w + 2 * r * pairs;
      for (int32_t j = 0; j < pairs; ++j) {
        uint32_t wa = wr[2 * j], wb = wr[2 * j + 1], v;
        v = utvm_load32(xr + 2 * j);
        a0 = __smlad(v, wa, a0);
        b0 = __smlad(v, wb, b0);
        v = utvm_load32(xr + 2 * j + x_pix);
        a1 = __smlad(v, wa, a1);
        b1 = __smlad(v, wb, b1);
        v = utvm_load32(xr + 2 * j + x_row);
        a2 = __smlad(v, wa, a2);
        b2 = __smlad(v, wb, b2);
        v = utvm_load32(xr + 2 * j + x_row + x_pix);
        a3 = __smlad(v, wa, a3);
        b3 = __smlad(v, wb, b3);
      }
    }
  }
  utvm_pool_max(a0, a1, a2, a3, b0, b1, b2, b3, acc);
  return 0;
}

/* acc[c] += x . w[c] over len bytes, for up to 4 channels (nch) whose int8 rows are w_ch
 * apart; with nch < 4 the last row is read again into sums the caller ignores. */
UTVM_NOINLINE int32_t utvm_dot_u8s8_p1c4(uint8_t* x, int8_t* w_base, int32_t w_off, int32_t w_ch, int32_t nch,
                                    int32_t len, int32_t* acc) {
  const int8_t* w0 = w_base + w_off;
  const int8_t* w1 = w0 + (nch > 1 ? 1 : 0) * w_ch;
  const int8_t* w2 = w0 + (nch > 2 ? 2 : nch - 1) * w_ch;
  const int8_t* w3 = w0 + (nch > 3 ? 3 : nch - 1) * w_ch;
  int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int32_t i = 0;
  const int32_t whole = len & ~3;
  for (; i < whole; i += 4) {
    uint32_t xv = utvm_load32(x + i);
    uint32_t x02 = __uxtb16(xv), x13 = utvm_uxtb16_ror8(xv);
    uint32_t v0 = utvm_load32(w0 + i), v1 = utvm_load32(w1 + i);
    a0 = __smlad(x02, __sxtb16(v0), a0);
    a0 = __smlad(x13, utvm_sxtb16_ror8(v0), a0);
    a1 = __smlad(x02, __sxtb16(v1), a1);
    a1 = __smlad(x13, utvm_sxtb16_ror8(v1), a1);
    uint32_t v2 = utvm_load32(w2 + i), v3 = utvm_load32(w3 + i);
    a2 = __smlad(x02, __sxtb16(v2), a2);
    a2 = __smlad(x13, utvm_sxtb16_ror8(v2), a2);
    a3 = __smlad(x02, __sxtb16(v3), a3);
    a3 = __smlad(x13, utvm_sxtb16_ror8(v3), a3);
  }
  for (; i < len; ++i) {
    int32_t xv = x[i];
    a0 += xv * w0[i];
    a1 += xv * w1[i];
    a2 += xv * w2[i];
    a3 += xv * w3[i];
  }
  /* acc has room for 4 whatever nch is; the caller reads the first nch */
  acc[0] += a0;
  acc[1] += a1;
  acc[2] += a2;
  acc[3] += a3;
  return 0;
}

#else /* plain C over the same layouts: the reference the DSP path is tested against */

UTVM_INLINE int32_t utvm_dot_u8s8_p2c2(uint8_t* x_base, int32_t x_off, int32_t x_pix, int32_t x_row,
                                  int8_t* w_base, int32_t w_off, int32_t w_ch, int32_t rows, int32_t len,
                                  int32_t* acc_base, int32_t acc_off) {
  for (int32_t c = 0; c < 2; ++c) {
    for (int32_t p = 0; p < 2; ++p) {
      int32_t sum = 0;
      for (int32_t r = 0; r < rows; ++r) {
        for (int32_t i = 0; i < len; ++i) {
          sum += (int32_t)x_base[x_off + p * x_pix + r * x_row + i] *
                 (int32_t)w_base[w_off + c * w_ch + r * len + i];
        }
      }
      acc_base[acc_off + c * 2 + p] += sum;
    }
  }
  return 0;
}

UTVM_INLINE int32_t utvm_dot_s16_p2c2(int16_t* x_base, int32_t x_off, int32_t x_pix, int32_t x_row,
                                      uint32_t* w, int32_t rows, int32_t pairs, int32_t* acc_base,
                                      int32_t acc_off) {
  for (int32_t c = 0; c < 2; ++c) {
    for (int32_t p = 0; p < 2; ++p) {
      int32_t sum = 0;
      for (int32_t r = 0; r < rows; ++r) {
        const int16_t* xr = x_base + x_off + p * x_pix + r * x_row;
        const uint32_t* wr = w + (c * rows + r) * pairs;
        for (int32_t j = 0; j < pairs; ++j) {
          sum += xr[2 * j] * (int16_t)(wr[j] & 0xFFFFu) + xr[2 * j + 1] * (int16_t)(wr[j] >> 16);
        }
      }
      acc_base[acc_off + c * 2 + p] += sum;
    }
  }
  return 0;
}

UTVM_INLINE int32_t utvm_pool_s16_p4c2(int16_t* x_base, int32_t x_off, int32_t x_pix, int32_t x_row,
                                       uint32_t* w_base, int32_t w_off, int32_t rows, int32_t pairs,
                                       int32_t* acc) {
  /* each pixel of the window and channel as one dot product, then the largest per channel */
  for (int32_t c = 0; c < 2; ++c) {
    acc[c] = INT32_MIN;
    for (int32_t p = 0; p < 4; ++p) {
      const int16_t* x = x_base + x_off + (p / 2) * x_row + (p % 2) * x_pix;
      int32_t sum = 0;
      for (int32_t r = 0; r < rows; ++r) {
        for (int32_t j = 0; j < pairs; ++j) {
          uint32_t wv = w_base[w_off + 2 * (r * pairs + j) + c];
          sum += x[r * x_row + 2 * j] * (int16_t)(wv & 0xFFFFu) + x[r * x_row + 2 * j + 1] * (int16_t)(wv >> 16);
        }
      }
      acc[c] = sum > acc[c] ? sum : acc[c];
    }
  }
  return 0;
}

UTVM_NOINLINE int32_t utvm_dot_u8s8_p1c4(uint8_t* x, int8_t* w_base, int32_t w_off, int32_t w_ch, int32_t nch,
                                    int32_t len, int32_t* acc) {
  for (int32_t c = 0; c < nch; ++c) {
    int32_t sum = 0;
    for (int32_t i = 0; i < len; ++i) {
      sum += (int32_t)x[i] * (int32_t)w_base[w_off + c * w_ch + i];
    }
    acc[c] += sum;
  }
  return 0;
}

#endif /* UTVM_DSP */

#endif /* UTVM_CORTEX_M_MICROKERNELS_H_ */
