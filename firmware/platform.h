/*
 * The few things 0301mcu_mnist.c needs from the board it runs on. Each target provides one
 * C file implementing all of them, and nothing else of the firmware changes:
 *
 *   firmware/platform_host.c   host stand-in: stdin/stdout of a Linux process (behind a pty)
 *   firmware/m7/platform_m7.c  QEMU mps2-an500 (Cortex-M7): CMSDK UART0 and TIMER0
 *   firmware/platform_riot.c   RIOT: stm32f746g-disco and native64
 *
 * Rules for an implementation:
 * - platform_read_byte() blocks until a byte arrives and returns it (0..255), byte for byte
 *   as sent: no echo, no line-ending translation, no buffering that waits for a newline (a
 *   binary frame has no newline). It returns -1 only when input is closed for good (EOF,
 *   hang-up); the firmware then returns from main(). It must not share fd 0 with another
 *   reader (on RIOT native64, RIOT's stdin module and glibc's stdio both read fd 0 and steal
 *   bytes from each other). The firmware never calls scanf.
 * - platform_input_ready(wait_ms) returns 1 as soon as platform_read_byte() would not block (a
 *   byte is buffered, or input is closed for good), 0 once wait_ms milliseconds pass without
 *   a byte. It consumes nothing. The firmware calls it after each burst of input to see a
 *   pause (PROTO_RESYNC_PAUSE_MS, docs/protocol.md "Pauses"), so it must not lose or reorder
 *   bytes, and the wait only has to be about right: wait_ms or a little longer, never
 *   shorter than wait_ms minus one tick of the clock it uses.
 * - platform_write() sends all bytes before it returns (or queues them in order); replies
 *   are at most 800 bytes and are written in one or two calls.
 * - platform_timestamp() is a free-running counter in the unit platform_time_unit() names;
 *   the firmware only takes differences (uint32_t, modulo 2^32), so it may wrap, but one
 *   inference (a few ms to a few s) must fit in 2^32 units.
 * - platform_time_unit(): PLATFORM_TIME_US (RIOT ztimer / host clock), PLATFORM_TIME_CYCLES
 *   (the DWT cycle counter of a Cortex-M3/M4/M7 under RIOT), PLATFORM_TIME_INSTRUCTIONS (QEMU
 *   under -icount shift=0). It may be decided at run time (a core without a cycle counter).
 * - platform_timestamp_us(&now): where the main unit is not microseconds but the board also
 *   has a microsecond clock (RIOT's ZTIMER_USEC next to the cycle counter), sets now and
 *   returns 1, so a reply carries both; returns 0 where there is no such second clock.
 * - platform_baud(): the UART's configured rate (RIOT's STDIO_UART_BAUDRATE, `make BAUD=`),
 *   0 where the "serial port" is a pty with no rate (host, native64).
 * - platform_board_name(): a short word without spaces, e.g. "stm32f746g-disco", "native64",
 *   "host", "qemu-m7"; it goes into the banner and the INFO reply.
 * - platform_clock_hz(): the CPU clock, 0 where it means nothing (host, emulator).
 * - platform_init() runs first, before any other call: clocks, UART, timers, stdio modes.
 */
#ifndef MNIST_PLATFORM_H
#define MNIST_PLATFORM_H

#include <stddef.h>
#include <stdint.h>

#define PLATFORM_TIME_US 0           /* = PROTO_TIME_US */
#define PLATFORM_TIME_CYCLES 1       /* = PROTO_TIME_CYCLES */
#define PLATFORM_TIME_INSTRUCTIONS 2 /* = PROTO_TIME_INSTRUCTIONS */

void platform_init(void);
int platform_read_byte(void);
int platform_input_ready(uint32_t wait_ms);
void platform_write(const void *data, size_t length);
uint32_t platform_timestamp(void);
uint8_t platform_time_unit(void);
int platform_timestamp_us(uint32_t *now);
uint32_t platform_baud(void);
const char *platform_board_name(void);
uint32_t platform_clock_hz(void);

#endif
