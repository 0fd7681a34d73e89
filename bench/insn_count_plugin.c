/* QEMU TCG plugin: exact count of the guest instructions executed between two marker
 * functions, once per pass (one inference of bench/bench_m7.c).
 *
 *   qemu-system-arm ... -d plugin -D plugin.log \
 *       -plugin libinsn_count.so,start=0x<bench_marker_start>,stop=0x<bench_marker_stop>
 *
 * Every translated instruction gets an inline "counter += 1" (no helper call, exact even when
 * a block is left half way); the first instruction of each marker gets a callback that takes
 * the counter. Each stop prints "insn_count <pass> <instructions since start>" through
 * qemu_plugin_outs (QEMU's log: -d plugin, -D file). The count includes the few instructions
 * of the markers themselves; the harness measures an empty pass to subtract them.
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

static uint64_t executed;            /* every guest instruction (one vCPU: no races) */
static uint64_t start_addr, stop_addr, at_start, passes;
static bool armed;

static void on_start(unsigned int vcpu, void *udata)
{
    (void)vcpu, (void)udata;
    at_start = executed;
    armed = true;
}

static void on_stop(unsigned int vcpu, void *udata)
{
    char line[80];
    (void)vcpu, (void)udata;
    if (!armed) {
        return;
    }
    armed = false;
    snprintf(line, sizeof line, "insn_count %" PRIu64 " %" PRIu64 "\n", passes++, executed - at_start);
    qemu_plugin_outs(line);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    for (size_t i = 0; i < qemu_plugin_tb_n_insns(tb); i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
        if (vaddr == start_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_start, QEMU_PLUGIN_CB_NO_REGS, NULL);
        } else if (vaddr == stop_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_stop, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &executed, 1);
    }
}

static void on_atexit(qemu_plugin_id_t id, void *udata)
{
    char line[80];
    (void)id, (void)udata;
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
        }
    }
    if (start_addr == 0 || stop_addr == 0 || start_addr == stop_addr) {
        fprintf(stderr, "insn_count: give start=0x... and stop=0x... (marker addresses)\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_atexit, NULL);
    return 0;
}
