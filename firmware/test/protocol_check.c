/*
 * Runs firmware/protocol.c over input given on stdin, for tests/test_firmware_protocol.py and
 * docs/protocol_vectors.json. Built with the host gcc; no firmware, no model.
 *
 *   protocol_check events   stdin: hex digits (white space ignored), fed one byte at a time,
 *                           and `p` for a pause in the input (proto_pause); prints one line
 *                           per parser event, in the vectors' notation
 *   protocol_check replies  stdin: one reply description per line; prints what the device sends:
 *                             result SEQ DIGIT UNIT TIME S0 .. S9   -> frame hex
 *                             short SEQ DIGIT UNIT TIME TIME_US S0 .. S9 -> RESULT_SHORT hex
 *                                                                  (TIME_US -1: none)
 *                             info SEQ PAIRS...                    -> frame hex
 *                             error SEQ CODE DETAIL...             -> frame hex
 *                             line DIGIT TIME UNIT S0 .. S9        -> the text line
 *                             errline CODE DETAIL...               -> the text line
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

static void print_event(const proto_event *ev, void *context)
{
    (void)context;
    const char *form = ev->binary ? "bin" : "text";
    switch (ev->kind) {
    case PROTO_EVENT_INFER:
        if (ev->binary) {
            printf("infer %s seq=%u crc=%08x\n", ev->compact ? "rle" : "bin", ev->seq,
                   (unsigned)proto_crc32(ev->pixels, PROTO_PIXELS));
        } else {
            printf("infer text crc=%08x\n", (unsigned)proto_crc32(ev->pixels, PROTO_PIXELS));
        }
        break;
    case PROTO_EVENT_INFO:
        if (ev->binary) {
            printf("info bin seq=%u\n", ev->seq);
        } else {
            printf("info text\n");
        }
        break;
    case PROTO_EVENT_ERROR:
        if (ev->binary) {
            printf("error bin seq=%u code=%u", ev->seq, ev->error);
        } else {
            printf("error %s code=%u", form, ev->error);
        }
        printf(" # %s: %s\n", proto_error_name(ev->error), ev->detail);
        break;
    }
}

static int hex_value(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int run_events(void)
{
    static proto_parser parser;
    proto_init(&parser, print_event, NULL);
    int high = -1, c;
    while ((c = getchar()) != EOF) {
        if (c == 'p') {
            if (high >= 0) {
                fprintf(stderr, "protocol_check: a pause inside a byte's two hex digits\n");
                return 2;
            }
            proto_pause(&parser);
            continue;
        }
        int v = hex_value(c);
        if (v < 0) {
            continue;
        }
        if (high < 0) {
            high = v;
        } else {
            proto_feed(&parser, (uint8_t)(high << 4 | v));
            high = -1;
        }
    }
    return 0;
}

static void print_hex(const uint8_t *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        printf("%02x", data[i]);
    }
    printf("\n");
}

static uint8_t unit_code(const char *name)
{
    for (uint8_t u = 0; u < 3; u++) {
        if (strcmp(proto_time_unit_name(u), name) == 0) {
            return u;
        }
    }
    return 255;
}

/* The rest of the line after n space-separated words. */
static const char *after_words(const char *line, int n)
{
    while (n-- > 0) {
        line = strchr(line, ' ');
        if (!line) {
            return "";
        }
        line++;
    }
    return line;
}

static int run_replies(void)
{
    char line[2048];
    static uint8_t out[PROTO_MAX_FRAME];
    char text[256];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = '\0';
        char kind[16], unit[16];
        unsigned seq, digit, code;
        unsigned long time;
        long time_us;
        float s[10];
        if (sscanf(line, "result %u %u %15s %lu %f %f %f %f %f %f %f %f %f %f", &seq, &digit, unit,
                   &time, &s[0], &s[1], &s[2], &s[3], &s[4], &s[5], &s[6], &s[7], &s[8], &s[9]) == 14) {
            print_hex(out, proto_encode_result(out, sizeof out, (uint16_t)seq, (uint8_t)digit,
                                               unit_code(unit), (uint32_t)time, s));
        } else if (sscanf(line, "short %u %u %15s %lu %ld %f %f %f %f %f %f %f %f %f %f", &seq,
                          &digit, unit, &time, &time_us, &s[0], &s[1], &s[2], &s[3], &s[4], &s[5],
                          &s[6], &s[7], &s[8], &s[9]) == 15) {
            uint32_t us = time_us < 0 ? PROTO_NO_MICROSECONDS : (uint32_t)time_us;
            print_hex(out, proto_encode_result_short(out, sizeof out, (uint16_t)seq, (uint8_t)digit,
                                                     unit_code(unit), (uint32_t)time, us, s));
        } else if (sscanf(line, "line %u %lu %15s %f %f %f %f %f %f %f %f %f %f", &digit, &time, unit,
                          &s[0], &s[1], &s[2], &s[3], &s[4], &s[5], &s[6], &s[7], &s[8], &s[9]) == 13) {
            proto_format_result_line(text, sizeof text, (uint8_t)digit, (uint32_t)time, unit_code(unit), s);
            fputs(text, stdout);
        } else if (sscanf(line, "info %u", &seq) == 1) {
            print_hex(out, proto_encode_info(out, sizeof out, (uint16_t)seq, after_words(line, 2)));
        } else if (sscanf(line, "error %u %u", &seq, &code) == 2) {
            print_hex(out, proto_encode_error(out, sizeof out, (uint16_t)seq, (uint8_t)code,
                                              after_words(line, 3)));
        } else if (sscanf(line, "errline %u", &code) == 1) {
            proto_format_error_line(text, sizeof text, (uint8_t)code, after_words(line, 2));
            fputs(text, stdout);
        } else if (sscanf(line, "%15s", kind) == 1) {
            fprintf(stderr, "protocol_check: cannot read: %s\n", line);
            return 2;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "events") == 0) {
        return run_events();
    }
    if (argc == 2 && strcmp(argv[1], "replies") == 0) {
        return run_replies();
    }
    fprintf(stderr, "usage: protocol_check events|replies < input\n");
    return 2;
}
