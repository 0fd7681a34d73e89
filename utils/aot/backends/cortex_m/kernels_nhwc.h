/* Whole-layer int8 kernels on channels-last (NHWC) tensors, for the Cortex-M backend's
 * per-layer lowering (graph.py): the networks with branches, depthwise, pointwise and
 * strided convolutions, and dense layers. One TIR function per layer calls one of these.
 *
 * Activations are uint8 [H][W][C] (a convolution's output is its next layer's input as is),
 * weights int8 in flash in the order each kernel reads them (graph.py lays them out), biases
 * int32. Each kernel ends in the requantization every layer of the golden model uses, in the
 * same float32 operations in the same order, so the bits equal 0201's:
 *     q = clip(rint(float32(acc) * M) + zp_out, lo, hi)
 * with M one per output channel (m_stride 1) or one for all (m_stride 0).
 *
 * On the DSP extension the dot products are __smlad on pairs of int16: a word of 4 uint8
 * activations or int8 weights becomes the pairs (b0, b2) and (b1, b3) (__uxtb16 / __sxtb16 on
 * the word and on the word rotated by 8). Elsewhere (host, native64) plain loops over the
 * same layouts; integer sums are exact in any order, so both give the same bits.
 */
#ifndef UTVM_CORTEX_M_KERNELS_NHWC_H_
#define UTVM_CORTEX_M_KERNELS_NHWC_H_

/* Built on microkernels.h, which the backend always places before this file: UTVM_DSP,
   UTVM_INLINE, utvm_load32, utvm_requantize (0201's requantization) and the rotating extends. */
#ifndef UTVM_CORTEX_M_MICROKERNELS_H_
#error "kernels_nhwc.h needs microkernels.h before it"
#endif

#include <math.h>

/* Each layer's call is inlined into its TIR function, whose arguments are constants: gcc then
   specializes the loops for the layer's shape (immediate offsets, counted loops), which frees
   the registers the inner loops need. */
#define UTVM_NHWC_KERNEL UTVM_INLINE

/* ---------------------------------------------------------------- convolution, groups 1
 * Any kernel size, stride and padding (a 1x1 stride-1 convolution is the pointwise case).
 * A window is kh rows of kw * C taps (channels last), each row padded to row4 taps, a
 * multiple of 4, so that a row inside the image is copied in whole words; k4 = kh * row4.
 * Two output pixels at a time: their windows are gathered into `col` as int16, interleaved
 * in steps of 4 taps, [k4 / 4][2 pixels][4] (the input zero point where the window leaves the
 * image, zeros in the row padding), then multiplied with every channel's weights: w int8,
 * channel pairs interleaved in the same steps, [ceil(O / 2)][k4 / 4][2 channels][4] (zeros in
 * the row padding), each group of 4 bytes stored (k0, k2, k1, k3), so that __sxtb16 of a word
 * gives the int16 pair (k0, k1) and of the word rotated by 8 the pair (k2, k3): the pairs of
 * `col`'s words. One pointer walks each. bias with the input zero point folded in. */
UTVM_INLINE void utvm_nhwc_gather(const uint8_t* x, int16_t* col, int32_t pixel, int32_t oy, int32_t ox,
                                       int32_t in_h, int32_t in_w, int32_t in_c, int32_t k_h, int32_t k_w,
                                       int32_t stride_h, int32_t stride_w, int32_t pad_h, int32_t pad_w,
                                       int32_t in_zp, int32_t row4) {
  int16_t* out = col + pixel * 4;
  const int32_t y0 = oy * stride_h - pad_h, x0 = ox * stride_w - pad_w;
  const int32_t row = k_w * in_c;
  const uint8_t* const x_end = x + in_h * in_w * in_c;
  for (int32_t ky = 0; ky < k_h; ++ky, out += row4 * 2) {
    const int32_t iy = y0 + ky;
    const uint8_t* src = x + (iy * in_w + x0) * in_c;
#if UTVM_DSP
    /* the whole row inside the image: whole words (the padding reads up to 3 bytes past the
       row, within the tensor, against zero weights) */
    if (iy >= 0 && iy < in_h && x0 >= 0 && x0 + k_w <= in_w && src + row4 <= x_end) {
      for (int32_t t = 0; t < row4; t += 4) {
        const uint32_t v = utvm_load32(src + t);
        const uint32_t even = __uxtb16(v), odd = utvm_uxtb16_ror8(v); /* (b0, b2), (b1, b3) */
        const uint32_t pair01 = (even & 0xFFFFu) | (odd << 16), pair23 = (odd & 0xFFFF0000u) | (even >> 16);
        memcpy(out + t * 2, &pair01, 4);
        memcpy(out + t * 2 + 2, &pair23, 4);
      }
      continue;
    }
#endif
    for (int32_t t = 0; t < row4; ++t) {
      const int32_t ix = x0 + t / in_c;
      int32_t v = 0;
      if (t < row) {
        v = (iy >= 0 && iy < in_h && ix >= 0 && ix < in_w) ? src[t] : in_zp;
      }
      out[(t >> 2) * 8 + (t & 3)] = (int16_t)v;
    }
  }
}

/* One step of 4 taps: the pair of windows by two LDRDs (col is word-aligned: it lives in the
   arena), each channel's weight word widened to the int16 pairs (k0, k1), (k2, k3). */
#define UTVM_NHWC_MAC_STEP_S8                  \
  "ldrd %[x0a], %[x0b], [%[col]], #8\n\t"      \
  "ldrd %[x1a], %[x1b], [%[col]], #8\n\t"      \
  "ldr %[wv], [%[wp]], #4\n\t"                 \
  "sxtb16 %[we], %[wv]\n\t"                    \
  "sxtb16 %[wv], %[wv], ror #8\n\t"            \
  "smlad %[a00], %[x0a], %[we], %[a00]\n\t"    \
  "smlad %[a00], %[x0b], %[wv], %[a00]\n\t"    \
  "smlad %[a10], %[x1a], %[we], %[a10]\n\t"    \
  "smlad %[a10], %[x1b], %[wv], %[a10]\n\t"    \
  "ldr %[wv], [%[wp]], #4\n\t"                 \
  "sxtb16 %[we], %[wv]\n\t"                    \
  "sxtb16 %[wv], %[wv], ror #8\n\t"            \
  "smlad %[a01], %[x0a], %[we], %[a01]\n\t"    \
  "smlad %[a01], %[x0b], %[wv], %[a01]\n\t"    \
  "smlad %[a11], %[x1a], %[we], %[a11]\n\t"    \
  "smlad %[a11], %[x1b], %[wv], %[a11]\n\t"
