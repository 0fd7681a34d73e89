/* Device side of docs/protocol.md; see protocol.h for how to use it. */
#include "protocol.h"

#include <math.h>
#include <string.h>

enum { ST_LINE, ST_SYNC, ST_FRAME };

/* ------------------------------------------------------------------ text builder */

void proto_text_init(proto_text *text, char *buf, size_t capacity)
{
    text->buf = buf;
    text->capacity = capacity;
    text->len = 0;
    if (capacity > 0) {
        buf[0] = '\0';
    }
}

static void text_char(proto_text *text, char c)
{
    if (text->len + 1 < text->capacity) {
        text->buf[text->len++] = c;
        text->buf[text->len] = '\0';
    }
}

void proto_text_str(proto_text *text, const char *s)
{
    while (*s) {
        text_char(text, *s++);
    }
}

void proto_text_u32(proto_text *text, uint32_t value)
{
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n) {
        text_char(text, digits[--n]);
    }
}

void proto_text_i32(proto_text *text, int32_t value)
{
    if (value < 0) {
        text_char(text, '-');
        proto_text_u32(text, 0u - (uint32_t)value);
    } else {
        proto_text_u32(text, (uint32_t)value);
    }
}

void proto_text_hex(proto_text *text, uint32_t value, int digits)
{
    static const char hex[] = "0123456789abcdef";
    proto_text_str(text, "0x");
    for (int shift = (digits - 1) * 4; shift >= 0; shift -= 4) {
        text_char(text, hex[(value >> shift) & 0xF]);
    }
}

/* ------------------------------------------------------------------ names, CRC */

const char *proto_error_name(uint8_t code)
{
    switch (code) {
    case PROTO_ERR_BAD_CRC: return "bad_crc";
    case PROTO_ERR_BAD_LENGTH: return "bad_length";
    case PROTO_ERR_BAD_TYPE: return "bad_type";
    case PROTO_ERR_GARBAGE: return "garbage";
    case PROTO_ERR_VALUE_TOO_LARGE: return "value_too_large";
    case PROTO_ERR_NOT_A_NUMBER: return "not_a_number";
    case PROTO_ERR_WRONG_COUNT: return "wrong_count";
    case PROTO_ERR_LINE_TOO_LONG: return "line_too_long";
    case PROTO_ERR_INFERENCE_FAILED: return "inference_failed";
    case PROTO_ERR_BAD_RLE: return "bad_rle";
    default: return "unknown";
    }
}

const char *proto_time_unit_name(uint8_t unit)
{
    switch (unit) {
    case PROTO_TIME_US: return "us";
    case PROTO_TIME_CYCLES: return "cycles";
    case PROTO_TIME_INSTRUCTIONS: return "instructions";
    default: return "unknown";
    }
}

uint32_t proto_crc32_update(uint32_t crc, const uint8_t *data, size_t length)
{
    /* Half-byte table: 64 bytes of constants instead of 1 KB, fast enough at serial speeds. */
    static const uint32_t table[16] = {
        0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4,
        0x4db26158, 0x5005713c, 0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c,
        0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c,
    };
    crc = ~crc;
    for (size_t i = 0; i < length; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ table[crc & 0xF];
        crc = (crc >> 4) ^ table[crc & 0xF];
    }
    return ~crc;
}

uint32_t proto_crc32(const uint8_t *data, size_t length)
{
    return proto_crc32_update(0, data, length);
}

/* ------------------------------------------------------------------ encoders */

static void put_u16(uint8_t *out, uint16_t v)
{
    out[0] = (uint8_t)v;
    out[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *out, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        out[i] = (uint8_t)(v >> (8 * i));
    }
}

size_t proto_encode_frame(uint8_t *out, size_t capacity, uint8_t type, uint16_t seq,
                          const uint8_t *payload, uint16_t length)
{
    size_t total = (size_t)PROTO_HEADER_BYTES + length + PROTO_CRC_BYTES;
    if (total > capacity) {
        return 0;
    }
    out[0] = PROTO_SYNC0;
    out[1] = PROTO_SYNC1;
    out[2] = type;
    put_u16(out + 3, seq);
    put_u16(out + 5, length);
    if (length) {
        memmove(out + PROTO_HEADER_BYTES, payload, length);
    }
    put_u32(out + PROTO_HEADER_BYTES + length, proto_crc32(out + 2, 5u + length));
    return total;
}

