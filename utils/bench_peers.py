"""Published figures the benchmark compares its models with, and where each comes from.

TFLM: TensorFlow Lite Micro at commit 90b983c2 with the CMSIS-NN kernels its build pins,
release build, arm-none-eabi-gcc 12.2, on the same emulator as this benchmark (QEMU
mps2-an500, Cortex-M7), instructions counted exactly by a TCG plugin between markers around
`Invoke()` (kernels plus TFLM's per-op overhead), on the MLPerf Tiny reference int8 .tflite
models; "reference" is the same interpreter with TFLM's reference kernels. ExecuTorch: 1.5's
Cortex-M backend (CMSIS-NN ops, every layer lowered) on the same emulator. MLPerf Tiny: the
best closed-division results published for the STM32F746 (216 MHz), v1.1. RIOT-ML: the one
published TVM + RIOT LeNet-5 on that board. All as quoted in the project's issue that asked
for this benchmark (the TFLM and ExecuTorch runs were made by the project on its emulator).
"""

SOURCE_TFLM = ("TFLM 90b983c2 + pinned CMSIS-NN, release, arm-none-eabi-gcc 12.2, QEMU mps2-an500, "
               "TCG-plugin count around Invoke(), MLPerf Tiny reference int8 .tflite models")
SOURCE_EXECUTORCH = "ExecuTorch 1.5 Cortex-M backend (CMSIS-NN ops), same emulator"
SOURCE_MLPERF = "MLPerf Tiny v1.1 closed division, best published STM32F746 (216 MHz) result"
SOURCE_RIOT_ML = "RIOT-ML (TVM + RIOT) LeNet-5 on the STM32F746"
# TFLM's flash is its model flatbuffer plus its interpreter and kernels. The flatbuffer alone
# (the reference model's file size) is a floor under it.
SOURCE_FLATBUFFER = ("file size of the MLPerf Tiny reference int8 model in github.com/mlcommons/tiny, "
                     "benchmark/training/<task>/trained_models/: kws_ref_model.tflite, "
                     "pretrainedResnet_quant.tflite, vww_96_int8.tflite, ad01_int8.tflite")
SOURCE_TFLM_CODE = ("measured by the project: TFLM 90b983c2 + CMSIS-NN 4ab83cc3 (the commit TFLM pins), TFLM's "
                    "Makefile offline, TARGET=cortex_m_generic TARGET_ARCH=cortex-m7+fp "
                    "OPTIMIZED_KERNEL_DIR=cmsis_nn BUILD_TYPE=release (-Os core, -O2 kernels), "
                    "arm-none-eabi-gcc 12.2, -Wl,--gc-sections; a main with a MicroMutableOpResolver of "
                    "the model's ops (default registrations) that runs once on QEMU mps2-an500; text+data "
                    "of the TFLM and CMSIS-NN objects in the link map (libc, libgcc, libm, startup, main "
                    "and the model array not counted)")

# short name → the zoo's name (utils/zoo/catalog.py)
MODELS = {"lenet5": "lenet5", "dscnn": "ds_cnn", "resnet8": "resnet8", "mbv1": "mobilenet_v1_025",
          "ad": "fc_autoencoder"}

