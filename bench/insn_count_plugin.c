/* QEMU TCG plugin: exact count of the guest instructions executed between two marker
 * functions, once per pass (one inference of bench/bench_m7.c).
 *
 *   qemu-system-arm ... -d plugin -D plugin.log \
 *       -plugin libinsn_count.so,start=0x<bench_marker_start>,stop=0x<bench_marker_stop>[,layer=0x<marker>][,bb=on]
 *
 * Every translated instruction gets an inline "counter += 1" (no helper call, exact even when
 * a block is left half way); the first instruction of each marker gets a callback that takes
 * the counter. Each stop prints "insn_count <pass> <instructions since start>" through
 * qemu_plugin_outs (QEMU's log: -d plugin, -D file). The count includes the few instructions
 * of the markers themselves; the harness measures an empty pass to subtract them.
 *
 * layer=ADDR (the profiling build's per-kernel marker): each time ADDR runs inside a pass, the
 * instructions since the previous mark (or the start) are printed as "segment <pass> <index>
 * <instructions>", and the stop prints the last one, so a pass's segments add up to its
 * count exactly.
 *
 * bb=on: how often each translation block ran in each pass, printed at exit as
 * "bb <pass> <first insn vaddr> <end vaddr> <insns> <executions>" (the Python side weighs each
 * block by its cycles). A block counts when it is entered while a pass is running; the block
 * that holds the start marker is entered just before it, the stop marker's block just before
 * the stop, so the blocks of a pass add up to its count give or take the markers' few
 * instructions, which the empty pass measures. Under -icount QEMU may run a block cut short;
 * it is then a translation of its own, with its own end.
 *
 * bb=segments (with layer=): the same, but counted per segment of the first pass after the
 * empty one ("bb <segment> ..."), for the per-layer cycle estimate.
 *
 * Debian's qemu-system-arm 7.2 exports the plugin API but ships no qemu-plugin.h, so the few
 * declarations used are copied here from QEMU 7.2's include/qemu/qemu-plugin.h (API version 1).
 * Built by utils/bench.py with the host gcc: gcc -shared -fPIC -O2.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- from QEMU 7.2 include/qemu/qemu-plugin.h ---- */
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
#define QEMU_PLUGIN_VERSION 1
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, enum qemu_plugin_op op,
                                                void *ptr, uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);
/* ---- end of QEMU's declarations ---- */

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MAX_PASSES 128         /* passes (or segments) beyond it are counted, but not per block */

struct block {
    uint64_t vaddr, end;
    uint64_t insns;
    uint64_t runs[MAX_PASSES];
    struct block *next;
};

static uint64_t executed;            /* every guest instruction (one vCPU: no races) */
static uint64_t start_addr, stop_addr, layer_addr, at_start, at_mark, passes, marks;
static bool armed, per_block, per_segment;
static struct block *blocks;         /* every translation, newest first */

static void on_start(unsigned int vcpu, void *udata)
{
    (void)vcpu, (void)udata;
    at_start = at_mark = executed;
    marks = 0;
    armed = true;
}

static void segment(void)
{
    char line[96];
    snprintf(line, sizeof line, "segment %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", passes, marks++,
             executed - at_mark);
    qemu_plugin_outs(line);
    at_mark = executed;
}

static void on_layer(unsigned int vcpu, void *udata)
{
    (void)vcpu, (void)udata;
    if (armed) {
        segment();
    }
}

static void on_stop(unsigned int vcpu, void *udata)
{
    char line[80];
    (void)vcpu, (void)udata;
    if (!armed) {
        return;
    }
    if (layer_addr != 0) {
        segment();
    }
    armed = false;
    snprintf(line, sizeof line, "insn_count %" PRIu64 " %" PRIu64 "\n", passes++, executed - at_start);
    qemu_plugin_outs(line);
}

static void on_block(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    uint64_t slot = per_segment ? marks : passes;
    if (armed && slot < MAX_PASSES && (!per_segment || passes == 1)) {
        ((struct block *)udata)->runs[slot]++;
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    if (per_block && n > 0) {
        struct block *b = calloc(1, sizeof *b);
        struct qemu_plugin_insn *last = qemu_plugin_tb_get_insn(tb, n - 1);
        if (b == NULL) {
            fprintf(stderr, "insn_count: out of memory\n");
            abort();
        }
        b->vaddr = qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, 0));
        b->end = qemu_plugin_insn_vaddr(last) + qemu_plugin_insn_size(last);
        b->insns = n;
        b->next = blocks;
        blocks = b;
        qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, QEMU_PLUGIN_CB_NO_REGS, b);
    }
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
        if (vaddr == start_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_start, QEMU_PLUGIN_CB_NO_REGS, NULL);
        } else if (vaddr == stop_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_stop, QEMU_PLUGIN_CB_NO_REGS, NULL);
        } else if (vaddr == layer_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_layer, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &executed, 1);
    }
}

static void on_atexit(qemu_plugin_id_t id, void *udata)
{
    char line[160];
    (void)id, (void)udata;
    for (const struct block *b = blocks; b != NULL; b = b->next) {
        for (uint64_t pass = 0; pass < MAX_PASSES && (per_segment || pass < passes); pass++) {
            if (b->runs[pass] != 0) {
                snprintf(line, sizeof line, "bb %" PRIu64 " %#" PRIx64 " %#" PRIx64 " %" PRIu64 " %" PRIu64 "\n",
                         pass, b->vaddr, b->end, b->insns, b->runs[pass]);
                qemu_plugin_outs(line);
            }
        }
    }
    snprintf(line, sizeof line, "insn_total %" PRIu64 " passes %" PRIu64 "\n", executed, passes);
    qemu_plugin_outs(line);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    if (info->system_emulation && info->system.max_vcpus > 1) {
        fprintf(stderr, "insn_count: one vCPU only\n");
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "start=", 6) == 0) {
            start_addr = strtoull(argv[i] + 6, NULL, 0) & ~1ull; /* Thumb bit off */
        } else if (strncmp(argv[i], "stop=", 5) == 0) {
            stop_addr = strtoull(argv[i] + 5, NULL, 0) & ~1ull;
        } else if (strncmp(argv[i], "layer=", 6) == 0) {
            layer_addr = strtoull(argv[i] + 6, NULL, 0) & ~1ull;
        } else if (strcmp(argv[i], "bb=on") == 0) {
            per_block = true;
        } else if (strcmp(argv[i], "bb=segments") == 0) {
            per_block = per_segment = true;
        } else {
            fprintf(stderr, "insn_count: unknown argument %s\n", argv[i]);
            return -1;
        }
    }
    if (start_addr == 0 || stop_addr == 0 || start_addr == stop_addr || layer_addr == start_addr
        || layer_addr == stop_addr || (per_segment && layer_addr == 0)) {
        fprintf(stderr, "insn_count: give start=0x... and stop=0x... (distinct marker addresses)\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_atexit, NULL);
    return 0;
}