size_t proto_encode_result(uint8_t *out, size_t capacity, uint16_t seq, uint8_t digit,
                           uint8_t time_unit, uint32_t time, const float scores[PROTO_CLASSES])
{
    uint8_t payload[PROTO_RESULT_PAYLOAD_BYTES];
    payload[0] = digit;
    payload[1] = time_unit;
    put_u32(payload + 2, time);
    for (int i = 0; i < PROTO_CLASSES; i++) {
        uint32_t bits;
        memcpy(&bits, &scores[i], sizeof bits); /* IEEE-754 single, sent little-endian */
        put_u32(payload + 6 + 4 * i, bits);
    }
    return proto_encode_frame(out, capacity, PROTO_TYPE_RESULT, seq, payload, sizeof payload);
}

uint8_t proto_score_steps(float log_probability)
{
    if (!(log_probability > -1e6f)) { /* also NaN */
        return 255;
    }
    float steps = floorf(-log_probability * 16.0f + 0.5f);
    if (steps <= 0.0f) {
        return 0;
    }
    return steps >= 255.0f ? 255 : (uint8_t)steps;
}

size_t proto_encode_result_short(uint8_t *out, size_t capacity, uint16_t seq, uint8_t digit,
                                 uint8_t time_unit, uint32_t time, uint32_t time_us,
                                 const float scores[PROTO_CLASSES])
{
    uint8_t payload[PROTO_RESULT_SHORT_PAYLOAD_BYTES];
    payload[0] = digit;
    payload[1] = time_unit;
    put_u32(payload + 2, time);
    put_u32(payload + 6, time_us);
    for (int i = 0; i < PROTO_CLASSES; i++) {
        payload[10 + i] = proto_score_steps(scores[i]);
    }
    return proto_encode_frame(out, capacity, PROTO_TYPE_RESULT_SHORT, seq, payload, sizeof payload);
}

/* One pass, no state beyond the output image: each token is checked against the pixels left
 * before anything is written, so no token can write past the image. */
uint8_t proto_rle_decode(const uint8_t *payload, uint16_t length, uint8_t pixels[PROTO_PIXELS],
                         char *detail)
{
    proto_text t;
    proto_text_init(&t, detail, PROTO_DETAIL_MAX);
    uint16_t filled = 0;
    uint16_t i = 0;
    while (i < length) {
        uint16_t at = i;
        uint8_t token = payload[i++];
        uint16_t count = token < 0x80 ? (uint16_t)(token + 1u) : (uint16_t)(token - 0x7Fu);
        if (filled + count > PROTO_PIXELS) {
            proto_text_str(&t, "rle runs past 784 pixels at payload byte ");
            proto_text_u32(&t, at);
            return PROTO_ERR_BAD_RLE;
        }
        if (token < 0x80) {
            memset(pixels + filled, 0, count);
        } else {
            if (count > length - i) {
                count = (uint16_t)(length - i); /* cut short: reported below */
            }
            memcpy(pixels + filled, payload + i, count);
            i = (uint16_t)(i + count);
        }
        filled = (uint16_t)(filled + count);
    }
    if (filled != PROTO_PIXELS) {
        proto_text_str(&t, "rle ends after ");
        proto_text_u32(&t, filled);
        proto_text_str(&t, " pixels, expected 784");
        return PROTO_ERR_BAD_RLE;
    }
    return 0;
}

size_t proto_encode_info(uint8_t *out, size_t capacity, uint16_t seq, const char *pairs)
{
    size_t length = strlen(pairs);
    if (length > PROTO_MAX_PAYLOAD) {
        return 0;
    }
    return proto_encode_frame(out, capacity, PROTO_TYPE_INFO_REPLY, seq, (const uint8_t *)pairs,
                              (uint16_t)length);
}

