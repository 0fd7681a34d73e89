#!/usr/bin/env bash
# Fuzz the firmware's protocol parser (firmware/protocol.c) with libFuzzer + ASan + UBSan.
#   tools/fuzz_protocol.sh --runs 1000000      # at least a million inputs
#   tools/fuzz_protocol.sh --runs 20000        # CI's short run
# Seeds: the device streams of docs/protocol_vectors.json, their pauses written with the
# harness's escape (tools/fuzz_protocol.c: FF FF is the byte FF; FF FE wraps what follows in a
# frame with a valid CRC; FF FD is an image the harness codes as INFER_RLE; FF and any other
# byte is a pause), the INFER_RLE requests' payloads wrapped that way, and two images. Exits non-zero on a crash, a sanitizer report or a hang (an input taking over
# --timeout seconds); the crashing input is left in build/fuzz/ (reproduce:
# build/fuzz/fuzz_protocol <file>).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=1000000
timeout=5
out=build/fuzz
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --timeout) timeout="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "fuzz_protocol.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

clang=""
for c in clang-14 clang; do
    if command -v "$c" >/dev/null; then clang="$c"; break; fi
done
if [ -z "$clang" ]; then
    echo "fuzz_protocol.sh: clang not found; install clang and libclang-rt-14-dev (bash setup.sh)" >&2
    exit 3
fi

mkdir -p "$out/corpus" "$out/artifacts"
binary="$out/fuzz_protocol"
if [ ! -x "$binary" ] || [ firmware/protocol.c -nt "$binary" ] || [ firmware/protocol.h -nt "$binary" ] \
        || [ tools/fuzz_protocol.c -nt "$binary" ]; then
    if ! "$clang" -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
            -Ifirmware firmware/protocol.c tools/fuzz_protocol.c -lm -o "$binary" 2>"$out/build.log"; then
        echo "fuzz_protocol.sh: building the fuzzer failed (is libclang-rt-14-dev installed?); log: $out/build.log" >&2
        exit 3
    fi
fi

python3 - "$out/corpus" <<'PY'
import json, sys, pathlib
vectors = json.loads(pathlib.Path("docs/protocol_vectors.json").read_text())
corpus = pathlib.Path(sys.argv[1])
ESCAPE, PAUSE = 0xFF, b"\xff\x00"
for stream in vectors["device_streams"]:
    data, pauses = bytes.fromhex(stream["input_hex"]), set(stream.get("pauses", ()))
    seed = bytearray()
    for i, byte in enumerate(data):
        seed += PAUSE if i in pauses else b""
        seed += bytes([byte, byte]) if byte == ESCAPE else bytes([byte])
    seed += PAUSE if len(data) in pauses else b""
    (corpus / f"seed-{stream['name']}").write_bytes(bytes(seed))
def wrap(frame_type, payload):
    return b"\xff\xfe" + bytes([frame_type]) + len(payload).to_bytes(2, "little") + payload
for request in vectors["requests"]:
    if request["type"] == 3:
        payload = bytes.fromhex(request["hex"])[7:-4]
        (corpus / f"seed-wrapped-{request['name']}").write_bytes(wrap(3, payload))
        (corpus / f"seed-wrapped-twice-{request['name']}").write_bytes(
            wrap(3, payload) + b"info\n" + wrap(3, payload[:-1]) + wrap(2, b""))
# images for the harness's own encoder (FF FD): digit-like strokes and a ramp, escaped FF
ramp = bytes(i % 255 for i in range(784))
strokes = bytes(200 if (i % 28) in (9, 10, 17) and 5 < i // 28 < 22 else 0 for i in range(784))
for name, image in (("ramp", ramp), ("strokes", strokes)):
    (corpus / f"seed-image-{name}").write_bytes(b"\xff\xfd" + len(image).to_bytes(2, "little") + image)
PY

echo "fuzzing firmware/protocol.c: $runs inputs (ASan + UBSan), corpus $out/corpus"
log="$out/fuzz.log"
set +e
"$binary" -runs="$runs" -timeout="$timeout" -max_len=8192 -dict=tools/fuzz_protocol.dict \
    -artifact_prefix="$out/artifacts/" -print_final_stats=1 "$out/corpus" >"$log" 2>&1
status=$?
set -e
done_line=$(grep -E "^Done [0-9]+ runs" "$log" | tail -1 || true)
if [ $status -ne 0 ] || [ -z "$done_line" ]; then
    grep -E "ERROR|SUMMARY|Test unit written|timeout" "$log" | head -5 >&2 || true
    echo "fuzz_protocol.sh: FAILED (status $status); log: $log, inputs: $out/artifacts/" >&2
    exit 1
fi
counts=$(grep -E "^fuzz_protocol: [0-9]+ inputs" "$log" | tail -1 || true)
echo "$done_line, no crash, no hang (log: $log)"
[ -n "$counts" ] && echo "$counts"
exit 0