PEERS = {
    "lenet5": {
        "network": "LeNet-5 (ours)",
        "macs": 416_520,
        "tflm_cmsis_nn_instructions": 2_274_814,
        "tflm_cmsis_nn_instructions_per_mac": 5.46,
        "convolutional": True,   # the arena goal: below half of TFLM's
        "tflm_arena_bytes": 9_108,
        "tflm_reference_instructions": 9_605_581,
        "goal_0202_instructions": 500_000,
        "executorch_instructions": 3_058_065,
        "executorch_memory_pool_bytes": 11_600,   # "11.6 KB", plus a 24 KB kernel registry
        "executorch_flash_bytes": 202_000,       # "202 KB"
        "published_ms": 39.6,
        "published_ms_by": "RIOT-ML (TVM + RIOT)",
        "published_ms_source": SOURCE_RIOT_ML,
    },
    "dscnn": {
        "network": "DS-CNN (keyword spotting)",
        "macs": 2_656_768,
        "tflm_cmsis_nn_instructions": 7_643_669,
        "tflm_cmsis_nn_instructions_per_mac": 2.88,
        "tflm_flatbuffer_bytes": 53_936,
        "tflm_code_bytes": 76_693,   # interpreter + kernels: flash = flatbuffer + this
        "convolutional": True,   # the arena goal: below half of TFLM's
        "tflm_arena_bytes": 22_820,
        "tflm_reference_instructions": 43_613_311,
        "goal_0202_instructions": 3_800_000,
        "executorch_instructions": 8_361_721,
        "executorch_memory_pool_bytes": 26_800,
        "executorch_flash_bytes": 129_000,
        "published_ms": 17.75,
        "published_ms_by": "Plumerai",
        "published_ms_source": SOURCE_MLPERF,
    },
    "resnet8": {
        "network": "ResNet-8 (image classification)",
        "macs": 12_501_632,
        "tflm_cmsis_nn_instructions": 30_027_812,
        "tflm_cmsis_nn_instructions_per_mac": 2.40,
        "tflm_flatbuffer_bytes": 98_496,
        "tflm_code_bytes": 71_459,   # interpreter + kernels: flash = flatbuffer + this
        "convolutional": True,   # the arena goal: below half of TFLM's
        "tflm_arena_bytes": 54_996,
        "tflm_reference_instructions": 108_687_673,
        "goal_0202_instructions": 15_000_000,
        "published_ms": 61.57,
        "published_ms_by": "Bosch HALE",
        "published_ms_source": SOURCE_MLPERF,
    },
    "mbv1": {
        "network": "MobileNetV1 0.25 (visual wake words)",
        "macs": 7_489_664,
        "tflm_cmsis_nn_instructions": 24_025_584,
        "tflm_cmsis_nn_instructions_per_mac": 3.21,
        "tflm_flatbuffer_bytes": 333_288,
        "tflm_code_bytes": 76_693,   # interpreter + kernels: flash = flatbuffer + this
        "convolutional": True,   # the arena goal: below half of TFLM's
        "tflm_arena_bytes": 100_708,
        "tflm_reference_instructions": 101_220_713,
        "goal_0202_instructions": 12_000_000,
        "published_ms": 34.08,
        "published_ms_by": "Plumerai",
        "published_ms_source": SOURCE_MLPERF,
    },
    "ad": {
        "network": "FC autoencoder (anomaly detection)",
        "macs": 264_192,
        "tflm_cmsis_nn_instructions": 583_259,
        "tflm_cmsis_nn_instructions_per_mac": 2.21,
        "tflm_flatbuffer_bytes": 276_976,
        "tflm_code_bytes": 26_543,   # interpreter + kernels: flash = flatbuffer + this
        "tflm_arena_bytes": 2_580,
        "tflm_reference_instructions": 1_949_028,
        "goal_0202_instructions": 290_000,
        "published_ms": 1.70,
        "published_ms_by": "best published",
        "published_ms_source": SOURCE_MLPERF,
    },
}


def peer_row(name: str) -> dict:
    """The published row of a model (short name), with its sources."""
    row = dict(PEERS[name])
    row["sources"] = {"tflm": SOURCE_TFLM, "published_ms": row.get("published_ms_source")}
    if "tflm_flatbuffer_bytes" in row:
        row["sources"]["tflm_flatbuffer"] = SOURCE_FLATBUFFER
    if "tflm_code_bytes" in row:
        row["tflm_flash_bytes"] = row["tflm_flatbuffer_bytes"] + row["tflm_code_bytes"]
        row["sources"]["tflm_code"] = SOURCE_TFLM_CODE
    if "executorch_instructions" in row:
        row["sources"]["executorch"] = SOURCE_EXECUTORCH
    return row


def ratios(variant: dict, peer: dict) -> dict:
    """How a measured variant row compares with the published row: ours / theirs (below 1
    is better for us), and whether the issue's goals are met."""
    ours = variant["instructions_per_inference"]
    out = {
        "instructions_vs_tflm_cmsis_nn": round(ours / peer["tflm_cmsis_nn_instructions"], 4),
        "tflm_cmsis_nn_over_ours": round(peer["tflm_cmsis_nn_instructions"] / ours, 3),
        "instructions_vs_tflm_reference": round(ours / peer["tflm_reference_instructions"], 4),
        "arena_vs_tflm": round(variant["arena_bytes"] / peer["tflm_arena_bytes"], 4),
        "arena_at_or_below_tflm": variant["arena_bytes"] <= peer["tflm_arena_bytes"],
    }
    if peer.get("convolutional"):
        out["arena_below_half_tflm"] = variant["arena_bytes"] < peer["tflm_arena_bytes"] / 2
    if "tflm_flatbuffer_bytes" in peer:
        out["flash_vs_tflm_flatbuffer"] = round(variant["flash_bytes"] / peer["tflm_flatbuffer_bytes"], 4)
        out["flash_at_or_below_tflm_flatbuffer"] = variant["flash_bytes"] <= peer["tflm_flatbuffer_bytes"]
    if "tflm_flash_bytes" in peer:
        out["flash_vs_tflm"] = round(variant["flash_bytes"] / peer["tflm_flash_bytes"], 4)
        out["flash_at_or_below_tflm"] = variant["flash_bytes"] <= peer["tflm_flash_bytes"]
    if "executorch_instructions" in peer:
        out["instructions_vs_executorch"] = round(ours / peer["executorch_instructions"], 4)
    if variant.get("estimated_ms_216mhz") is not None:
        out["estimated_ms_vs_published"] = round(variant["estimated_ms_216mhz"] / peer["published_ms"], 4)
    return out