size_t proto_encode_error(uint8_t *out, size_t capacity, uint16_t seq, uint8_t code,
                          const char *detail)
{
    uint8_t payload[1 + PROTO_DETAIL_MAX];
    size_t length = strlen(detail);
    if (length > PROTO_DETAIL_MAX - 1) {
        length = PROTO_DETAIL_MAX - 1;
    }
    payload[0] = code;
    memcpy(payload + 1, detail, length);
    return proto_encode_frame(out, capacity, PROTO_TYPE_ERROR, seq, payload, (uint16_t)(1 + length));
}

int proto_permille(float log_probability)
{
    if (!(log_probability > -100.0f)) { /* also NaN */
        return 0;
    }
    float p = expf(log_probability) * 1000.0f + 0.5f;
    if (p >= 1000.0f) {
        return 1000;
    }
    return (int)p;
}

size_t proto_format_result_line(char *out, size_t capacity, uint8_t digit, uint32_t time,
                                uint8_t time_unit, const float scores[PROTO_CLASSES])
{
    proto_text t;
    proto_text_init(&t, out, capacity);
    proto_text_str(&t, "prediction: ");
    proto_text_u32(&t, digit);
    proto_text_str(&t, " time: ");
    proto_text_u32(&t, time);
    proto_text_str(&t, " ");
    proto_text_str(&t, proto_time_unit_name(time_unit));
    proto_text_str(&t, " probs_permille:");
    for (int i = 0; i < PROTO_CLASSES; i++) {
        proto_text_str(&t, " ");
        proto_text_u32(&t, (uint32_t)proto_permille(scores[i]));
    }
    proto_text_str(&t, "\n");
    return t.len;
}

size_t proto_format_error_line(char *out, size_t capacity, uint8_t code, const char *detail)
{
    proto_text t;
    proto_text_init(&t, out, capacity);
    proto_text_str(&t, "error: ");
    proto_text_str(&t, proto_error_name(code));
    proto_text_str(&t, ": ");
    proto_text_str(&t, detail);
    proto_text_str(&t, "\n");
    return t.len;
}

/* ------------------------------------------------------------------ parser */

static void process(proto_parser *p, uint8_t byte);
static void reset_line(proto_parser *p);

void proto_init(proto_parser *p, proto_handler handler, void *context)
{
    memset(p, 0, sizeof *p);
    p->handler = handler;
    p->context = context;
    p->state = ST_LINE;
    p->frame_pause = PROTO_NO_PAUSE;
    p->replay_pause = PROTO_NO_PAUSE;
    reset_line(p);
}

static void emit(proto_parser *p, proto_event_kind kind, int binary, uint16_t seq,
                 const uint8_t *pixels, int compact)
{
    proto_event ev = { kind, binary, compact, seq, pixels, 0, "" };
    p->recovering = 0;
    p->handler(&ev, p->context);
}

/* p->detail holds the message. Text errors are dropped while recovering from a failed frame:
 * that damage was reported once already. */
static void emit_error(proto_parser *p, int binary, uint16_t seq, uint8_t code)
{
    if (!binary && p->recovering) {
        return;
    }
    proto_event ev = { PROTO_EVENT_ERROR, binary, 0, seq, NULL, code, p->detail };
    p->handler(&ev, p->context);
}

static proto_text detail(proto_parser *p)
{
    proto_text t;
    proto_text_init(&t, p->detail, sizeof p->detail);
    return t;
}

static void reset_line(proto_parser *p)
{
    p->line_len = 0;
    p->values = 0;
    p->line_skip = 0;
    p->line_nonblank = 0;
    p->info_pending = 0;
    p->token_len = 0;
    p->token_value = 0;
    p->token_is_number = 1;
}

static void text_error(proto_parser *p, uint8_t code)
{
    emit_error(p, 0, 0, code);
    p->line_skip = 1;
}

