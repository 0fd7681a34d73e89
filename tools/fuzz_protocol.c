/*
 * libFuzzer target for firmware/protocol.c: every input is fed byte by byte to a fresh parser,
 * and every event is answered with the real reply encoders, as the firmware does. ASan/UBSan
 * catch memory and arithmetic errors; the checks below catch broken event contracts.
 * Built and run by tools/fuzz_protocol.sh.
 *
 * Pauses in the input (proto_pause) are written into the fuzz input with an escape byte:
 * FUZZ_ESCAPE FUZZ_ESCAPE is the data byte FUZZ_ESCAPE; FUZZ_ESCAPE FUZZ_FRAME T L0 L1 then up
 * to L bytes is a whole frame of type T whose CRC the harness computes, so the decoders behind
 * the CRC (INFER_RLE's run lengths) see arbitrary payloads, not only the rare one with a
 * matching CRC; FUZZ_ESCAPE FUZZ_IMAGE L0 L1 then up to L bytes is an image (those pixels,
 * then zeros to 784) that the harness run-length codes with an encoder of its own and sends as
 * an INFER_RLE frame, so valid payloads of every shape reach the decoder too; FUZZ_ESCAPE
 * followed by any other byte, or ending the input, is a pause.
 * An INFER_RLE frame made that way, sent where no frame is pending, must give exactly one
 * event: the image a reference decoder here makes of it, or bad_rle where that decoder fails. At the end of every input the harness pauses and
 * checks that the text path is open again: a pause must always end a line that can no longer
 * become a request.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

#define FUZZ_ESCAPE 0xFF
#define FUZZ_FRAME 0xFE
#define FUZZ_IMAGE 0xFD

static proto_parser parser;
static uint8_t frame[PROTO_MAX_FRAME];
static char line[192];
static uint32_t checksum; /* keeps the pixel reads from being optimised away */
static int last_was_text_info; /* the latest event was the text form's INFO */
static uint8_t wrapped[PROTO_MAX_FRAME];
/* How often the new frame type's decoder was checked, printed at exit (tools/fuzz_protocol.sh
 * reports it: a run that never reached the decoder proves nothing about it). */
static unsigned long inputs, rle_decoded, rle_refused;

