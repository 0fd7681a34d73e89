/*
 * RIOT's platform (firmware/platform.h) for the STM32F746G-DISCO and the native64 board.
 *
 * Input: on a real board the UART interrupt fills RIOT's stdin ring buffer (module `stdin`,
 * STDIO_RX_BUFSIZE in the Makefile) and stdio_read() takes bytes from it. On native boards
 * that module is left out: its SIGIO reader and any other reader of fd 0 take bytes from
 * each other, and RIOT native's getchar() returns a plain `char`, so pixel 255 would read as
 * EOF. There the firmware reads fd 0 itself through RIOT native's read wrapper.
 * Output: stdio_write(), the board's stdio backend (UART; fd 1 on native), no printf.
 * Time: on Cortex-M3/M4/M7 (ARMv7-M) the DWT cycle counter, with ZTIMER_USEC beside it, so a
 * reply carries cycles and microseconds; elsewhere (Cortex-M0, native) ZTIMER_USEC alone. A
 * core whose DWT has no cycle counter (DWT_CTRL.NOCYCCNT, or a counter that does not move)
 * falls back to microseconds at platform_init().
 * Pauses (platform_input_ready): on native, poll() on fd 0; on a board, the stdin ring buffer
 * is watched with stdio_available() every millisecond against ZTIMER_USEC. RIOT offers no
 * stdio read with a timeout except through the stdin isrpipe itself, which is deprecated for
 * direct use; the polling lasts one pause after each burst of input, then stdio_read() blocks.
 */
#include "platform.h"

#include <errno.h>

#include "periph_conf.h"
#include "stdio_base.h"
#include "ztimer.h"

#if IS_USED(MODULE_STDIO_UART)
#include "stdio_uart.h"
#endif

#if (defined(__ARM_ARCH_7M__) || defined(__ARM_ARCH_7EM__)) && !defined(CPU_NATIVE)
#define HAVE_DWT 1
/* The ARMv7-M debug registers by address (ARMv7-M ARM, C1.8): the same on M3, M4 and M7,
 * whatever the CMSIS headers of the board's family call them. */
#define DEMCR (*(volatile uint32_t *)0xE000EDFCu)
#define DEMCR_TRCENA (1u << 24)
#define DWT_CTRL (*(volatile uint32_t *)0xE0001000u)
#define DWT_CTRL_CYCCNTENA 1u
#define DWT_CTRL_NOCYCCNT (1u << 25)
#define DWT_CYCCNT (*(volatile uint32_t *)0xE0001004u)
#define DWT_LAR (*(volatile uint32_t *)0xE0001FB0u) /* Cortex-M7: locked until written */
#define DWT_LAR_KEY 0xC5ACCE55u
#else
#define HAVE_DWT 0
#endif

static uint8_t time_unit = PLATFORM_TIME_US;

#ifdef CPU_NATIVE
#include <poll.h>
#include <unistd.h>
#include "native_internal.h"
#endif

#if !IS_USED(MODULE_STDIN) && !defined(CPU_NATIVE)
#error "platform_riot.c reads stdin: add USEMODULE += stdin for this board"
#endif

#if IS_USED(MODULE_STDIN) && defined(CPU_NATIVE)
#error "native boards: leave out the stdin module (it steals bytes from fd 0)"
#endif

#if !IS_USED(MODULE_STDIO_AVAILABLE) && !defined(CPU_NATIVE)
#error "platform_riot.c needs stdio_available() to see pauses: this board's stdio backend lacks it"
#endif

#define POLL_US 1000u /* how often a board looks at the stdin buffer during a pause */

void platform_init(void)
{
    /* RIOT's auto_init has already started stdio and ztimer before main(). */
#if HAVE_DWT
    DEMCR |= DEMCR_TRCENA;
    DWT_LAR = DWT_LAR_KEY;
    if (!(DWT_CTRL & DWT_CTRL_NOCYCCNT)) {
        DWT_CYCCNT = 0;
        DWT_CTRL |= DWT_CTRL_CYCCNTENA;
        uint32_t start = DWT_CYCCNT;
        for (volatile int i = 0; i < 16; i++) {
        }
        if (DWT_CYCCNT != start) {
            time_unit = PLATFORM_TIME_CYCLES;
        }
    }
#endif
}

static ssize_t read_some(uint8_t *buffer, size_t size)
{
#ifdef CPU_NATIVE
    ssize_t n;
    do {
        n = _native_read(STDIN_FILENO, buffer, size);
    } while (n < 0 && errno == EINTR);
    return n;
#else
    /* blocks until at least one byte is in the ring buffer */
    return stdio_read(buffer, size);
#endif
}

/* whatever has arrived, up to a small chunk: one call per chunk, not per byte */
static uint8_t buffer[64];
static size_t filled, next;

int platform_input_ready(uint32_t wait_ms)
{
    if (next < filled) {
        return 1;
    }
    uint32_t start = ztimer_now(ZTIMER_USEC);
    uint32_t wait_us = wait_ms * 1000u;
#ifdef CPU_NATIVE
    for (;;) {
        uint32_t spent = ztimer_now(ZTIMER_USEC) - start;
        int left_ms = spent >= wait_us ? 0 : (int)((wait_us - spent + 999u) / 1000u);
        struct pollfd fd = { .fd = STDIN_FILENO, .events = POLLIN };
        _native_syscall_enter();
        int n = real_poll(&fd, (nfds_t)1, left_ms);
        int error = errno;
        _native_syscall_leave();
        if (n > 0) {
            return 1; /* a byte, or a hang-up that the read will report */
        }
        if (n == 0 || error != EINTR) {
            return n < 0; /* a failing poll() is left for the read to report */
        }
    }
#else
    while (stdio_available() <= 0) {
        if (ztimer_now(ZTIMER_USEC) - start >= wait_us) {
            return 0;
        }
        ztimer_sleep(ZTIMER_USEC, POLL_US);
    }
    return 1;
#endif
}

int platform_read_byte(void)
{
    if (next >= filled) {
        ssize_t n = read_some(buffer, sizeof buffer);
        if (n <= 0) {
            return -1; /* native: the pty hung up; main() returns and the process exits */
        }
        filled = (size_t)n;
        next = 0;
    }
    return buffer[next++];
}

void platform_write(const void *data, size_t length)
{
    const uint8_t *p = data;
    while (length > 0) {
        ssize_t n = stdio_write(p, length);
        if (n <= 0) {
            return; /* nobody is listening (native: the pty is gone) */
        }
        p += n;
        length -= (size_t)n;
    }
}

uint32_t platform_timestamp(void)
{
#if HAVE_DWT
    if (time_unit == PLATFORM_TIME_CYCLES) {
        return DWT_CYCCNT;
    }
#endif
    return ztimer_now(ZTIMER_USEC);
}

uint8_t platform_time_unit(void)
{
    return time_unit;
}

int platform_timestamp_us(uint32_t *now)
{
    if (time_unit == PLATFORM_TIME_US) {
        return 0;
    }
    *now = ztimer_now(ZTIMER_USEC);
    return 1;
}

uint32_t platform_baud(void)
{
#if IS_USED(MODULE_STDIO_UART)
    return STDIO_UART_BAUDRATE;
#else
    return 0; /* native: a pty; other stdio backends (USB CDC) have no rate of their own */
#endif
}

const char *platform_board_name(void)
{
    return RIOT_BOARD;
}

uint32_t platform_clock_hz(void)
{
#ifdef CPU_NATIVE
    return 0; /* a Linux process: RIOT's nominal native clock means nothing */
#else
    return CLOCK_CORECLOCK;
#endif
}
