/* Reset and vector table for the Cortex-M7 of QEMU's mps2-an500: FPU on, .data copied from
 * flash, .bss zeroed, then main(). Nothing else: no clocks to set up in the emulator. */
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);
void uart0_rx_handler(void);
void timer1_handler(void);

void Reset_Handler(void);
void reset_continue(void);

static void default_handler(void)
{
    for (;;) {
        __asm volatile("wfi");
    }
}

/* The FPU must be on before the first floating-point instruction, and with -mfloat-abi=hard
 * the compiler may use FP registers anywhere in C: enable it in assembly first. */
__attribute__((naked, noreturn)) void Reset_Handler(void)
{
    __asm volatile(
        "ldr r0, =0xE000ED88\n" /* SCB->CPACR */
        "ldr r1, [r0]\n"
        "orr r1, r1, #(0xF << 20)\n" /* CP10 and CP11: full access */
        "str r1, [r0]\n"
        "dsb\n"
        "isb\n"
        "b reset_continue\n");
}

void reset_continue(void)
{
    uint32_t *src = &_sidata;
    for (uint32_t *dst = &_sdata; dst < &_edata;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &_sbss; dst < &_ebss;) {
        *dst++ = 0;
    }
    main();
    /* main() returns only when input is closed, which a UART never is. */
    default_handler();
}

#define IRQS 32

__attribute__((section(".isr_vector"), used))
static void (*const vectors[16 + IRQS])(void) = {
    (void (*)(void))&_estack,
    Reset_Handler,
    default_handler, /* NMI */
    default_handler, /* HardFault */
    default_handler, /* MemManage */
    default_handler, /* BusFault */
    default_handler, /* UsageFault */
    0, 0, 0, 0,
    default_handler, /* SVCall */
    default_handler, /* DebugMonitor */
    0,
    default_handler, /* PendSV */
    default_handler, /* SysTick */
    [16 + 0] = uart0_rx_handler, /* mps2-an500: UART0 RX is IRQ 0, TX is IRQ 1 */
    [16 + 1 ... 16 + 8] = default_handler,
    [16 + 9] = timer1_handler,   /* TIMER0 is IRQ 8, TIMER1 IRQ 9 */
    [16 + 10 ... 16 + IRQS - 1] = default_handler,
};
