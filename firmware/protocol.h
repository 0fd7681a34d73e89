/*
 * The serial protocol of docs/protocol.md, device side: a byte-at-a-time request parser and
 * the reply encoders. The same source is compiled into every target (host, qemu-m7, RIOT) and
 * into the fuzzer (tools/fuzz_protocol.sh).
 *
 * No malloc, no stdio, no recursion beyond one level: all state lives in a proto_parser
 * (about 2.5 KB; make it static). Bad input of any kind ends in an error event and a resync,
 * never in a hang or an out-of-bounds access.
 *
 * Use:
 *     static proto_parser parser;
 *     proto_init(&parser, on_event, NULL);
 *     for (;;) {
 *         if (input has been quiet for PROTO_RESYNC_PAUSE_MS) proto_pause(&parser);
 *         int c = platform_read_byte(); if (c < 0) break; proto_feed(&parser, (uint8_t)c);
 *     }
 * on_event() is called from inside proto_feed() or proto_pause() for every complete request
 * or error, possibly several times for one byte (a failed frame's bytes are scanned again).
 * It must not call proto_feed() or proto_pause() itself.
 *
 * The parser reads no clock: the caller says when the input paused, so the parser stays a pure
 * function of its input (bytes and pauses, in order) and the tests and the fuzzer replay
 * pauses exactly.
 */
#ifndef MNIST_PROTOCOL_H
#define MNIST_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

/* 2: INFER_RLE requests answered with RESULT_SHORT (docs/protocol.md) */
#define PROTO_VERSION 2
#define PROTO_PIXELS 784
#define PROTO_CLASSES 10
#define PROTO_SYNC0 0xA5
#define PROTO_SYNC1 0x5A
#define PROTO_HEADER_BYTES 7
#define PROTO_CRC_BYTES 4
#define PROTO_MAX_PAYLOAD PROTO_PIXELS
#define PROTO_MAX_FRAME (PROTO_HEADER_BYTES + PROTO_MAX_PAYLOAD + PROTO_CRC_BYTES)
#define PROTO_MAX_LINE 4096
#define PROTO_RESULT_PAYLOAD_BYTES 46
#define PROTO_RESULT_FRAME_BYTES (PROTO_HEADER_BYTES + PROTO_RESULT_PAYLOAD_BYTES + PROTO_CRC_BYTES)
#define PROTO_RESULT_SHORT_PAYLOAD_BYTES 20
#define PROTO_RESULT_SHORT_FRAME_BYTES \
    (PROTO_HEADER_BYTES + PROTO_RESULT_SHORT_PAYLOAD_BYTES + PROTO_CRC_BYTES)
#define PROTO_NO_MICROSECONDS 0xFFFFFFFFu /* RESULT_SHORT's time_us on a device without a us clock */
#define PROTO_DETAIL_MAX 64 /* error details, NUL included */
#define PROTO_TOKEN_KEEP 15 /* characters of a bad token quoted in an error */
/* Quiet input for this long is a pause (docs/protocol.md, "Pauses"): it ends a text line
 * that can no longer become a request. Long against the gaps inside one write of a request
 * at 115200 baud or through a pty, short against a person who sends junk and then a request. */
#define PROTO_RESYNC_PAUSE_MS 100
#define PROTO_NO_PAUSE 0xFFFFu

enum proto_msg_type {
    PROTO_TYPE_INFER = 0x01,
    PROTO_TYPE_INFO = 0x02,
    PROTO_TYPE_INFER_RLE = 0x03,
    PROTO_TYPE_RESULT = 0x81,
    PROTO_TYPE_INFO_REPLY = 0x82,
    PROTO_TYPE_ERROR = 0x83,
    PROTO_TYPE_RESULT_SHORT = 0x84,
};

enum proto_error_code {
    PROTO_ERR_BAD_CRC = 1,
    PROTO_ERR_BAD_LENGTH = 2,
    PROTO_ERR_BAD_TYPE = 3,
    PROTO_ERR_GARBAGE = 4,
    PROTO_ERR_VALUE_TOO_LARGE = 5,
    PROTO_ERR_NOT_A_NUMBER = 6,
    PROTO_ERR_WRONG_COUNT = 7,
    PROTO_ERR_LINE_TOO_LONG = 8,
    PROTO_ERR_INFERENCE_FAILED = 9,
    PROTO_ERR_BAD_RLE = 10,
};

enum proto_time_unit {
    PROTO_TIME_US = 0,
    PROTO_TIME_CYCLES = 1,
    PROTO_TIME_INSTRUCTIONS = 2,
};

typedef enum {
    PROTO_EVENT_INFER,
    PROTO_EVENT_INFO,
    PROTO_EVENT_ERROR,
} proto_event_kind;

typedef struct {
    proto_event_kind kind;
    int binary;            /* 1: the request was a frame, reply with a frame and seq; 0: text */
    int compact;           /* INFER from an INFER_RLE frame: reply with RESULT_SHORT */
    uint16_t seq;          /* binary only */
    const uint8_t *pixels; /* INFER: 784 bytes, valid only during the callback */
    uint8_t error;         /* ERROR: an enum proto_error_code */
    const char *detail;    /* ERROR: NUL-terminated, e.g. "300 at value 17" */
} proto_event;