static void end_token(proto_parser *p)
{
    if (p->token_len == 0) {
        return;
    }
    size_t kept = p->token_len < PROTO_TOKEN_KEEP ? p->token_len : PROTO_TOKEN_KEEP;
    p->token[kept] = '\0';
    uint16_t index = ++p->values; /* 1-based, as in the error messages */
    proto_text t = detail(p);
    if (p->info_pending) {
        proto_text_str(&t, "'info' at value 1");
        text_error(p, PROTO_ERR_NOT_A_NUMBER);
    } else if (!p->token_is_number) {
        if (index == 1 && p->token_len == 4 && memcmp(p->token, "info", 4) == 0) {
            p->info_pending = 1;
        } else {
            proto_text_str(&t, "'");
            proto_text_str(&t, p->token);
            proto_text_str(&t, p->token_len > kept ? "...' at value " : "' at value ");
            proto_text_u32(&t, index);
            text_error(p, PROTO_ERR_NOT_A_NUMBER);
        }
    } else if (p->token_value > 255) {
        proto_text_str(&t, p->token);
        proto_text_str(&t, p->token_len > kept ? "... at value " : " at value ");
        proto_text_u32(&t, index);
        text_error(p, PROTO_ERR_VALUE_TOO_LARGE);
    } else if (index <= PROTO_PIXELS) {
        p->text_pixels[index - 1] = (uint8_t)p->token_value;
    }
    p->token_len = 0;
    p->token_value = 0;
    p->token_is_number = 1;
}

static void end_line(proto_parser *p)
{
    if (!p->line_skip) {
        end_token(p);
    }
    if (!p->line_skip) {
        if (p->info_pending) {
            emit(p, PROTO_EVENT_INFO, 0, 0, NULL, 0);
        } else if (p->values == PROTO_PIXELS) {
            emit(p, PROTO_EVENT_INFER, 0, 0, p->text_pixels, 0);
        } else if (p->values != 0) {
            proto_text t = detail(p);
            proto_text_u32(&t, p->values);
            proto_text_str(&t, " values, expected 784");
            emit_error(p, 0, 0, PROTO_ERR_WRONG_COUNT);
        }
    }
    reset_line(p);
}

/* Whether the line so far can still become a request: a prefix of up to 784 values 0..255,
 * or of "info". Only such a line outlasts a pause. */
static int line_can_become_request(const proto_parser *p)
{
    if (p->line_skip) {
        return 0;
    }
    if (p->token_len == 0) {
        return p->values <= PROTO_PIXELS;
    }
    if (p->info_pending) {
        return 0; /* "info" takes no values */
    }
    if (!p->token_is_number) {
        return p->values == 0 && p->token_len <= 4 && memcmp(p->token, "info", p->token_len) == 0;
    }
    return p->token_value <= 255 && p->values < PROTO_PIXELS;
}

/* A pause ends a line that can no longer become a request. Its error is the one the end of
 * the line would have reported, counted up to the pause; then the next byte starts a line. */
static void line_pause(proto_parser *p)
{
    if (line_can_become_request(p)) {
        return;
    }
    if (!p->line_skip) {
        end_token(p);
    }
    if (!p->line_skip) {
        proto_text t = detail(p);
        proto_text_u32(&t, p->values);
        proto_text_str(&t, " values, expected 784");
        emit_error(p, 0, 0, PROTO_ERR_WRONG_COUNT);
    }
    reset_line(p);
}

static void line_byte(proto_parser *p, uint8_t byte)
{
    if (byte == PROTO_SYNC0) {
        if (p->line_nonblank && !p->line_skip) {
            proto_text t = detail(p);
            proto_text_str(&t, "text line cut by a frame");
            emit_error(p, 0, 0, PROTO_ERR_GARBAGE);
        }
        reset_line(p);
        p->state = ST_SYNC;
        return;
    }
    if (byte == '\n' || byte == '\r') {
        end_line(p);
        return;
    }
    if (p->line_skip) {
        return;
    }
    if (++p->line_len > PROTO_MAX_LINE) {
        proto_text t = detail(p);
        proto_text_str(&t, "over 4096 bytes");
        text_error(p, PROTO_ERR_LINE_TOO_LONG);
        return;
    }
    if (byte == ' ' || byte == '\t') {
        end_token(p);
        return;
    }
    p->line_nonblank = 1;
    if (byte < 0x20 || byte >= 0x7F) {
        proto_text t = detail(p);
        proto_text_str(&t, "byte ");
        proto_text_hex(&t, byte, 2);
        proto_text_str(&t, " at column ");
        proto_text_u32(&t, p->line_len);
        text_error(p, PROTO_ERR_GARBAGE);
        return;
    }
    if (p->token_len < PROTO_TOKEN_KEEP) {
        p->token[p->token_len] = (char)byte;
    }
    p->token_len++;
    if (byte >= '0' && byte <= '9') {
        if (p->token_value <= 255) {
            p->token_value = (uint16_t)(p->token_value * 10 + (byte - '0'));
        }
    } else {
        p->token_is_number = 0;
    }
}

