/* The emulated Cortex-M7 (QEMU mps2-an500): CMSDK UART0 as the serial console, CMSDK TIMER0
 * as the clock. Under -icount shift=0 one instruction is one virtual nanosecond, so the 25 MHz
 * timer ticks once per 40 instructions: elapsed ticks x 40 = instructions executed, the same
 * on every run. (QEMU does not model the DWT cycle counter: it reads 0, so this target
 * reports instructions, and the validation puts the benchmark's cycle estimate beside them.)
 *
 * A pause in the input is measured on the same virtual clock. While the CPU sleeps in WFI,
 * QEMU's -icount (with its default sleep=on) lets virtual time follow the host's clock up to
 * the next timer deadline, so quiet on the pty lasts as long in virtual time (checked by
 * tests/test_firmware_resync.py). TIMER1's interrupt is that deadline: it wakes WFI when the
 * wait is over. */
#include "platform.h"

#define UART0_BASE 0x40004000u
#define TIMER0_BASE 0x40000000u
#define TIMER1_BASE 0x40001000u
#define NVIC_ISER0 (*(volatile uint32_t *)0xE000E100u)
#define UART0_RX_IRQ 0
#define TIMER1_IRQ 9

typedef struct {
    volatile uint32_t data;
    volatile uint32_t state;     /* bit 0: TX full, bit 1: RX full */
    volatile uint32_t ctrl;      /* bit 0: TX on, bit 1: RX on, bit 3: RX interrupt */
    volatile uint32_t intstatus; /* write 1 to clear; bit 1: RX */
    volatile uint32_t bauddiv;
} cmsdk_uart;

typedef struct {
    volatile uint32_t ctrl;      /* bit 0: enable */
    volatile uint32_t value;     /* counts down */
    volatile uint32_t reload;
    volatile uint32_t intstatus;
} cmsdk_timer;

#define UART0 ((cmsdk_uart *)UART0_BASE)
#define TIMER0 ((cmsdk_timer *)TIMER0_BASE)
#define TIMER1 ((cmsdk_timer *)TIMER1_BASE)
#define TIMER_CTRL_ON 1u
#define TIMER_CTRL_IRQ 8u
#define UART_TX_FULL 1u
#define UART_RX_FULL 2u
#define UART_CTRL_ON 3u
#define UART_CTRL_RX_IRQ 8u
#define UART_INT_RX 2u
#define SYSCLK_HZ 25000000u
#ifndef PLATFORM_BAUD
#define PLATFORM_BAUD 115200u /* QEMU ignores the divisor; set so the firmware is a real one */
#endif
#define INSTRUCTIONS_PER_TICK 40u /* 1 GHz of icount time / 25 MHz */

/* Bytes the RX interrupt took from the UART while the main loop was busy (an inference takes
 * a few million instructions; the UART holds one byte). When the ring is full the interrupt
 * turns itself off and the byte stays in the UART: QEMU then waits, nothing is lost. */
#define RING_SIZE 2048u
static volatile uint8_t ring[RING_SIZE];
static volatile uint32_t ring_head, ring_tail;

void uart0_rx_handler(void)
{
    while (UART0->state & UART_RX_FULL) {
        if (ring_head - ring_tail >= RING_SIZE) {
            UART0->ctrl &= ~UART_CTRL_RX_IRQ;
            break;
        }
        ring[ring_head % RING_SIZE] = (uint8_t)UART0->data;
        ring_head++;
    }
    UART0->intstatus = UART_INT_RX;
}

/* Only wakes the CPU: platform_input_ready() reads the time from TIMER0. */
void timer1_handler(void)
{
    TIMER1->intstatus = 1;
}

void platform_init(void)
{
    UART0->bauddiv = SYSCLK_HZ / PLATFORM_BAUD;
    UART0->ctrl = UART_CTRL_ON | UART_CTRL_RX_IRQ;
    NVIC_ISER0 = (1u << UART0_RX_IRQ) | (1u << TIMER1_IRQ);
    TIMER0->ctrl = 0;
    TIMER0->reload = 0xFFFFFFFFu;
    TIMER0->value = 0xFFFFFFFFu;
    TIMER0->ctrl = TIMER_CTRL_ON;
    TIMER1->ctrl = 0;
}

static uint32_t ticks_now(void)
{
    return 0xFFFFFFFFu - TIMER0->value; /* counts up, wraps every 2^32 ticks */
}

/* With interrupts masked: whether a byte is waiting in the ring or in the UART. */
static int byte_waiting(void)
{
    return ring_head != ring_tail || (UART0->state & UART_RX_FULL);
}

int platform_read_byte(void)
{
    for (;;) {
        int c = -1;
        __asm volatile("cpsid i" ::: "memory");
        if (ring_head != ring_tail) {
            c = ring[ring_tail % RING_SIZE];
            ring_tail++;
            UART0->ctrl |= UART_CTRL_RX_IRQ;
        } else if (UART0->state & UART_RX_FULL) {
            /* a byte left in the UART while the interrupt was off raises no new interrupt */
            c = (int)(UART0->data & 0xFF);
        } else {
            /* Sleep with interrupts masked: a byte that arrived after the checks above still
             * wakes WFI, and its handler runs right after cpsie. The host CPU idles meanwhile. */
            __asm volatile("wfi" ::: "memory");
        }
        __asm volatile("cpsie i\n isb" ::: "memory");
        if (c >= 0) {
            return c;
        }
    }
}

int platform_input_ready(uint32_t wait_ms)
{
    uint32_t wait = wait_ms * (SYSCLK_HZ / 1000u); /* ticks; a few seconds fit in 32 bits */
    uint32_t start = ticks_now();
    /* TIMER1 fires every `wait` ticks from now: the first one ends the wait. */
    TIMER1->ctrl = 0;
    TIMER1->intstatus = 1;
    TIMER1->reload = wait;
    TIMER1->value = wait;
    TIMER1->ctrl = TIMER_CTRL_ON | TIMER_CTRL_IRQ;
    int ready;
    for (;;) {
        __asm volatile("cpsid i" ::: "memory");
        ready = byte_waiting();
        int over = !ready && ticks_now() - start >= wait;
        if (!ready && !over) {
            __asm volatile("wfi" ::: "memory"); /* a byte or TIMER1, whichever comes first */
        }
        __asm volatile("cpsie i\n isb" ::: "memory");
        if (ready || over) {
            break;
        }
    }
    TIMER1->ctrl = 0;
    TIMER1->intstatus = 1;
    return ready;
}

void platform_write(const void *data, size_t length)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < length; i++) {
        while (UART0->state & UART_TX_FULL) {
        }
        UART0->data = p[i];
    }
}

uint32_t platform_timestamp(void)
{
    /* x40 keeps differences right modulo 2^32 */
    return ticks_now() * INSTRUCTIONS_PER_TICK;
}

uint8_t platform_time_unit(void)
{
    return PLATFORM_TIME_INSTRUCTIONS;
}

const char *platform_board_name(void)
{
    return "qemu-m7";
}

uint32_t platform_clock_hz(void)
{
    return 0;
}

int platform_timestamp_us(uint32_t *now)
{
    (void)now;
    return 0; /* virtual time under -icount counts instructions, not the host's microseconds */
}

uint32_t platform_baud(void)
{
    return PLATFORM_BAUD;
}