static void print_counts(void)
{
    fprintf(stderr, "fuzz_protocol: %lu inputs; INFER_RLE frames checked against the reference "
                    "decoder: %lu decoded, %lu refused as bad_rle\n", inputs, rle_decoded, rle_refused);
}
/* the INFER_RLE frame being fed, when its outcome is known: seq, pixel CRC or bad_rle */
static struct {
    int active;
    uint16_t seq;
    int ok;
    uint32_t crc;
    int seen;
} expect;

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
        check(!ev->compact || ev->binary);
        if (expect.active && ev->compact && ev->seq == expect.seq) {
            check(expect.ok && proto_crc32(ev->pixels, PROTO_PIXELS) == expect.crc);
            expect.seen++;
        }
        checksum ^= proto_crc32(ev->pixels, PROTO_PIXELS);
        float scores[PROTO_CLASSES];
        for (int i = 0; i < PROTO_CLASSES; i++) {
            scores[i] = -(float)ev->pixels[i * 7] / 8.0f;
        }
        if (ev->compact) {
            check(proto_encode_result_short(frame, sizeof frame, ev->seq, ev->pixels[0] % 10,
                                            PROTO_TIME_CYCLES, ev->pixels[1], ev->pixels[2],
                                            scores) == PROTO_RESULT_SHORT_FRAME_BYTES);
        } else if (ev->binary) {
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
        check((ev->error >= PROTO_ERR_BAD_CRC && ev->error <= PROTO_ERR_LINE_TOO_LONG)
              || ev->error == PROTO_ERR_BAD_RLE);
        check(ev->detail != NULL);
        size_t len = strnlen(ev->detail, PROTO_DETAIL_MAX);
        check(len > 0 && len < PROTO_DETAIL_MAX);
        /* binary errors only for frames, text errors only for text */
        check(ev->binary == (ev->error <= PROTO_ERR_BAD_TYPE || ev->error == PROTO_ERR_BAD_RLE));
        if (expect.active && ev->binary && ev->seq == expect.seq && ev->error == PROTO_ERR_BAD_RLE) {
            check(!expect.ok);
            expect.seen++;
        }
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

/* A second, independent INFER_RLE decoder (docs/protocol.md): 1 and the image's CRC, or 0. */
static int reference_rle(const uint8_t *payload, size_t length, uint32_t *crc)
{
    static uint8_t image[PROTO_PIXELS];
    size_t n = 0;
    for (size_t i = 0; i < length;) {
        uint8_t token = payload[i++];
        if (token < 0x80) {
            for (int k = 0; k <= token; k++) {
                if (n == PROTO_PIXELS) {
                    return 0;
                }
                image[n++] = 0;
            }
        } else {
            if (n + (token - 0x7Fu) > PROTO_PIXELS || i + (token - 0x7Fu) > length) {
                return 0;
            }
            for (int k = 0; k < token - 0x7F; k++) {
                image[n++] = payload[i++];
            }
        }
    }
    if (n != PROTO_PIXELS) {
        return 0;
    }
    *crc = proto_crc32(image, PROTO_PIXELS);
    return 1;
}

/* Feeds frame bytes; with expect set up, checks the frame gave its one expected event. */
static void feed_checked(size_t total)
{
    for (size_t i = 0; i < total; i++) {
        proto_feed(&parser, wrapped[i]);
        check_bounds();
    }
    check(!expect.active || expect.seen == 1);
    if (expect.active) {
        expect.ok ? rle_decoded++ : rle_refused++;
    }
    expect.active = 0;
}

/* An image from the fuzz input, run-length coded by a plain greedy encoder (no zeros inside
 * literal runs, unlike the host's) and sent as INFER_RLE; returns the input bytes it used. */
static size_t feed_image(const uint8_t *data, size_t size, uint16_t seq)
{
    static uint8_t image[PROTO_PIXELS];
    static uint8_t payload[2 * PROTO_PIXELS]; /* a lone pixel costs 2 bytes at most */
    if (size < 2) {
        return size;
    }
    size_t given = ((size_t)data[0] | ((size_t)data[1] << 8)) % (PROTO_PIXELS + 1);
    if (given > size - 2) {
        given = size - 2;
    }
    memset(image, 0, sizeof image);
    memcpy(image, data + 2, given);
    size_t n = 0;
    for (size_t i = 0; i < PROTO_PIXELS;) {
        size_t j = i;
        if (image[i] == 0) {
            while (j < PROTO_PIXELS && image[j] == 0 && j - i < 128) {
                j++;
            }
            payload[n++] = (uint8_t)(j - i - 1);
        } else {
            while (j < PROTO_PIXELS && image[j] != 0 && j - i < 128) {
                j++;
            }
            payload[n++] = (uint8_t)(0x7F + (j - i));
            memcpy(payload + n, image + i, j - i);
            n += j - i;
        }
        i = j;
    }
    if (n > PROTO_MAX_PAYLOAD) {
        return 2 + given; /* such an image goes as INFER */
    }
    size_t total = proto_encode_frame(wrapped, sizeof wrapped, PROTO_TYPE_INFER_RLE, seq, payload,
                                      (uint16_t)n);
    memset(&expect, 0, sizeof expect);
    if (parser.frame_len == 0) {
        expect.active = 1;
        expect.seq = seq;
        expect.ok = 1;
        expect.crc = proto_crc32(image, PROTO_PIXELS);
    }
    feed_checked(total);
    return 2 + given;
}

/* Feeds a whole frame built from the fuzz input; returns the input bytes it used. */
static size_t feed_wrapped(const uint8_t *data, size_t size, uint16_t seq)
{
    if (size < 3) {
        return size;
    }
    uint8_t type = data[0];
    size_t length = (size_t)data[1] | ((size_t)data[2] << 8);
    length %= PROTO_MAX_PAYLOAD + 1;
    if (length > size - 3) {
        length = size - 3;
    }
    size_t total = proto_encode_frame(wrapped, sizeof wrapped, type, seq, data + 3, (uint16_t)length);
    check(total == PROTO_HEADER_BYTES + length + PROTO_CRC_BYTES);
    memset(&expect, 0, sizeof expect);
    if (type == PROTO_TYPE_INFER_RLE && parser.frame_len == 0) {
        expect.active = 1;
        expect.seq = seq;
        expect.ok = reference_rle(data + 3, length, &expect.crc);
    }
    feed_checked(total);
    return 3 + length;
}

static void feed_text(const char *text)
{
    while (*text) {
        proto_feed(&parser, (uint8_t)*text++);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (inputs++ == 0) {
        atexit(print_counts);
    }
    proto_init(&parser, on_event, NULL);
    memset(&expect, 0, sizeof expect);
    uint16_t seq = 0xF000;
    for (size_t i = 0; i < size; i++) {
        if (data[i] == FUZZ_ESCAPE && i + 1 < size && data[i + 1] == FUZZ_FRAME) {
            i += 1 + feed_wrapped(data + i + 2, size - i - 2, seq++);
            continue;
        }
        if (data[i] == FUZZ_ESCAPE && i + 1 < size && data[i + 1] == FUZZ_IMAGE) {
            i += 1 + feed_image(data + i + 2, size - i - 2, seq++);
            continue;
        }
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