/* The frame failed: report nothing more until the next sync, and scan its bytes after the
 * sync again, ahead of whatever was still waiting to be scanned. */
static void fail_frame(proto_parser *p)
{
    size_t tail = p->frame_len > 2 ? p->frame_len - 2u : 0u;
    size_t waiting = (size_t)p->replay_len - p->replay_pos;
    /* frame_len + waiting <= PROTO_MAX_FRAME always holds (see proto_feed), so this only
     * guards against a future change breaking that. */
    if (tail + waiting > sizeof p->replay) {
        waiting = sizeof p->replay - tail;
    }
    /* The pause goes back with the bytes: those after it are scanned as after a pause. At most
     * one is pending: one in the waiting bytes is replayed into this frame before it can
     * hold one of its own, and a pause from outside finds nothing waiting. */
    size_t pause = PROTO_NO_PAUSE;
    if (p->replay_pause != PROTO_NO_PAUSE && p->replay_pause >= p->replay_pos) {
        pause = tail + (p->replay_pause - p->replay_pos);
    } else if (p->frame_pause != PROTO_NO_PAUSE && p->frame_pause >= 2) {
        pause = p->frame_pause - 2u;
    }
    memmove(p->replay + tail, p->replay + p->replay_pos, waiting);
    memcpy(p->replay, p->frame + 2, tail);
    p->replay_pos = 0;
    p->replay_len = (uint16_t)(tail + waiting);
    p->replay_pause = pause <= p->replay_len ? (uint16_t)pause : PROTO_NO_PAUSE;
    p->frame_pause = PROTO_NO_PAUSE;
    p->recovering = 1;
    p->frame_len = 0;
    p->state = ST_LINE;
    reset_line(p);
}

static void frame_done(proto_parser *p)
{
    p->frame_len = 0;
    p->frame_pause = PROTO_NO_PAUSE;
    p->state = ST_LINE;
    reset_line(p);
}

static void frame_byte(proto_parser *p, uint8_t byte)
{
    p->frame[p->frame_len++] = byte;
    uint8_t type = p->frame[2];
    uint16_t seq = (uint16_t)(p->frame[3] | (p->frame[4] << 8));
    uint16_t length = (uint16_t)(p->frame[5] | (p->frame[6] << 8));
    if (p->frame_len == PROTO_HEADER_BYTES) {
        if (length > PROTO_MAX_PAYLOAD) {
            proto_text t = detail(p);
            proto_text_str(&t, "length ");
            proto_text_u32(&t, length);
            proto_text_str(&t, " for type ");
            proto_text_hex(&t, type, 2);
            emit_error(p, 1, seq, PROTO_ERR_BAD_LENGTH);
            fail_frame(p);
            return;
        }
        p->frame_need = (uint16_t)(PROTO_HEADER_BYTES + length + PROTO_CRC_BYTES);
        return;
    }
    if (p->frame_len < PROTO_HEADER_BYTES || p->frame_len < p->frame_need) {
        return;
    }
    const uint8_t *crc_bytes = p->frame + PROTO_HEADER_BYTES + length;
    uint32_t received = (uint32_t)crc_bytes[0] | ((uint32_t)crc_bytes[1] << 8)
                        | ((uint32_t)crc_bytes[2] << 16) | ((uint32_t)crc_bytes[3] << 24);
    uint32_t computed = proto_crc32(p->frame + 2, 5u + length);
    proto_text t = detail(p);
    if (received != computed) {
        proto_text_str(&t, "crc ");
        proto_text_hex(&t, received, 8);
        proto_text_str(&t, ", expected ");
        proto_text_hex(&t, computed, 8);
        emit_error(p, 1, seq, PROTO_ERR_BAD_CRC);
        fail_frame(p);
        return;
    }
    /* An intact frame is skipped whole even when we cannot use it: it is no damage. */
    int length_ok = (type == PROTO_TYPE_INFER && length == PROTO_PIXELS)
                    || (type == PROTO_TYPE_INFO && length == 0)
                    || type == PROTO_TYPE_INFER_RLE; /* any length up to 784: decoding checks it */
    p->recovering = 0;
    if (type != PROTO_TYPE_INFER && type != PROTO_TYPE_INFO && type != PROTO_TYPE_INFER_RLE) {
        proto_text_str(&t, "type ");
        proto_text_hex(&t, type, 2);
        emit_error(p, 1, seq, PROTO_ERR_BAD_TYPE);
    } else if (!length_ok) {
        proto_text_str(&t, "length ");
        proto_text_u32(&t, length);
        proto_text_str(&t, " for type ");
        proto_text_hex(&t, type, 2);
        emit_error(p, 1, seq, PROTO_ERR_BAD_LENGTH);
    } else if (type == PROTO_TYPE_INFER) {
        emit(p, PROTO_EVENT_INFER, 1, seq, p->frame + PROTO_HEADER_BYTES, 0);
    } else if (type == PROTO_TYPE_INFER_RLE) {
        /* An intact frame whose image does not decode is skipped whole, like a wrong length. */
        uint8_t code = proto_rle_decode(p->frame + PROTO_HEADER_BYTES, length, p->text_pixels,
                                        p->detail);
        if (code) {
            emit_error(p, 1, seq, code);
        } else {
            emit(p, PROTO_EVENT_INFER, 1, seq, p->text_pixels, 1);
        }
    } else {
        emit(p, PROTO_EVENT_INFO, 1, seq, NULL, 0);
    }
    frame_done(p);
}

