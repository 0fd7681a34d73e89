/*
 * MNIST on a microcontroller: reads images from the serial console, runs the TVM-compiled
 * model (tvmgen_default.h, from pkg/mnistCNN/mnistCNN.tar) and answers with the digit, the
 * 10 scores and the time the inference took on the device.
 *
 * The wire format (binary frames and the text form) is docs/protocol.md, parsed byte
 * by byte by firmware/protocol.c; the board is reached only through firmware/platform.h, so
 * this same file runs on the STM32F746G-DISCO (RIOT), RIOT native64, the host stand-in and
 * the emulated Cortex-M7. No scanf, no floating-point printf: small stacks, no printf_float.
 */
#include <stdint.h>
#include <string.h>

#include "platform.h"
#include "protocol.h"
#include "tvmgen_default.h"

#ifndef TVMGEN_DEFAULT_MODEL_HASH
#define TVMGEN_DEFAULT_MODEL_HASH "unknown"
#endif

static float input[PROTO_PIXELS];
static float output[PROTO_CLASSES];

/* The generated header gives sizes in bytes (microTVM's convention). */
_Static_assert(TVMGEN_DEFAULT_INPUT0_SIZE == sizeof(input), "the model does not take 28x28 floats");
_Static_assert(TVMGEN_DEFAULT_OUTPUT_SIZE == sizeof(output), "the model does not give 10 floats");

static struct tvmgen_default_inputs inputs = { .input0 = input };
static struct tvmgen_default_outputs outputs = { .output = output };

static proto_parser parser;
static uint8_t reply[PROTO_MAX_FRAME];
static char line[192];
static char info_pairs[192];

static void write_text(const char *text)
{
    platform_write(text, strlen(text));
}

static void build_info_pairs(void)
{
    proto_text t;
    proto_text_init(&t, info_pairs, sizeof info_pairs);
    proto_text_str(&t, "model=");
    proto_text_str(&t, TVMGEN_DEFAULT_MODEL_HASH);
    proto_text_str(&t, " arena=");
    proto_text_u32(&t, (uint32_t)TVMGEN_DEFAULT_WORKSPACE_SIZE);
    proto_text_str(&t, " board=");
    proto_text_str(&t, platform_board_name());
    proto_text_str(&t, " clock_hz=");
    proto_text_u32(&t, platform_clock_hz());
    proto_text_str(&t, " time_unit=");
    proto_text_str(&t, proto_time_unit_name(platform_time_unit()));
    proto_text_str(&t, " baud=");
    proto_text_u32(&t, platform_baud());
    proto_text_str(&t, " protocol=");
    proto_text_u32(&t, PROTO_VERSION);
}

static void reply_error(const proto_event *ev, uint8_t code, const char *detail)
{
    if (ev->binary) {
        platform_write(reply, proto_encode_error(reply, sizeof reply, ev->seq, code, detail));
    } else {
        proto_format_error_line(line, sizeof line, code, detail);
        write_text(line);
    }
}

static void infer(const proto_event *ev)
{
    for (int i = 0; i < PROTO_PIXELS; i++) {
        input[i] = ev->pixels[i] / 255.0f;
    }
    uint32_t start_us = 0, end_us = 0;
    int have_us = platform_timestamp_us(&start_us);
    uint32_t start = platform_timestamp();
    int32_t status = tvmgen_default_run(&inputs, &outputs);
    uint32_t elapsed = platform_timestamp() - start;
    if (have_us) {
        platform_timestamp_us(&end_us);
    }
    uint32_t elapsed_us = have_us ? end_us - start_us : PROTO_NO_MICROSECONDS;
    if (status != 0) {
        char detail[40];
        proto_text t;
        proto_text_init(&t, detail, sizeof detail);
        proto_text_str(&t, "tvmgen_default_run returned ");
        proto_text_i32(&t, status);
        reply_error(ev, PROTO_ERR_INFERENCE_FAILED, detail);
        return;
    }
    uint8_t digit = 0;
    for (uint8_t i = 1; i < PROTO_CLASSES; i++) {
        if (output[i] > output[digit]) {
            digit = i;
        }
    }
    if (ev->compact) {
        platform_write(reply, proto_encode_result_short(reply, sizeof reply, ev->seq, digit,
                                                        platform_time_unit(), elapsed,
                                                        elapsed_us, output));
    } else if (ev->binary) {
        platform_write(reply, proto_encode_result(reply, sizeof reply, ev->seq, digit,
                                                  platform_time_unit(), elapsed, output));
    } else {
        proto_format_result_line(line, sizeof line, digit, elapsed, platform_time_unit(), output);
        write_text(line);
    }
}

static void on_request(const proto_event *ev, void *context)
{
    (void)context;
    switch (ev->kind) {
    case PROTO_EVENT_INFER:
        infer(ev);
        break;
    case PROTO_EVENT_INFO:
        if (ev->binary) {
            platform_write(reply, proto_encode_info(reply, sizeof reply, ev->seq, info_pairs));
        } else {
            write_text("info: ");
            write_text(info_pairs);
            write_text("\n");
        }
        break;
    case PROTO_EVENT_ERROR:
        reply_error(ev, ev->error, ev->detail);
        break;
    }
}

int main(void)
{
    platform_init();
    build_info_pairs();
    write_text("MNIST ready: ");
    write_text(info_pairs);
    write_text("\n");
    proto_init(&parser, on_request, NULL);
    /* After each burst of input, a pause lets the parser drop a text line that noise has
     * spoiled (docs/protocol.md, "Pauses"). One pause per quiet spell: then block. */
    int quiet = 1;
    for (;;) {
        if (!quiet && !platform_input_ready(PROTO_RESYNC_PAUSE_MS)) {
            proto_pause(&parser);
            quiet = 1;
        }
        int c = platform_read_byte();
        if (c < 0) {
            break;
        }
        quiet = 0;
        proto_feed(&parser, (uint8_t)c);
    }
    return 0;
}
