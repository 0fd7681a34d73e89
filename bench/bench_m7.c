/* Bare-metal benchmark harness for the emulated Cortex-M7 (QEMU mps2-an500), linked with
 * firmware/m7/startup.c, firmware/m7/platform_m7.c (UART0 and TIMER0), the linker script
 * firmware/m7/mps2_an500.ld, the model library and the images utils/bench.py generates
 * (bench_images.c: `bench_image_count` MNIST test images, uint8 28x28).
 *
 * For each image: input = pixel / 255.0f (as 0301mcu_mnist.c does), paint the free stack,
 * read the timer, call bench_marker_start(), tvmgen_default_run(), bench_marker_stop(), read
 * the timer, scan the stack. The TCG plugin bench/insn_count_plugin.c counts the instructions
 * between the two markers; the timer (-icount shift=0: one tick per 40 instructions) checks it.
 * First comes an empty pass (markers only) whose count is the markers' own cost; last a
 * second run of image 0, which must cost the same. Lines on UART0, all numbers in hex:
 *
 *   BENCH <images> <arena bytes> <model hash>
 *   PASS <index> <rc> <timer instructions> <stack bytes> <10 output float bits>[ <10 tap float bits>]
 *   END
 *
 * index ffffffff is the empty pass. Compiled with -DTVMGEN_DEFAULT_PROFILE (with the library),
 * it defines the library's per-kernel hook for the per-layer breakdown. The tap (int8 libraries compiled with
 * -DTVMGEN_DEFAULT_DEBUG_TAP) is the dequantized logits the last kernel reads, from which
 * Python recovers the uint8 logits. Then semihosting SYS_EXIT ends QEMU. */
#include <stdint.h>
#include <string.h>

#include "platform.h"
#include "tvmgen_default.h"
#include "semihosting_exit.h"

/* The model's sizes come from its header: any input and output shape. */
#define IN_FLOATS (TVMGEN_DEFAULT_INPUT0_SIZE / sizeof(float))
#define OUT_FLOATS (TVMGEN_DEFAULT_OUTPUT_SIZE / sizeof(float))
#define PAINT 0xC5C5C5C5u
#define EMPTY_PASS 0xFFFFFFFFu

/* Inputs as bytes (flash is scarce), made floats as low + span * (byte / 255): MNIST's
   pixel / 255 with low 0 and span 1, the same float operations as the host's (utils/bench.py). */
extern const uint32_t bench_image_count;
extern const uint8_t bench_images[][IN_FLOATS];
extern const float bench_input_low;
extern const float bench_input_span;
extern uint32_t _ebss; /* the stack lies between the end of .bss and _estack */
#ifdef TVMGEN_DEFAULT_DEBUG_TAP
const void *tvmgen_default_debug_tap_ptr(void);
#endif

/* The plugin's markers: distinct, never inlined or merged, called around the inference. */
__attribute__((noinline, noipa, used)) void bench_marker_start(void)
{
    __asm volatile("" ::: "memory");
}

__attribute__((noinline, noipa, used)) void bench_marker_stop(void)
{
    __asm volatile("nop" ::: "memory");
}

#ifdef TVMGEN_DEFAULT_PROFILE
/* The profiling build: the library calls this before and after each kernel call; the plugin
 * (layer=<its address>) cuts the pass into segments there, glue and kernels in turn. */
__attribute__((noinline, noipa, used)) void tvmgen_default_profile_mark(int32_t call, int32_t after)
{
    (void)call, (void)after;
    __asm volatile("" ::: "memory");
}
#endif

static float input[IN_FLOATS];
static float output[OUT_FLOATS];

static void put(const char *text)
{
    platform_write(text, strlen(text));
}

static void put_hex(uint32_t value)
{
    char text[10];
    int n = 0;
    text[n++] = ' ';
    for (int shift = 28; shift >= 0; shift -= 4) {
        text[n++] = "0123456789abcdef"[(value >> shift) & 0xFu];
    }
    platform_write(text, (size_t)n);
}

static void put_floats(const float *values, unsigned count)
{
    for (unsigned i = 0; i < count; i++) {
        uint32_t bits;
        memcpy(&bits, &values[i], sizeof bits);
        put_hex(bits);
    }
}

/* One pass; noinline so that its frame is complete when it reads SP: everything below SP is
 * free stack, painted before and scanned after. */
__attribute__((noinline)) static void pass(uint32_t index)
{
    struct tvmgen_default_inputs inputs = {input};
    struct tvmgen_default_outputs outputs = {output};
    volatile uint32_t *sp;
    volatile uint32_t *bottom = &_ebss;
    int32_t rc = 0;

    __asm volatile("mov %0, sp" : "=r"(sp));
    for (volatile uint32_t *p = bottom; p < sp; p++) {
        *p = PAINT;
    }
    uint32_t t0 = platform_timestamp();
    bench_marker_start();
    if (index != EMPTY_PASS) {
        rc = tvmgen_default_run(&inputs, &outputs);
    }
    bench_marker_stop();
    uint32_t t1 = platform_timestamp();
    volatile uint32_t *low = bottom;
    while (low < sp && *low == PAINT) {
        low++;
    }

    put("PASS");
    put_hex(index);
    put_hex((uint32_t)rc);
    put_hex(t1 - t0);
    put_hex((uint32_t)((uintptr_t)sp - (uintptr_t)low));
    if (index != EMPTY_PASS) {
        put_floats(output, OUT_FLOATS);
#ifdef TVMGEN_DEFAULT_DEBUG_TAP
        put_floats((const float *)tvmgen_default_debug_tap_ptr(), OUT_FLOATS);
#endif
    }
    put("\n");
}

static void load(uint32_t image)
{
    for (uint32_t i = 0; i < IN_FLOATS; i++) {
        input[i] = bench_input_low + bench_input_span * ((float)bench_images[image][i] / 255.0f);
    }
}

int main(void)
{
    platform_init();
    put("BENCH");
    put_hex(bench_image_count);
    put_hex(TVMGEN_DEFAULT_WORKSPACE_SIZE);
    put(" " TVMGEN_DEFAULT_MODEL_HASH "\n");
    pass(EMPTY_PASS);
    for (uint32_t i = 0; i < bench_image_count; i++) {
        load(i);
        pass(i);
    }
    load(0);
    pass(0); /* again: the count must not change */
    put("END\n");
    semihosting_exit();
    return 0;
}