typedef void (*proto_handler)(const proto_event *event, void *context);

typedef struct {
    proto_handler handler;
    void *context;
    uint8_t state;
    uint8_t recovering;    /* after a failed frame: stay quiet until the next sync or request */
    /* binary frame being received */
    uint8_t frame[PROTO_MAX_FRAME];
    uint16_t frame_len;
    uint16_t frame_need;
    uint16_t frame_pause;  /* frame_len when the input last paused inside this frame, or
                              PROTO_NO_PAUSE: replayed with the frame's bytes if it fails */
    /* bytes of a failed frame, scanned again after its sync */
    uint8_t replay[PROTO_MAX_FRAME];
    uint16_t replay_len;
    uint16_t replay_pos;
    uint16_t replay_pause; /* a pause before replay[replay_pause], or PROTO_NO_PAUSE */
    /* text line being received; also where an INFER_RLE frame's image is decoded (a frame
     * and a line are never received at once: a sync ends the line) */
    uint8_t text_pixels[PROTO_PIXELS];
    uint16_t line_len;
    uint16_t values;       /* tokens completed on this line */
    uint8_t line_skip;     /* an error was reported: ignore the rest of the line */
    uint8_t line_nonblank;
    uint8_t info_pending;  /* the line so far is "info" */
    uint8_t token_is_number;
    uint16_t token_len;
    uint16_t token_value;  /* clamped at 1000: anything over 255 is too large anyway */
    char token[PROTO_TOKEN_KEEP + 1];
    char detail[PROTO_DETAIL_MAX];
} proto_parser;

void proto_init(proto_parser *parser, proto_handler handler, void *context);
void proto_feed(proto_parser *parser, uint8_t byte);
/* The input has been quiet for PROTO_RESYNC_PAUSE_MS since the last byte. Ends a text line
 * that can no longer become a request (reporting its error if it has not been reported yet)
 * and a lone 0xA5, so the next byte starts a new line. A line that can still become a request
 * is kept, and a binary frame is never cut: it stays counted by its header. Calling it again
 * without a byte in between changes nothing. */
void proto_pause(proto_parser *parser);

/* CRC-32 (IEEE 802.3, zlib's): proto_crc32_update(0, data, n) == zlib.crc32(data). */
uint32_t proto_crc32_update(uint32_t crc, const uint8_t *data, size_t length);
uint32_t proto_crc32(const uint8_t *data, size_t length);

const char *proto_error_name(uint8_t code);          /* "bad_crc", ...; "unknown" */
const char *proto_time_unit_name(uint8_t unit);      /* "us", "cycles", "instructions" */

/* Reply encoders: each writes a whole frame into out and returns its length, or 0 when out
 * is too small. Details and INFO pairs are plain ASCII without a terminator on the wire. */
size_t proto_encode_frame(uint8_t *out, size_t capacity, uint8_t type, uint16_t seq,
                          const uint8_t *payload, uint16_t length);
size_t proto_encode_result(uint8_t *out, size_t capacity, uint16_t seq, uint8_t digit,
                           uint8_t time_unit, uint32_t time, const float scores[PROTO_CLASSES]);
/* RESULT_SHORT: scores as round(-16 * score) clamped to 0..255; time_us PROTO_NO_MICROSECONDS
 * where the device has no microsecond clock besides `time`. */
size_t proto_encode_result_short(uint8_t *out, size_t capacity, uint16_t seq, uint8_t digit,
                                 uint8_t time_unit, uint32_t time, uint32_t time_us,
                                 const float scores[PROTO_CLASSES]);
uint8_t proto_score_steps(float log_probability);
/* Decodes an INFER_RLE payload into 784 pixels; 0, or PROTO_ERR_BAD_RLE with the detail
 * written into detail (PROTO_DETAIL_MAX bytes). */
uint8_t proto_rle_decode(const uint8_t *payload, uint16_t length, uint8_t pixels[PROTO_PIXELS],
                         char *detail);
size_t proto_encode_info(uint8_t *out, size_t capacity, uint16_t seq, const char *pairs);
size_t proto_encode_error(uint8_t *out, size_t capacity, uint16_t seq, uint8_t code,
                          const char *detail);

/* Text replies, NUL-terminated, each ending in "\n"; they return the length without the NUL,
 * cut short (still terminated) when out is too small. 160 bytes always suffice for a result. */
int proto_permille(float log_probability);           /* round(exp(score) * 1000) */
size_t proto_format_result_line(char *out, size_t capacity, uint8_t digit, uint32_t time,
                                uint8_t time_unit, const float scores[PROTO_CLASSES]);
size_t proto_format_error_line(char *out, size_t capacity, uint8_t code, const char *detail);

/* A bounded string builder, so no target needs printf. */
typedef struct {
    char *buf;
    size_t capacity;
    size_t len;
} proto_text;

void proto_text_init(proto_text *text, char *buf, size_t capacity);
void proto_text_str(proto_text *text, const char *s);
void proto_text_u32(proto_text *text, uint32_t value);
void proto_text_i32(proto_text *text, int32_t value);
void proto_text_hex(proto_text *text, uint32_t value, int digits); /* "0x" + lowercase digits */

#endif
