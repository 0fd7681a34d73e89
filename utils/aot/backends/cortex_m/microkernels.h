/* Micro-kernels the Cortex-M backend's TIR kernels call through T.call_extern (its int8.py).
 *
 * Integer dot products of uint8 activations with int8 weights, the one thing the Cortex-M's
 * DSP extension does fast: __smlad multiplies two pairs of int16 and adds both products to an
 * accumulator. The int8 weights stay in flash as they are; both operands are widened into
 * the same pairs:
 * - uint8 activations and weights used once (fully connected layers; convolutions without
 *   a pool): a word of 4 bytes becomes the pairs (x0, x2) and (x1, x3) (__uxtb16 / __sxtb16,
 *   and the same on the word rotated by 8 bits), in the inner loop;
 * - convolutions reuse each weight over many pixels: utvm_widen_s8_s16_pairs widens them once into
 *   natural pairs (w0, w1), (w2, w3) in arena scratch, and the activations are int16 (a
 *   convolution's int16 output, or rows widened by utvm_widen_u8_s16), already such pairs.
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

#define UTVM_INLINE static inline __attribute__((always_inline))
#define UTVM_NOINLINE static __attribute__((noinline))

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
 * x + x_row, x + x_row + x_pix) x 2 channels (pairs of utvm_widen_s8_s16_pairs at w + w_off), all 8
 * sums in registers; writes acc[c] = the largest of channel c's 4 sums. Each weight pair
 * loaded serves 4 pixels. */
UTVM_INLINE int32_t utvm_pool_s16_p4c2(int16_t* x_base, int32_t x_off, int32_t x_pix, int32_t x_row,
                                       uint32_t* w_base, int32_t w_off, int32_t rows, int32_t pairs,
                                       int32_t* acc) {
  /* x_pix may be odd (one input channel): pairs are loaded with unaligned-safe loads */
  const int16_t* x = x_base + x_off;
  const uint32_t* w = w_base + w_off;
  int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
  for (int32_t r = 0; r < rows; ++r) {
    const int16_t* xr = x + r * x_row;
    const uint32_t* w0 = w + r * pairs;
    const uint32_t* w1 = w0 + rows * pairs;
#pragma GCC unroll 2
    for (int32_t j = 0; j < pairs; ++j) {
      uint32_t wa = w0[j], wb = w1[j], v;
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
  a0 = a0 > a1 ? a0 : a1;
  a2 = a2 > a3 ? a2 : a3;
  b0 = b0 > b1 ? b0 : b1;
  b2 = b2 > b3 ? b2 : b3;
  acc[0] = a0 > a2 ? a0 : a2;
  acc[1] = b0 > b2 ? b0 : b2;
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
  /* each pixel of the window through the reference dot product (x_pix 0: the one pixel in
     both slots, channel c's sum in sums[c * 2]), then the largest per channel */
  acc[0] = INT32_MIN;
  acc[1] = INT32_MIN;
  for (int32_t p = 0; p < 4; ++p) {
    int32_t sums[4] = {0, 0, 0, 0};
    utvm_dot_s16_p2c2(x_base, x_off + (p / 2) * x_row + (p % 2) * x_pix, 0, x_row, w_base + w_off, rows,
                      pairs, sums, 0);
    for (int32_t c = 0; c < 2; ++c) {
      acc[c] = sums[c * 2] > acc[c] ? sums[c * 2] : acc[c];
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