#define UTVM_NHWC_MAC_OUTPUTS(w0, w1)                                                                      \
  [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [col] "+r"(col), [wp] "+r"(wp),      \
      [x0a] "=&r"(x0a), [x0b] "=&r"(x0b), [x1a] "=&r"(x1a), [x1b] "=&r"(x1b), [w0] "=&r"(w0), [w1] "=&r"(w1)

/* acc[2 * pixel + channel] of one channel pair over the gathered pair of windows. */
UTVM_INLINE void utvm_nhwc_mac_2x2(const int16_t* col, const int8_t* wp, int32_t k4, int32_t* acc) {
  int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
#if UTVM_DSP
  /* written out: gcc 12 keeps the loop's pointers on the stack when it schedules this itself.
     Two steps per turn, then one more step when k4 / 4 is odd. */
  const int8_t* const end = wp + 2 * (k4 & ~7);
  uint32_t x0a, x0b, x1a, x1b, wv, we;
  if (k4 >= 8) {
    __asm__ volatile("1:\n\t" UTVM_NHWC_MAC_STEP_S8 UTVM_NHWC_MAC_STEP_S8
                     "cmp %[wp], %[end]\n\t"
                     "bne 1b\n\t"
                     : UTVM_NHWC_MAC_OUTPUTS(wv, we)
                     : [end] "r"(end)
                     : "cc", "memory");
  }
  if (k4 & 4) {
    __asm__ volatile(UTVM_NHWC_MAC_STEP_S8 : UTVM_NHWC_MAC_OUTPUTS(wv, we) : : "memory");
  }
#else
  for (int32_t i = 0; i < k4; i += 4) {
    static const int8_t order[4] = {0, 2, 1, 3}; /* tap j's byte in its group of 4 */
    for (int32_t j = 0; j < 4; ++j) {
      const int32_t wt0 = wp[order[j]], wt1 = wp[4 + order[j]];
      a00 += col[j] * wt0;
      a01 += col[j] * wt1;
      a10 += col[4 + j] * wt0;
      a11 += col[4 + j] * wt1;
    }
    col += 8;
    wp += 8;
  }
#endif
  acc[0] = a00;
  acc[1] = a01;
  acc[2] = a10;
  acc[3] = a11;
}

/* One step of 4 taps over int16 weights: one LDRD per channel, no extends */
#define UTVM_NHWC_MAC_STEP_S16                 \
  "ldrd %[x0a], %[x0b], [%[col]], #8\n\t"      \
  "ldrd %[x1a], %[x1b], [%[col]], #8\n\t"      \
  "ldrd %[wa], %[wb], [%[wp]], #8\n\t"         \
  "smlad %[a00], %[x0a], %[wa], %[a00]\n\t"    \
  "smlad %[a00], %[x0b], %[wb], %[a00]\n\t"    \
  "smlad %[a10], %[x1a], %[wa], %[a10]\n\t"    \
  "smlad %[a10], %[x1b], %[wb], %[a10]\n\t"    \
  "ldrd %[wa], %[wb], [%[wp]], #8\n\t"         \
  "smlad %[a01], %[x0a], %[wa], %[a01]\n\t"    \
  "smlad %[a01], %[x0b], %[wb], %[a01]\n\t"    \
  "smlad %[a11], %[x1a], %[wa], %[a11]\n\t"    \
  "smlad %[a11], %[x1b], %[wb], %[a11]\n\t"
/* The same over weights already widened to int16 pairs, [ceil(O / 2)][k4 / 4][2 channels][4]
 * (natural tap order), word-aligned: no extends, one LDRD per channel and step. For layers
 * whose weights are reused over many pixels, where the doubled flash pays. */
UTVM_INLINE void utvm_nhwc_mac_2x2_s16(const int16_t* col, const int16_t* wp, int32_t k4, int32_t* acc) {
  int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
#if UTVM_DSP
  const int16_t* const end = wp + 2 * (k4 & ~7);
  uint32_t x0a, x0b, x1a, x1b, wa, wb;
  if (k4 >= 8) {
    __asm__ volatile("1:\n\t" UTVM_NHWC_MAC_STEP_S16 UTVM_NHWC_MAC_STEP_S16
                     "cmp %[wp], %[end]\n\t"
                     "bne 1b\n\t"
                     : UTVM_NHWC_MAC_OUTPUTS(wa, wb)
                     : [end] "r"(end)
                     : "cc", "memory");
  }
  if (k4 & 4) {
    __asm__ volatile(UTVM_NHWC_MAC_STEP_S16 : UTVM_NHWC_MAC_OUTPUTS(wa, wb) : : "memory");
  }
#else
  for (int32_t i = 0; i < k4; i += 4) {
    for (int32_t j = 0; j < 4; ++j) {
      a00 += col[j] * wp[j];
      a01 += col[j] * wp[4 + j];
      a10 += col[4 + j] * wp[j];
      a11 += col[4 + j] * wp[4 + j];
    }
    col += 8;
    wp += 8;
  }
#endif
  acc[0] = a00;
  acc[1] = a01;
  acc[2] = a10;
  acc[3] = a11;
}
#undef UTVM_NHWC_MAC_STEP_S8
#undef UTVM_NHWC_MAC_STEP_S16
#undef UTVM_NHWC_MAC_OUTPUTS

/* A residual add fused into the convolution's store: qnnpack's add of the convolution's
 * requantized byte and the other operand's byte at the same position (the golden model's
 * QAdd, bit for bit), applied to each pair of pixels once stored: acc = m_conv * q_conv + m_res * q_res + zpp, rounded right shift
 * (half away from zero), + zp_out, clip [lo, 255]. add = {m_conv, m_res, zpp, shift, zp_out, lo}. */
UTVM_INLINE void utvm_nhwc_add(uint8_t* y, const uint8_t* res, int32_t n, const int32_t* add) {
  /* read once: the byte stores below may alias them as far as gcc knows */
  const int32_t m_conv = add[0], m_res = add[1], zpp = add[2], shift = add[3], zp_out = add[4], lo = add[5];
  const int32_t mask = (1 << shift) - 1, half = mask >> 1;
  for (int32_t i = 0; i < n; ++i) {
    const int32_t acc = m_conv * y[i] + m_res * res[i] + zpp;
    const int32_t remainder = (acc & mask) - (acc < 0);
    int32_t q = (acc >> shift) + (remainder > half) + zp_out;
    q = q < lo ? lo : q;
    y[i] = (uint8_t)(q > 255 ? 255 : q);
  }
}

/* An activation of the layer's output bytes fused into its store (Hardswish, ReLU6, ...: the
 * golden model's QLookup table, one output byte per input byte). */
UTVM_INLINE void utvm_nhwc_lookup(uint8_t* y, int32_t n, const uint8_t* table) {
  for (int32_t i = 0; i < n; ++i) {
    y[i] = table[y[i]];
  }
}

UTVM_INLINE void utvm_nhwc_conv_pixels(const int16_t* col, const void* w, int32_t wide, const int32_t* bias,
                                            const float* mult, uint8_t* y, int32_t at, int32_t two, int32_t out_c,
                                            int32_t k4, int32_t m_stride, int32_t zp, int32_t flo, int32_t fhi) {
  /* a per-tensor multiplier read once: the loops' asm clobbers memory, which would reload it */
  const float m_all = mult[0];
#define UTVM_NHWC_M(ch) (m_stride ? mult[(ch)] : m_all)
  for (int32_t o = 0; o < out_c; o += 2) {
    const int32_t both = o + 1 < out_c;
    int32_t acc[4];
    if (wide) {
      utvm_nhwc_mac_2x2_s16(col, (const int16_t*)w + o * k4, k4, acc);
    } else {
      utvm_nhwc_mac_2x2(col, (const int8_t*)w + o * k4, k4, acc);
    }
    uint8_t* y0 = y + at;
    y0[o] = utvm_requantize(acc[0] + bias[o], UTVM_NHWC_M(o), zp, flo, fhi);
    if (both) {
      y0[o + 1] = utvm_requantize(acc[1] + bias[o + 1], UTVM_NHWC_M(o + 1), zp, flo, fhi);
    }
    if (two) {
      y0[out_c + o] = utvm_requantize(acc[2] + bias[o], UTVM_NHWC_M(o), zp, flo, fhi);
      if (both) {
        y0[out_c + o + 1] = utvm_requantize(acc[3] + bias[o + 1], UTVM_NHWC_M(o + 1), zp, flo, fhi);
      }
    }
  }
}
#undef UTVM_NHWC_M

UTVM_INLINE int32_t utvm_nhwc_conv(const uint8_t* x, const void* w, int32_t wide, const int32_t* bias,
                                       const float* mult, uint8_t* y, int16_t* col, int32_t in_h, int32_t in_w,
                                       int32_t in_c, int32_t out_h, int32_t out_w, int32_t out_c, int32_t k_h,
                                       int32_t k_w, int32_t stride_h, int32_t stride_w, int32_t pad_h, int32_t pad_w,
                                       int32_t in_zp, int32_t m_stride, int32_t out_zp, int32_t lo, int32_t hi,
                                       const uint8_t* res, const int32_t* add, const uint8_t* table) {
  const int32_t zp = out_zp, flo = lo, fhi = hi;
  const int32_t row4 = (k_w * in_c + 3) & ~3, k4 = k_h * row4;
  const int32_t pixels = out_h * out_w;
  for (int32_t p = 0; p < pixels; p += 2) {
    const int32_t two = p + 1 < pixels;
    /* an odd last pixel is computed twice, stored once */
    const int32_t q = two ? p + 1 : p;
    utvm_nhwc_gather(x, col, 0, p / out_w, p % out_w, in_h, in_w, in_c, k_h, k_w, stride_h, stride_w, pad_h, pad_w,
                     in_zp, row4);
    utvm_nhwc_gather(x, col, 1, q / out_w, q % out_w, in_h, in_w, in_c, k_h, k_w, stride_h, stride_w, pad_h, pad_w,
                     in_zp, row4);
    utvm_nhwc_conv_pixels(col, w, wide, bias, mult, y, p * out_c, two, out_c, k4, m_stride, zp, flo, fhi);
    if (res) {
      /* the residual add on the two pixels just stored, while they are in the cache */
      utvm_nhwc_add(y + p * out_c, res + p * out_c, (1 + two) * out_c, add);
    }
    if (table) {
      utvm_nhwc_lookup(y + p * out_c, (1 + two) * out_c, table);
    }
  }
  return 0;
}

/* Entry points, named for their data types: uint8 activations, int8 weights (s8,
 * utvm_nhwc_mac_2x2's layout) or int16 weights in int32 words (s16, utvm_nhwc_mac_2x2_s16's);
 * _add: with a fused residual add (res: the other operand, the output's shape; add: its
 * parameters, utvm_nhwc_add); _lut: with a fused activation (table: 256 output bytes).
 * pointwise: 1x1, stride 1, no padding (the gather is a copy of two pixels). */
#define UTVM_NHWC_UNPAREN(...) __VA_ARGS__
/* conv: any window; extra: the fused operands' parameters (parenthesized, each with its comma);
   res, add, table: what utvm_nhwc_conv gets for them (0 when the entry has none) */
#define UTVM_NHWC_CONV_ENTRY(name, w_type, wide, extra, res, add, table)                                  \
  UTVM_NHWC_KERNEL int32_t name(const uint8_t* x, const w_type* w, const int32_t* bias, const float* mult,  \
                                UTVM_NHWC_UNPAREN extra uint8_t* y, int16_t* col, int32_t in_h, int32_t in_w, \
                                int32_t in_c, int32_t out_h, int32_t out_w, int32_t out_c, int32_t k_h,     \
                                int32_t k_w, int32_t stride_h, int32_t stride_w, int32_t pad_h, int32_t pad_w, \
                                int32_t in_zp, int32_t m_stride, int32_t out_zp, int32_t lo, int32_t hi) {  \
    return utvm_nhwc_conv(x, w, wide, bias, mult, y, col, in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w,    \
                          stride_h, stride_w, pad_h, pad_w, in_zp, m_stride, out_zp, lo, hi, res, add, table); \
  }
/* pointwise: 1x1, stride 1, no padding, over `pixels` */
#define UTVM_NHWC_POINTWISE_ENTRY(name, w_type, wide, extra, res, add, table)                             \
  UTVM_NHWC_KERNEL int32_t name(const uint8_t* x, const w_type* w, const int32_t* bias, const float* mult,  \
                                UTVM_NHWC_UNPAREN extra uint8_t* y, int16_t* col, int32_t pixels,           \
                                int32_t in_c, int32_t out_c, int32_t m_stride, int32_t out_zp, int32_t lo,  \
                                int32_t hi) {                                                               \
    return utvm_nhwc_conv(x, w, wide, bias, mult, y, col, 1, pixels, in_c, 1, pixels, out_c, 1, 1, 1, 1, 0, 0, \
                          0, m_stride, out_zp, lo, hi, res, add, table);                                    \
  }
#define UTVM_NHWC_ADD_PARAMS (const uint8_t* res, const int32_t* add, )
#define UTVM_NHWC_LUT_PARAMS (const uint8_t* table, )

UTVM_NHWC_CONV_ENTRY(utvm_conv_u8s8, int8_t, 0, (), 0, 0, 0)
UTVM_NHWC_CONV_ENTRY(utvm_conv_add_u8s8, int8_t, 0, UTVM_NHWC_ADD_PARAMS, res, add, 0)
UTVM_NHWC_CONV_ENTRY(utvm_conv_lut_u8s8, int8_t, 0, UTVM_NHWC_LUT_PARAMS, 0, 0, table)
UTVM_NHWC_CONV_ENTRY(utvm_conv_u8s16, int32_t, 1, (), 0, 0, 0)
UTVM_NHWC_CONV_ENTRY(utvm_conv_add_u8s16, int32_t, 1, UTVM_NHWC_ADD_PARAMS, res, add, 0)
UTVM_NHWC_CONV_ENTRY(utvm_conv_lut_u8s16, int32_t, 1, UTVM_NHWC_LUT_PARAMS, 0, 0, table)
UTVM_NHWC_POINTWISE_ENTRY(utvm_pointwise_u8s8, int8_t, 0, (), 0, 0, 0)
UTVM_NHWC_POINTWISE_ENTRY(utvm_pointwise_add_u8s8, int8_t, 0, UTVM_NHWC_ADD_PARAMS, res, add, 0)
UTVM_NHWC_POINTWISE_ENTRY(utvm_pointwise_lut_u8s8, int8_t, 0, UTVM_NHWC_LUT_PARAMS, 0, 0, table)
UTVM_NHWC_POINTWISE_ENTRY(utvm_pointwise_u8s16, int32_t, 1, (), 0, 0, 0)
UTVM_NHWC_POINTWISE_ENTRY(utvm_pointwise_add_u8s16, int32_t, 1, UTVM_NHWC_ADD_PARAMS, res, add, 0)
UTVM_NHWC_POINTWISE_ENTRY(utvm_pointwise_lut_u8s16, int32_t, 1, UTVM_NHWC_LUT_PARAMS, 0, 0, table)

/* ---------------------------------------------------------------- a residual block, row by row
 * z = add(conv_b(conv_a(x)), x) for two stride-1 convolutions that keep the image's size (a
 * ResNet block), one output row of z at a time: conv_a's output y lives only in `ring`, the
 * kb_h rows of y that conv_b's window needs (rows move down as the window does), so y never
 * takes a whole image in the arena. Each y row is computed once, before the z row that first
 * needs it; z row r is stored after y row r + pb_h, whose window reaches x row r + pb_h + pa_h,
 * so with pb_h >= pa_h every x row a later y row reads lies past z row r, and z may overwrite
 * x as it goes two pixels behind (utvm_nhwc_conv reads a residual pair after storing it).
 * Weights and biases as utvm_conv_*'s (graph.py lays them out); add: utvm_nhwc_add's. */
UTVM_INLINE int32_t utvm_nhwc_conv_pair_add(const uint8_t* x, const void* w_a, const int32_t* bias_a,
                                             const float* mult_a, const void* w_b, const int32_t* bias_b,
                                             const float* mult_b, const int32_t* add, uint8_t* z, uint8_t* ring,
                                             int16_t* col, int32_t wide, int32_t h, int32_t w, int32_t chans,
                                             int32_t mid, int32_t ka_h, int32_t ka_w, int32_t pa_h, int32_t pa_w,
                                             int32_t kb_h, int32_t kb_w, int32_t pb_h, int32_t pb_w, int32_t zp_x,
                                             int32_t m_stride_a, int32_t zp_a, int32_t lo_a, int32_t hi_a,
                                             int32_t m_stride_b, int32_t zp_b, int32_t lo_b, int32_t hi_b) {
  const int32_t row_x = w * chans, row_y = w * mid;
  int32_t lo = 0, hi = 0; /* the ring holds y rows [lo, hi) */
  for (int32_t r = 0; r < h; ++r) {
    const int32_t need_lo = r - pb_h < 0 ? 0 : r - pb_h, need_hi = r + pb_h + 1 > h ? h : r + pb_h + 1;
    if (need_lo > lo) {
      memmove(ring, ring + (need_lo - lo) * row_y, (size_t)((hi - need_lo) * row_y));
      lo = need_lo;
    }
    for (; hi < need_hi; ++hi) {
      const int32_t s0 = hi - pa_h < 0 ? 0 : hi - pa_h, s1 = hi + pa_h + 1 > h ? h : hi + pa_h + 1;
      utvm_nhwc_conv(x + s0 * row_x, w_a, wide, bias_a, mult_a, ring + (hi - lo) * row_y, col, s1 - s0, w, chans,
                     1, w, mid, ka_h, ka_w, 1, 1, s0 - (hi - pa_h), pa_w, zp_x, m_stride_a, zp_a, lo_a, hi_a, 0, 0, 0);
    }
    utvm_nhwc_conv(ring, w_b, wide, bias_b, mult_b, z + r * row_x, col, need_hi - need_lo, w, mid, 1, w, chans,
                   kb_h, kb_w, 1, 1, need_lo - (r - pb_h), pb_w, zp_a, m_stride_b, zp_b, lo_b, hi_b, x + r * row_x,
                   add, 0);
  }
  return 0;
}

#define UTVM_NHWC_PAIR_ENTRY(name, w_type, wide)                                                              \
  UTVM_NHWC_KERNEL int32_t name(const uint8_t* x, const w_type* w_a, const int32_t* bias_a, const float* mult_a, \
                                const w_type* w_b, const int32_t* bias_b, const float* mult_b,                 \
                                const int32_t* add, uint8_t* z, uint8_t* ring, int16_t* col, int32_t h,        \
                                int32_t w, int32_t chans, int32_t mid, int32_t ka_h, int32_t ka_w,            \
                                int32_t pa_h, int32_t pa_w, int32_t kb_h, int32_t kb_w, int32_t pb_h,         \
                                int32_t pb_w, int32_t zp_x, int32_t m_stride_a, int32_t zp_a, int32_t lo_a,   \
                                int32_t hi_a, int32_t m_stride_b, int32_t zp_b, int32_t lo_b, int32_t hi_b) { \
    return utvm_nhwc_conv_pair_add(x, w_a, bias_a, mult_a, w_b, bias_b, mult_b, add, z, ring, col, wide, h, w,  \
                                   chans, mid, ka_h, ka_w, pa_h, pa_w, kb_h, kb_w, pb_h, pb_w, zp_x,           \
                                   m_stride_a, zp_a, lo_a, hi_a, m_stride_b, zp_b, lo_b, hi_b);                \
  }
UTVM_NHWC_PAIR_ENTRY(utvm_conv_pair_add_u8s8, int8_t, 0)
UTVM_NHWC_PAIR_ENTRY(utvm_conv_pair_add_u8s16, int32_t, 1)

/* ---------------------------------------------------------------- depthwise, multiplier 1
 * y[oy][ox][c] = requantize(bias[c] + sum over the window's taps inside the image of
 * (x[iy][ix][c] - zp_in) * w[ky][kx][c]); taps outside add nothing (they would hold the zero
 * point). w16: the weights widened to int16 [kh][kw][C4] with each group of 4 channels stored
 * as (c0, c2, c1, c3), C4 = C rounded up to 4; bias as the model has it, and bias_in with the
 * input zero point folded in (bias - zp_in * sum of the channel's taps).
 * On the DSP extension 4 channels per step: one activation word, widened, against two weight
 * words, by __smlabb / __smlatt, every tap unrolled, with bias_in; a tap outside the image
 * reads a word of the input zero point instead. Elsewhere the taps inside, centered, with bias. */
UTVM_INLINE int32_t utvm_nhwc_depthwise(const uint8_t* x, const int16_t* w16, const int32_t* bias,
                                             const int32_t* bias_in, const float* mult, const uint8_t* table,
                                             uint8_t* y, int32_t in_h, int32_t in_w, int32_t chans, int32_t out_h,
                                             int32_t out_w, int32_t k_h, int32_t k_w, int32_t stride_h,
                                             int32_t stride_w, int32_t pad_h, int32_t pad_w, int32_t in_zp,
                                             int32_t m_stride, int32_t out_zp, int32_t lo, int32_t hi) {
  const int32_t zp = out_zp, flo = lo, fhi = hi;
  const int32_t c4 = (chans + 3) & ~3;
  /* a per-tensor multiplier read once: the byte stores may alias it as far as gcc knows */
  const float m_all = mult[0];
#define UTVM_NHWC_M(ch) (m_stride ? mult[(ch)] : m_all)
  const int32_t whole = chans & ~3;
#if UTVM_DSP
  const uint32_t zp4 = (uint32_t)(uint8_t)in_zp * 0x01010101u;
#endif
  for (int32_t oy = 0; oy < out_h; ++oy) {
    const int32_t y0 = oy * stride_h - pad_h;
    const int32_t ky0 = y0 < 0 ? -y0 : 0, ky1 = y0 + k_h > in_h ? in_h - y0 : k_h;
    for (int32_t ox = 0; ox < out_w; ++ox) {
      const int32_t x0 = ox * stride_w - pad_w;
      const int32_t kx0 = x0 < 0 ? -x0 : 0, kx1 = x0 + k_w > in_w ? in_w - x0 : k_w;
      uint8_t* out = y + (oy * out_w + ox) * chans;
      int32_t c = 0;
#if UTVM_DSP
      if (ky0 == 0 && kx0 == 0 && ky1 == k_h && kx1 == k_w) {
        const uint8_t* const window = x + (y0 * in_w + x0) * chans;
        for (; c < whole; c += 4) {
          int32_t a0 = bias_in[c], a1 = bias_in[c + 1], a2 = bias_in[c + 2], a3 = bias_in[c + 3];
#pragma GCC unroll 25
          for (int32_t t = 0; t < k_h * k_w; ++t) {
            /* one tap, written out: left alone, gcc 12 hoists all the taps' loads and spills */
            const uint8_t* xt = window + ((t / k_w) * in_w + t % k_w) * chans + c;
            const int16_t* wt = w16 + t * c4 + c;
            uint32_t xv, xe, wv;
            __asm__("ldr %[xv], %[xm]\n\t"
                    "uxtb16 %[xe], %[xv]\n\t"
                    "uxtb16 %[xv], %[xv], ror #8\n\t"
                    "ldr %[wv], %[wm0]\n\t"
                    "smlabb %[a0], %[xe], %[wv], %[a0]\n\t"
                    "smlatt %[a2], %[xe], %[wv], %[a2]\n\t"
                    "ldr %[wv], %[wm1]\n\t"
                    "smlabb %[a1], %[xv], %[wv], %[a1]\n\t"
                    "smlatt %[a3], %[xv], %[wv], %[a3]\n\t"
                    : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [xv] "=&r"(xv), [xe] "=&r"(xe),
                      [wv] "=&r"(wv)
                    : [xm] "m"(*(const uint32_t*)xt), [wm0] "m"(*(const uint32_t*)wt),
                      [wm1] "m"(*(const uint32_t*)(wt + 2)));
          }
          out[c] = utvm_requantize(a0, UTVM_NHWC_M(c), zp, flo, fhi);
          out[c + 1] = utvm_requantize(a1, UTVM_NHWC_M(c + 1), zp, flo, fhi);
          out[c + 2] = utvm_requantize(a2, UTVM_NHWC_M(c + 2), zp, flo, fhi);
          out[c + 3] = utvm_requantize(a3, UTVM_NHWC_M(c + 3), zp, flo, fhi);
        }
      }
      /* a window that leaves the image: its taps outside read the input zero point (four of
         them in a word), which the folded bias takes back */
      for (; c < whole; c += 4) {
        int32_t a0 = bias_in[c], a1 = bias_in[c + 1], a2 = bias_in[c + 2], a3 = bias_in[c + 3];
#pragma GCC unroll 25
        for (int32_t t = 0; t < k_h * k_w; ++t) {
          const int32_t ky = t / k_w, kx = t % k_w;
          const uint32_t xv = (ky >= ky0 && ky < ky1 && kx >= kx0 && kx < kx1)
                                  ? utvm_load32(x + ((y0 + ky) * in_w + x0 + kx) * chans + c) : zp4;
          const int16_t* wt = w16 + t * c4 + c;
          uint32_t xe, xo, wv;
          __asm__("uxtb16 %[xe], %[xv]\n\t"
                  "uxtb16 %[xo], %[xv], ror #8\n\t"
                  "ldr %[wv], %[wm0]\n\t"
                  "smlabb %[a0], %[xe], %[wv], %[a0]\n\t"
                  "smlatt %[a2], %[xe], %[wv], %[a2]\n\t"
                  "ldr %[wv], %[wm1]\n\t"
                  "smlabb %[a1], %[xo], %[wv], %[a1]\n\t"
                  "smlatt %[a3], %[xo], %[wv], %[a3]\n\t"
                  : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [xe] "=&r"(xe), [xo] "=&r"(xo),
                    [wv] "=&r"(wv)
                  : [xv] "r"(xv), [wm0] "m"(*(const uint32_t*)wt), [wm1] "m"(*(const uint32_t*)(wt + 2)));
        }
        out[c] = utvm_requantize(a0, UTVM_NHWC_M(c), zp, flo, fhi);
        out[c + 1] = utvm_requantize(a1, UTVM_NHWC_M(c + 1), zp, flo, fhi);
        out[c + 2] = utvm_requantize(a2, UTVM_NHWC_M(c + 2), zp, flo, fhi);
        out[c + 3] = utvm_requantize(a3, UTVM_NHWC_M(c + 3), zp, flo, fhi);
      }
#else
      (void)whole;
#endif
      for (; c < chans; ++c) {
        /* where channel c sits in its group of 4: (c0, c2, c1, c3) */
        static const int8_t slot[4] = {0, 2, 1, 3};
        const int32_t at = (c & ~3) + slot[c & 3];
        int32_t acc = bias[c];
        for (int32_t ky = ky0; ky < ky1; ++ky) {
          for (int32_t kx = kx0; kx < kx1; ++kx) {
            acc += ((int32_t)x[((y0 + ky) * in_w + x0 + kx) * chans + c] - in_zp) * w16[(ky * k_w + kx) * c4 + at];
          }
        }
        out[c] = utvm_requantize(acc, UTVM_NHWC_M(c), zp, flo, fhi);
      }
      if (table) {
        utvm_nhwc_lookup(out, chans, table);
      }
    }
  }
  return 0;
}
#undef UTVM_NHWC_M

/* _lut: with a fused activation (table: 256 output bytes) */
UTVM_NHWC_KERNEL int32_t utvm_depthwise_u8s8(const uint8_t* x, const int16_t* w16, const int32_t* bias,
                                             const int32_t* bias_in, const float* mult, uint8_t* y, int32_t in_h,
                                             int32_t in_w, int32_t chans, int32_t out_h, int32_t out_w, int32_t k_h,
                                             int32_t k_w, int32_t stride_h, int32_t stride_w, int32_t pad_h,
                                             int32_t pad_w, int32_t in_zp, int32_t m_stride, int32_t out_zp,
                                             int32_t lo, int32_t hi) {
  return utvm_nhwc_depthwise(x, w16, bias, bias_in, mult, 0, y, in_h, in_w, chans, out_h, out_w, k_h, k_w, stride_h,
                             stride_w, pad_h, pad_w, in_zp, m_stride, out_zp, lo, hi);
}

UTVM_NHWC_KERNEL int32_t utvm_depthwise_lut_u8s8(const uint8_t* x, const int16_t* w16, const int32_t* bias,
                                                 const int32_t* bias_in, const float* mult, const uint8_t* table,
                                                 uint8_t* y, int32_t in_h, int32_t in_w, int32_t chans, int32_t out_h,
                                                 int32_t out_w, int32_t k_h, int32_t k_w, int32_t stride_h,
                                                 int32_t stride_w, int32_t pad_h, int32_t pad_w, int32_t in_zp,
                                                 int32_t m_stride, int32_t out_zp, int32_t lo, int32_t hi) {
  return utvm_nhwc_depthwise(x, w16, bias, bias_in, mult, table, y, in_h, in_w, chans, out_h, out_w, k_h, k_w,
                             stride_h, stride_w, pad_h, pad_w, in_zp, m_stride, out_zp, lo, hi);
}

/* ---------------------------------------------------------------- dense
 * y[o] = requantize(bias[o] + sum_i x[i] * w[o][i]); bias with the input zero point folded
 * in. n4 = n rounded up to 4 (zero weights past n), O4 = O rounded up to 4 (zero channels past
 * O). The input is widened once into col (n4 int16, word-aligned: it lives in the arena) as
 * the int16 pairs (x0, x2), (x1, x3) of each group of 4 inputs (__uxtb16 of the word and of
 * the word rotated by 8). Then 4 computed channels per pass, in one of two layouts of w
 * (graph.py picks one per layer, `paired` says which):
 *
 * grouped (paired 0): [O4 / 4][n4 / 4][4 channels][4 inputs]; __sxtb16 of a weight word and of
 * the word rotated by 8 give the pairs (w0, w2), (w1, w3) that go with col's two words.
 *
 * paired (1, 2): two channels in each __smlad. The channels go in pairs (c0, c1); input i of a
 * pair is the byte pair (w_c0[i], b[i]) with b[i] = w_c1[i] - (w_c0[i] < 0), which read as a
 * little-endian int16 is exactly 256 * w_c1[i] + w_c0[i]. A weight word holds the byte pairs of
 * inputs (4s, 4s + 2) or (4s + 1, 4s + 3), the inputs of one of col's words, X. Then
 * __smlad(__sxtb16(word), X) adds w_c0's two products (the extend keeps bytes 0 and 2) and
 * __smlad(word, X) those of 256 * w_c1 + w_c0: summed into S and T, T - S = 256 * S_c1
 * (mod 2^32), and S_c1 = (T - S) >> 8 as long as 256 * S_c1 fits in an int32. The sums go in
 * chunks of `chunk` inputs that keep it so: 256 always do (each product is at most 255 * 128
 * in size), and graph.py gives a whole row where the layer's weights keep every c1's sum over
 * it within range (the grouped layout ignores chunk). Four multiply-adds cost one extend and
 * two __smlad.
 * b[i] must fit in an int8: w_c1[i] > -128 wherever w_c0[i] < 0. graph.py chooses in each
 * group of 4 channels the pairs and their roles that allow it, and gives a layer where some
 * group allows none the grouped layout.
 * w: [O4 / 4][n4 / 4][2 pairs][2 words] (the words of inputs (4s, 4s + 2), then (4s + 1,
 * 4s + 3)); the computed channels of a group: pair 0's c0 and c1, then pair 1's.
 *
 * bias: O4 biases in the computed order, then the float32 bits of the multiplier (one, or O4
 * in the computed order with m_stride 1), then with paired 2 a byte per group, 4 to a word
 * from the lowest: computed channel j of group g goes to output 4g + ((byte >> 2j) & 3). In the
 * other layouts it goes to output 4g + j. */

/* col[2s], col[2s + 1] = the int16 pairs (x[4s], x[4s + 2]), (x[4s + 1], x[4s + 3]); zeros past n */
UTVM_INLINE void utvm_dense_widen_u8(const uint8_t* x, uint32_t* col, int32_t n) {
  int32_t s = 0;
#if UTVM_DSP
  const uint8_t* xp = x;
  uint32_t* cp = col;
  for (; s < n >> 2; ++s, xp += 4, cp += 2) {
    const uint32_t v = utvm_load32(xp);
    cp[0] = __uxtb16(v);
    cp[1] = utvm_uxtb16_ror8(v);
  }
#endif
  for (; s < (n + 3) >> 2; ++s) {
    uint32_t b[4];
    for (int32_t k = 0; k < 4; ++k) {
      b[k] = 4 * s + k < n ? x[4 * s + k] : 0;
    }
    col[2 * s] = b[0] | b[2] << 16;
    col[2 * s + 1] = b[1] | b[3] << 16;
  }
}

/* acc[j] = bias[j] + the dot product of the group's channel j with the widened input, grouped
   layout; returns the next group's weights */
UTVM_INLINE const int8_t* utvm_dense_grouped_group(const uint32_t* col, const int8_t* wp, int32_t n4,
                                                   const int32_t* bias, int32_t* acc) {
  int32_t a0 = bias[0], a1 = bias[1], a2 = bias[2], a3 = bias[3];
  const uint32_t* xp = col;
#if UTVM_ASM
  /* written out: gcc 12 spills when it schedules this itself. The 4-word load names its
     registers in ascending order. */
  register uint32_t w0 __asm__("r8"), w1 __asm__("r9"), w2 __asm__("r10"), w3 __asm__("r11");
  uint32_t xe, xo, t;
  const uint32_t* const end = xp + n4 / 2;
  __asm__ volatile(
      "1:\n\t"
      "ldrd %[xe], %[xo], [%[xp]], #8\n\t"
      "ldmia %[wp]!, {%[w0], %[w1], %[w2], %[w3]}\n\t"
      "sxtb16 %[t], %[w0]\n\t"
      "smlad %[a0], %[t], %[xe], %[a0]\n\t"
      "sxtb16 %[w0], %[w0], ror #8\n\t"
      "smlad %[a0], %[w0], %[xo], %[a0]\n\t"
      "sxtb16 %[t], %[w1]\n\t"
      "smlad %[a1], %[t], %[xe], %[a1]\n\t"
      "sxtb16 %[w1], %[w1], ror #8\n\t"
      "smlad %[a1], %[w1], %[xo], %[a1]\n\t"
      "sxtb16 %[t], %[w2]\n\t"
      "smlad %[a2], %[t], %[xe], %[a2]\n\t"
      "sxtb16 %[w2], %[w2], ror #8\n\t"
      "smlad %[a2], %[w2], %[xo], %[a2]\n\t"
      "sxtb16 %[t], %[w3]\n\t"
      "smlad %[a3], %[t], %[xe], %[a3]\n\t"
      "sxtb16 %[w3], %[w3], ror #8\n\t"
      "smlad %[a3], %[w3], %[xo], %[a3]\n\t"
      "cmp %[xp], %[end]\n\t"
      "bne 1b\n\t"
      : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [xp] "+r"(xp), [wp] "+r"(wp), [xe] "=&r"(xe),
        [xo] "=&r"(xo), [t] "=&r"(t), [w0] "=&r"(w0), [w1] "=&r"(w1), [w2] "=&r"(w2), [w3] "=&r"(w3)
      : [end] "r"(end)
      : "cc", "memory");
#else
  for (int32_t s = 0; s < n4 / 4; ++s, xp += 2, wp += 16) {
    const int32_t x0 = (int32_t)(xp[0] & 0xFFFFu), x2 = (int32_t)(xp[0] >> 16);
    const int32_t x1 = (int32_t)(xp[1] & 0xFFFFu), x3 = (int32_t)(xp[1] >> 16);
    a0 += wp[0] * x0 + wp[1] * x1 + wp[2] * x2 + wp[3] * x3;
    a1 += wp[4] * x0 + wp[5] * x1 + wp[6] * x2 + wp[7] * x3;
    a2 += wp[8] * x0 + wp[9] * x1 + wp[10] * x2 + wp[11] * x3;
    a3 += wp[12] * x0 + wp[13] * x1 + wp[14] * x2 + wp[15] * x3;
  }
#endif
  acc[0] = a0;
  acc[1] = a1;
  acc[2] = a2;
  acc[3] = a3;
  return wp;
}

/* One step of 4 inputs against a group's two pairs: T with the word, then S with its extend */
#define UTVM_DENSE_PAIRED_STEP                     \
  "ldrd %[xe], %[xo], [%[xp]], #8\n\t"             \
  "ldmia %[wp]!, {%[w0], %[w1], %[w2], %[w3]}\n\t" \
  "smlad %[t0], %[w0], %[xe], %[t0]\n\t"           \
  "sxtb16 %[w0], %[w0]\n\t"                        \
  "smlad %[s0], %[w0], %[xe], %[s0]\n\t"           \
  "smlad %[t0], %[w1], %[xo], %[t0]\n\t"           \
  "sxtb16 %[w1], %[w1]\n\t"                        \
  "smlad %[s0], %[w1], %[xo], %[s0]\n\t"           \
  "smlad %[t1], %[w2], %[xe], %[t1]\n\t"           \
  "sxtb16 %[w2], %[w2]\n\t"                        \
  "smlad %[s1], %[w2], %[xe], %[s1]\n\t"           \
  "smlad %[t1], %[w3], %[xo], %[t1]\n\t"           \
  "sxtb16 %[w3], %[w3]\n\t"                        \
  "smlad %[s1], %[w3], %[xo], %[s1]\n\t"
#define UTVM_DENSE_PAIRED_OPERANDS                                                                             \
  : [s0] "+r"(s0), [t0] "+r"(t0), [s1] "+r"(s1), [t1] "+r"(t1), [xp] "+r"(xp), [wp] "+r"(wp), [xe] "=&r"(xe), \
    [xo] "=&r"(xo), [w0] "=&r"(w0), [w1] "=&r"(w1), [w2] "=&r"(w2), [w3] "=&r"(w3)                            \
  : [end] "r"(end)                                                                                             \
  : "cc", "memory"

/* The same, paired layout. S and T of each pair start at its c0's bias, which T - S cancels;
   c1's bias is read after the loops, which need every register. */
UTVM_INLINE const int8_t* utvm_dense_paired_group(const uint32_t* col, const int8_t* wp, int32_t n4,
                                                  int32_t chunk, const int32_t* bias, int32_t* acc) {
  /* unsigned: T wraps */
  uint32_t s0 = (uint32_t)bias[0], t0 = s0, s1 = (uint32_t)bias[2], t1 = s1;
  int32_t c1 = 0, c3 = 0;
  const uint32_t* xp = col;
  for (int32_t i = 0; i < n4; i += chunk) {
    const int32_t steps = (n4 - i < chunk ? n4 - i : chunk) >> 2;
#if UTVM_ASM
    /* written out: gcc 12 spills when it schedules this itself. The 4-word load names its
       registers in ascending order. Four steps per turn, then the steps left one by one. */
    register uint32_t w0 __asm__("r8"), w1 __asm__("r9"), w2 __asm__("r10"), w3 __asm__("r11");
    uint32_t xe, xo;
    if (steps >= 4) {
      const uint32_t* const end = xp + 2 * (steps & ~3);
      __asm__ volatile("1:\n\t" UTVM_DENSE_PAIRED_STEP UTVM_DENSE_PAIRED_STEP UTVM_DENSE_PAIRED_STEP
                           UTVM_DENSE_PAIRED_STEP
                       "cmp %[xp], %[end]\n\t"
                       "bne 1b\n\t" UTVM_DENSE_PAIRED_OPERANDS);
    }
    if (steps & 3) {
      const uint32_t* const end = xp + 2 * (steps & 3);
      __asm__ volatile("1:\n\t" UTVM_DENSE_PAIRED_STEP
                       "cmp %[xp], %[end]\n\t"
                       "bne 1b\n\t" UTVM_DENSE_PAIRED_OPERANDS);
    }
#else
    /* the same sums from the same bytes: S with w_c0, T with the int16 256 * w_c1 + w_c0 */
    for (int32_t s = 0; s < steps; ++s, xp += 2, wp += 16) {
      for (int32_t k = 0; k < 4; ++k) {
        const int8_t* b = wp + 4 * k; /* pair k / 2, the word of col's word k % 2 */
        const int32_t xa = (int32_t)(xp[k & 1] & 0xFFFFu), xb = (int32_t)(xp[k & 1] >> 16);
        const uint32_t s_add = (uint32_t)(b[0] * xa + b[2] * xb);
        const uint32_t t_add = (uint32_t)(((uint8_t)b[0] + 256 * b[1]) * xa + ((uint8_t)b[2] + 256 * b[3]) * xb);
        if (k < 2) {
          s0 += s_add;
          t0 += t_add;
        } else {
          s1 += s_add;
          t1 += t_add;
        }
      }
    }
#endif
    c1 += (int32_t)(t0 - s0) >> 8;
    c3 += (int32_t)(t1 - s1) >> 8;
    t0 = s0;
    t1 = s1;
  }
  acc[0] = (int32_t)s0;
  acc[1] = bias[1] + c1;
  acc[2] = (int32_t)s1;
  acc[3] = bias[3] + c3;
  return wp;
}
#undef UTVM_DENSE_PAIRED_STEP
#undef UTVM_DENSE_PAIRED_OPERANDS

UTVM_NHWC_KERNEL int32_t utvm_dense_u8s8(const uint8_t* x, const int8_t* w, const int32_t* bias, uint8_t* y,
                                         int16_t* col, int32_t n, int32_t out_c, int32_t paired, int32_t chunk,
                                         int32_t m_stride, int32_t out_zp, int32_t lo, int32_t hi) {
  const int32_t zp = out_zp, flo = lo, fhi = hi;
  const int32_t n4 = (n + 3) & ~3, o4 = (out_c + 3) & ~3;
  const int32_t* const m_bits = bias + o4;
  const int32_t* const slots = m_bits + (m_stride ? o4 : 1);
  /* a per-tensor multiplier read once: the byte stores may alias it as far as gcc knows */
  const int32_t m_all = m_bits[0];
  uint32_t* const xw = (uint32_t*)(void*)col;
  utvm_dense_widen_u8(x, xw, n);
  const int8_t* wp = w;
  for (int32_t o = 0; o < o4; o += 4) {
    int32_t acc[4];
    wp = paired ? utvm_dense_paired_group(xw, wp, n4, chunk, bias + o, acc)
                : utvm_dense_grouped_group(xw, wp, n4, bias + o, acc);
    /* otherwise computed channel j to output j of the group, as the byte of (0, 1, 2, 3) would */
    const uint32_t code = paired == 2 ? (uint32_t)slots[o >> 4] >> (8 * ((o >> 2) & 3)) : 0xE4u;
#pragma GCC unroll 4
    for (int32_t j = 0; j < 4; ++j) {
      const int32_t at = o + (int32_t)((code >> (2 * j)) & 3u);
      if ((out_c & 3) == 0 || at < out_c) {
        y[at] = utvm_requantize_bits(acc[j], m_stride ? m_bits[o + j] : m_all, zp, flo, fhi);
      }
    }
  }
  return 0;
}

/* ---------------------------------------------------------------- average pooling to one pixel
 * y[c] = requantize(sum over rows [r0, r1) and columns [c0, c1) of (x[r][q][c] - zp)), the
 * input's scale and zero point kept (qnnpack's global average pooling and any pool whose one
 * window covers those rows and columns). */
UTVM_NHWC_KERNEL int32_t utvm_avgpool_u8(const uint8_t* x, const float* mult, uint8_t* y, int32_t in_w, int32_t chans,
                                         int32_t r0, int32_t r1, int32_t c0, int32_t c1, int32_t zp) {
  const int32_t n = (r1 - r0) * (c1 - c0);
  int32_t c = 0;
#if UTVM_DSP
  /* 4 channels per word, summed in 16-bit lanes (__uxtab16), while n * 255 fits in one */
  if (n <= 257) {
    for (; c + 4 <= chans; c += 4) {
      uint32_t even = 0, odd = 0;
      for (int32_t r = r0; r < r1; ++r) {
        const uint8_t* row = x + (r * in_w) * chans + c;
        for (int32_t q = c0; q < c1; ++q) {
          const uint32_t v = utvm_load32(row + q * chans);
          even = __uxtab16(even, v);
          __asm__("uxtab16 %0, %1, %2, ror #8" : "=r"(odd) : "r"(odd), "r"(v));
        }
      }
      const int32_t sums[4] = {(int32_t)(even & 0xFFFFu), (int32_t)(odd & 0xFFFFu), (int32_t)(even >> 16),
                               (int32_t)(odd >> 16)};
      for (int32_t j = 0; j < 4; ++j) {
        y[c + j] = utvm_requantize(sums[j] - n * zp, mult[0], zp, 0, 255);
      }
    }
  }
#endif
  for (; c < chans; ++c) {
    int32_t acc = 0;
    for (int32_t r = r0; r < r1; ++r) {
      const uint8_t* row = x + (r * in_w) * chans + c;
      for (int32_t q = c0; q < c1; ++q) {
        acc += row[q * chans];
      }
    }
    y[c] = utvm_requantize(acc - n * zp, mult[0], zp, 0, 255);
  }
  return 0;
}

/* ---------------------------------------------------------------- quantize
 * The model's float NCHW input → uint8 NHWC: q = clip(rint(x * inv_scale) + zp, 0, 255) in
 * float32, as the golden model's Quantize (on the DSP the rounding conversion and an integer
 * clip, the same values as for utvm_requantize). */
UTVM_NHWC_KERNEL int32_t utvm_quantize_f32_u8(const float* x, uint8_t* y, int32_t chans, int32_t h, int32_t w,
                                              float inv_scale, int32_t zp) {
  const int32_t plane = h * w;
  for (int32_t c = 0; c < chans; ++c) {
    const float* src = x + c * plane;
    uint8_t* dst = y + c;
    for (int32_t i = 0; i < plane; ++i, dst += chans) {
#if UTVM_DSP
      const float f = src[i] * inv_scale;
      float t;
      int32_t r;
      __asm__("vcvtr.s32.f32 %[t], %[f]\n\tvmov %[r], %[t]" : [t] "=&t"(t), [r] "=r"(r) : [f] "t"(f));
      *dst = (uint8_t)__usat(__qadd(r, zp), 8);
#else
      *dst = (uint8_t)fmaxf(fminf(nearbyintf(src[i] * inv_scale) + (float)zp, 255.0f), 0.0f);
#endif
    }
  }
  return 0;
}

#endif /* UTVM_CORTEX_M_KERNELS_NHWC_H_ */
