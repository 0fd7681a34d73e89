/* The host stand-in's platform: a Linux process whose fd 0 and fd 1 are the "serial port"
 * (the launcher connects both to a pty). Raw read()/write() on the descriptors: no stdio
 * buffering, so a reply leaves as soon as it is written and a frame needs no newline. */
#include "platform.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

void platform_init(void)
{
    /* A client that goes away must not kill us with SIGPIPE; write() reports it instead. */
    signal(SIGPIPE, SIG_IGN);
}

static unsigned char buffer[4096];
static ssize_t filled, next;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int platform_input_ready(uint32_t wait_ms)
{
    if (next < filled) {
        return 1;
    }
    uint64_t deadline = now_ms() + wait_ms;
    for (;;) {
        struct pollfd fd = { .fd = 0, .events = POLLIN };
        uint64_t now = now_ms();
        int left = now >= deadline ? 0 : (int)(deadline - now);
        int n = poll(&fd, 1, left);
        if (n > 0) {
            return 1; /* a byte, or a hang-up that read() will report */
        }
        if (n == 0 || errno != EINTR) {
            return n < 0; /* a failing poll() is left for read() to report */
        }
    }
}

int platform_read_byte(void)
{
    if (next >= filled) {
        ssize_t n;
        do {
            n = read(0, buffer, sizeof buffer);
        } while (n < 0 && errno == EINTR);
        if (n <= 0) {
            return -1;
        }
        filled = n;
        next = 0;
    }
    return buffer[next++];
}

void platform_write(const void *data, size_t length)
{
    const char *p = data;
    while (length > 0) {
        ssize_t n = write(1, p, length);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return; /* the other side is gone; reading will see it and end the program */
        }
        p += n;
        length -= (size_t)n;
    }
}

uint32_t platform_timestamp(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
}

uint8_t platform_time_unit(void)
{
    return PLATFORM_TIME_US;
}

const char *platform_board_name(void)
{
    return "host";
}

uint32_t platform_clock_hz(void)
{
    return 0;
}

int platform_timestamp_us(uint32_t *now)
{
    (void)now;
    return 0; /* platform_timestamp() is in microseconds already */
}

uint32_t platform_baud(void)
{
    return 0; /* a pty */
}