static void process(proto_parser *p, uint8_t byte)
{
    switch (p->state) {
    case ST_FRAME:
        frame_byte(p, byte);
        break;
    case ST_SYNC:
        if (byte == PROTO_SYNC1) {
            p->frame[0] = PROTO_SYNC0;
            p->frame[1] = PROTO_SYNC1;
            p->frame_len = 2;
            p->frame_need = PROTO_MAX_FRAME;
            p->frame_pause = PROTO_NO_PAUSE;
            p->recovering = 0;
            p->state = ST_FRAME;
            break;
        }
        {
            proto_text t = detail(p);
            proto_text_str(&t, "0xa5 without 0x5a");
            emit_error(p, 0, 0, PROTO_ERR_GARBAGE);
        }
        p->state = ST_LINE;
        reset_line(p);
        p->line_skip = 1;
        line_byte(p, byte);
        break;
    default:
        line_byte(p, byte);
        break;
    }
}

static void pause_input(proto_parser *p)
{
    switch (p->state) {
    case ST_FRAME:
        /* A frame is counted by its header, never cut by time; the pause matters only if the
         * frame fails and its bytes are scanned again as text. */
        p->frame_pause = p->frame_len;
        break;
    case ST_SYNC: {
        proto_text t = detail(p);
        proto_text_str(&t, "0xa5 without 0x5a");
        emit_error(p, 0, 0, PROTO_ERR_GARBAGE);
        p->state = ST_LINE;
        reset_line(p);
        break;
    }
    default:
        line_pause(p);
        break;
    }
}

/* Invariant that bounds the replay buffer: frame_len + (replay_len - replay_pos) never
 * exceeds PROTO_MAX_FRAME. A new byte enters only when nothing waits for a replay, a byte
 * moving from the replay queue into the frame keeps the sum, a frame completes at
 * PROTO_MAX_FRAME bytes at most, and a failed frame gives back all but its 2 sync bytes. */
void proto_feed(proto_parser *p, uint8_t byte)
{
    process(p, byte);
    while (p->replay_pos < p->replay_len) {
        if (p->replay_pos == p->replay_pause) {
            p->replay_pause = PROTO_NO_PAUSE;
            pause_input(p);
        }
        process(p, p->replay[p->replay_pos++]);
    }
    if (p->replay_pause != PROTO_NO_PAUSE) { /* a pause after the last byte given back */
        p->replay_pause = PROTO_NO_PAUSE;
        pause_input(p);
    }
    p->replay_pos = 0;
    p->replay_len = 0;
}

void proto_pause(proto_parser *p)
{
    /* Between two calls to proto_feed nothing waits for a replay: the pause is the newest
     * input there is. */
    pause_input(p);
}
