/* Small loops whose Cortex-M7 cycle counts follow from published measurements, for checking
 * the cycle estimate (utils/cycle_estimate.py; tests/test_cycle_estimate.py holds the expected
 * figures and their source). Linked like bench/bench_m7.c (firmware/m7 startup, UART, linker
 * script); each loop runs between bench_marker_start() and bench_marker_stop(), an empty pass
 * first; semihosting SYS_EXIT ends QEMU. */
#include <stdint.h>

#include "platform.h"
#include "semihosting_exit.h"

#define ITERATIONS 1000

__attribute__((noinline, noipa, used)) void bench_marker_start(void)
{
    __asm volatile("" ::: "memory");
}

__attribute__((noinline, noipa, used)) void bench_marker_stop(void)
{
    __asm volatile("nop" ::: "memory");
}

uint32_t loop_buffer[64] __attribute__((aligned(32)));

/* naked: the assembly reads the parameters from r0 and r1 itself */
#pragma GCC diagnostic ignored "-Wunused-parameter"

/* Each loop: r0 = iterations, r1 = &loop_buffer; the body, then subs/bne. */
#define LOOP(name, body)                                                          \
    __attribute__((naked, noinline)) void name(uint32_t n, uint32_t *buffer)     \
    {                                                                             \
        __asm volatile("push {r4-r11, lr}\n"                                      \
                       "mov r9, r1\n"                                             \
                       "movs r2, #1\n movs r3, #2\n movs r4, #3\n movs r5, #4\n"  \
                       ".balign 8\n"                                              \
                       "1:\n" body                                                \
                       "subs r0, r0, #1\n"                                        \
                       "bne 1b\n"                                                 \
                       "pop {r4-r11, pc}\n");                                     \
    }

/* 32 independent adds of a small constant: dual-issued in pairs */
LOOP(alu_pairs, ".rept 4\n add.w r1, r1, #1\n add.w r2, r2, #1\n add.w r3, r3, #1\n add.w r4, r4, #1\n"
                " add.w r5, r5, #1\n add.w r6, r6, #1\n add.w r7, r7, #1\n add.w r8, r8, #1\n .endr\n")
/* 16 SMLADs on one accumulator: one per cycle */
LOOP(mac_chain, ".rept 16\n smlad r1, r2, r3, r1\n .endr\n")
/* 16 MULs each feeding the next: two cycles each */
LOOP(mul_chain, ".rept 16\n mul r1, r1, r2\n .endr\n")
/* 4 LDMs of 8 registers: four cycles each */
LOOP(ldm_eight, ".rept 4\n ldm r9, {r1-r8}\n .endr\n")
/* 16 word stores: never two in one cycle */
LOOP(stores, ".rept 4\n str r2, [r9]\n str r3, [r9, #4]\n str r4, [r9, #8]\n str r5, [r9, #12]\n .endr\n")
/* 16 single-precision adds each feeding the next: three cycles each */
LOOP(fadd_chain, ".rept 16\n vadd.f32 s0, s0, s1\n .endr\n")
/* 16 independent single-precision adds: one per cycle (no dual issue) */
LOOP(fadd_independent, ".rept 4\n vadd.f32 s2, s2, s1\n vadd.f32 s3, s3, s1\n vadd.f32 s4, s4, s1\n"
                       " vadd.f32 s5, s5, s1\n .endr\n")
/* 16 word loads each beside an independent add: one pair per cycle */
LOOP(load_alu_pairs, ".rept 4\n ldr r2, [r9]\n add.w r6, r6, #1\n ldr r3, [r9, #8]\n add.w r7, r7, #1\n"
                     " ldr r4, [r9, #16]\n add.w r8, r8, #1\n ldr r5, [r9, #24]\n add.w r10, r10, #1\n .endr\n")

typedef void (*loop_fn)(uint32_t, uint32_t *);
static const loop_fn loops[] = {alu_pairs, mac_chain, mul_chain, ldm_eight, stores, fadd_chain,
                                fadd_independent, load_alu_pairs};

int main(void)
{
    platform_init();
    bench_marker_start(); /* the empty pass */
    bench_marker_stop();
    for (unsigned i = 0; i < sizeof loops / sizeof loops[0]; i++) {
        bench_marker_start();
        loops[i](ITERATIONS, loop_buffer);
        bench_marker_stop();
    }
    platform_write("END\n", 4);
    semihosting_exit();
    return 0;
}
