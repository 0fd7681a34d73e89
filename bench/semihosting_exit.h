/* Ends the QEMU run from the bare-metal bench programs (bench_m7.c, cycle_loops.c): semihosting
 * SYS_EXIT with ADP_Stopped_ApplicationExit (QEMU runs with -semihosting-config enable=on). */
#ifndef BENCH_SEMIHOSTING_EXIT_H_
#define BENCH_SEMIHOSTING_EXIT_H_

#include <stdint.h>

static inline void semihosting_exit(void)
{
    register uint32_t op __asm("r0") = 0x18u;          /* SYS_EXIT */
    register uint32_t reason __asm("r1") = 0x20026u;   /* ADP_Stopped_ApplicationExit */
    __asm volatile("bkpt 0xab" : : "r"(op), "r"(reason) : "memory");
}

#endif /* BENCH_SEMIHOSTING_EXIT_H_ */
