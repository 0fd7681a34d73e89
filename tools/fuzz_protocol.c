/*
 * libFuzzer target for firmware/protocol.c: every input is fed byte by byte to a fresh parser,
 * and every event is answered with the real reply encoders, as the firmware does. ASan/UBSan
 * catch memory and arithmetic errors; the checks below catch broken event contracts.
 * Built and run by tools/fuzz_protocol.sh.
 *
 * Pauses in the input (proto_pause) are written into the fuzz input with an escape byte:
 * FUZZ_ESCAPE FUZZ_ESCAPE is the data byte FUZZ_ESCAPE; FUZZ_ESCAPE followed by any other
 * byte, or ending the input, is a pause. At the end of every input the harness pauses and
 * checks that the text path is open again: a pause must always end a line that can no longer
 * become a request.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

#define FUZZ_ESCAPE 0xFF

static proto_parser parser;
static uint8_t frame[PROTO_MAX_FRAME];
static char line[192];
static uint32_t checksum; /* keeps the pixel reads from being optimised away */
static int last_was_text_info; /* the latest event was the text form's INFO */

static void check(int ok)
{
    if (!ok) {
        abort();
    }
}

static void on_event(const proto_event *ev, void *context)
{
    (void)context;
    switch (ev->kind) {
    case PROTO_EVENT_INFER: {
        check(ev->pixels != NULL);
        checksum ^= proto_crc32(ev->pixels, PROTO_PIXELS);
        float scores[PROTO_CLASSES];
        for (int i = 0; i < PROTO_CLASSES; i++) {
            scores[i] = -(float)ev->pixels[i * 7] / 8.0f;
        }
        if (ev->binary) {
            check(proto_encode_result(frame, sizeof frame, ev->seq, ev->pixels[0] % 10,
                                      PROTO_TIME_US, ev->pixels[1], scores) == PROTO_RESULT_FRAME_BYTES);
        } else {
            size_t n = proto_format_result_line(line, sizeof line, ev->pixels[0] % 10, 123456789,
                                                PROTO_TIME_INSTRUCTIONS, scores);
            check(n > 0 && n < sizeof line && line[n - 1] == '\n');
        }
        break;
    }
    case PROTO_EVENT_INFO:
        check(proto_encode_info(frame, sizeof frame, ev->seq, "model=x arena=1 board=fuzz") > 0);
        last_was_text_info = !ev->binary;
        return;
    case PROTO_EVENT_ERROR: {
        check(ev->error >= PROTO_ERR_BAD_CRC && ev->error <= PROTO_ERR_LINE_TOO_LONG);
        check(ev->detail != NULL);
        size_t len = strnlen(ev->detail, PROTO_DETAIL_MAX);
        check(len > 0 && len < PROTO_DETAIL_MAX);
        /* binary errors only for frames, text errors only for text */
        check(ev->binary == (ev->error <= PROTO_ERR_BAD_TYPE));
        if (ev->binary) {
            check(proto_encode_error(frame, sizeof frame, ev->seq, ev->error, ev->detail) > 0);
        } else {
            size_t n = proto_format_error_line(line, sizeof line, ev->error, ev->detail);
            check(n > 0 && line[n - 1] == '\n');
        }
        break;
    }
    default:
        abort();
    }
    last_was_text_info = 0;
}

static void check_bounds(void)
{
    check(parser.frame_len <= PROTO_MAX_FRAME && parser.line_len <= PROTO_MAX_LINE + 1);
    check(parser.replay_len == 0 && parser.replay_pause == PROTO_NO_PAUSE);
    check(parser.frame_pause == PROTO_NO_PAUSE || parser.frame_pause <= parser.frame_len);
}

static void feed_text(const char *text)
{
    while (*text) {
        proto_feed(&parser, (uint8_t)*text++);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    proto_init(&parser, on_event, NULL);
    for (size_t i = 0; i < size; i++) {
        if (data[i] == FUZZ_ESCAPE && (i + 1 == size || data[i + 1] != FUZZ_ESCAPE)) {
            proto_pause(&parser);
            i++; /* the escape's second byte, if any, is spent */
        } else {
            i += data[i] == FUZZ_ESCAPE;
            proto_feed(&parser, data[i]);
        }
        check_bounds();
    }
    /* After a pause, outside a frame, the line left can only be the start of a request: a
     * newline ends it, and the next "info" line must then be answered. With nothing but white
     * space left, "info" is answered without that newline. */
    proto_pause(&parser);
    check_bounds();
    check(!parser.line_skip);
    if (parser.frame_len == 0) {
        int blank = parser.values == 0 && parser.token_len == 0;
        last_was_text_info = 0;
        feed_text(blank ? "info\n" : "\ninfo\n");
        check(last_was_text_info);
    }
    return 0;
}
