# The MNIST firmware as a RIOT application.
#
#   make                         build for the STM32F746G-DISCO (bin/stm32f746g-disco/MNIST.elf)
#   make flash                   flash it with OpenOCD through the board's ST-LINK
#   make term                    open the serial console (PORT, default /dev/ttyACM0)
#   make test                    run tests/01-run.py against the flashed board
#   make BOARD=native64 all term the same firmware as a Linux process (`all test` to check it)
#   make BAUD=921600 flash term  the console UART at another rate (the firmware's `info` says
#                                which; pass the same --baud to 0401/0402)
#
# RIOT is not vendored: clone it into ./RIOT (git-ignored) or point RIOTBASE at a clone.
# The model comes from pkg/mnistCNN/mnistCNN.tar, written by 0201tvm_no_optim.py.

APPLICATION = MNIST
BOARD ?= stm32f746g-disco
RIOTBASE ?= $(CURDIR)/RIOT

ifeq (,$(wildcard $(RIOTBASE)/Makefile.include))
  $(error RIOT not found in $(RIOTBASE): run `git clone https://github.com/RIOT-OS/RIOT.git RIOT` here, or set RIOTBASE to a RIOT clone)
endif

# The model as a RIOT package (pkg/mnistCNN), built by the project's generic Model Library
# Format rules in makefiles/ (never by patching the RIOT clone).
EXTERNAL_PKG_DIRS += pkg
USEPKG += mnistCNN
export UTVM_MAKEFILES = $(CURDIR)/makefiles

# The firmware core is shared with the stand-ins; only firmware/platform_riot.c is RIOT's.
SRC += 0301mcu_mnist.c firmware/protocol.c firmware/platform_riot.c
INCLUDES += -I$(CURDIR)/firmware

# Inference time in microseconds, measured on the device.
USEMODULE += ztimer_usec

NATIVE_BOARDS = native native32 native64
ifeq (,$(filter $(NATIVE_BOARDS),$(BOARD)))
  # Input arrives through RIOT's stdin (UART interrupt -> ring buffer -> stdio_read()).
  USEMODULE += stdin
  # The default ring buffer holds 64 bytes; a whole request frame (795 bytes) fits in 1 KiB,
  # so a client may send the next image while the current one is still being classified.
  # (tsrb needs a power of two.)
  CFLAGS += -DSTDIO_RX_BUFSIZE=1024
  # The console's rate, for the firmware (RIOT's STDIO_UART_BAUDRATE, reported by `info`) and
  # for `make term` (RIOT's BAUD). Rates the ST-LINK/V2-1 virtual COM port takes: README.
  BAUD ?= 115200
  CFLAGS += -DSTDIO_UART_BAUDRATE=$(BAUD)
  # Main thread stack. Its worst case is bounded from the linked ELF by `python3 -m utils.riot`
  # (utils/stack_usage.py: every call chain from main_trampoline, plus the FPU interrupt
  # frame, the context switch and thread_t) and recorded in reports/firmware.json, section
  # stm32f746g-disco, key main_stack_worst_case_bytes (the chain under
  # main_stack_deepest_chain). The size leaves room above that bound for a model whose
  # kernels need more and for a debugging printf("%f") at the deepest point: an overflow
  # here corrupts memory silently, and the F746's RAM can spare the margin.
  # tests/test_riot_build.py fails when the bound outgrows this size.
  CFLAGS += -DTHREAD_STACKSIZE_MAIN=2048
endif
# native boards: no `stdin` module. Its reader and the firmware would both read fd 0 and take
# bytes from each other; firmware/platform_riot.c reads fd 0 itself there. When the terminal
# hangs up, main() returns and the process ends (RIOT's unittests do the same).
ifneq (,$(filter $(NATIVE_BOARDS),$(BOARD)))
  FEATURES_REQUIRED += periph_pm
  CFLAGS += -DCONFIG_CORE_EXIT_WITH_MAIN=1
endif

# No printf_float/scanf_float (and no larger stack for them): the firmware formats no floats.
# Scores go out as float32 bytes in binary replies and as integer per-mille in text replies,
# and input is parsed byte by byte, never by scanf.

# The clients and `make term` both default to the ST-LINK's virtual COM port.
PORT_LINUX ?= /dev/ttyACM0

# `make test`: only the RIOT-style script (the pytest files in tests/ are not executables).
TESTS = $(CURDIR)/tests/01-run.py

DEVELHELP ?= 0
QUIET ?= 1

include $(RIOTBASE)/Makefile.include

# An STM32 build makes RIOT git-clone the CMSIS device headers of the board's family, one
# package per family (cmsis-device-f7 for the F746, cmsis-device-l4 for nucleo-l476rg...).
# Offline, git's own "Could not resolve host" does not say what to do; say what
# `python3 -m utils.riot` says. Asked only while the family's headers are missing (RIOT's
# STM32FAM_INCLUDE_FILE) and for goals that build; the URL is RIOT's own (Makefile.cmsis).
UTVM_BUILD_GOALS = all flash elffile binfile hexfile
ifneq (,$(STM32FAM_INCLUDE_FILE))
  ifeq (,$(wildcard $(STM32FAM_INCLUDE_FILE)))
    ifneq (,$(filter $(UTVM_BUILD_GOALS),$(or $(MAKECMDGOALS),all)))
      UTVM_CMSIS_URL := $(subst $$(CPU_FAM),$(CPU_FAM),$(shell sed -n 's/^PKG_URL *?*= *//p' \
        $(RIOTCPU)/stm32/Makefile.cmsis 2>/dev/null))
      UTVM_CMSIS_URL := $(or $(UTVM_CMSIS_URL),https://github.com/STMicroelectronics/cmsis-device-$(CPU_FAM))
      ifeq (,$(shell GIT_TERMINAL_PROMPT=0 timeout 30 git ls-remote --exit-code \
                 $(UTVM_CMSIS_URL) HEAD >/dev/null 2>&1 && echo reachable))
        $(error RIOT cannot fetch $(UTVM_CMSIS_URL) (no network and no local mirror configured with git's url.<mirror>.insteadOf; see README, RIOT offline))
      endif
    endif
  endif
endif

# Warning flags that must come after RIOT's own (RIOT adds -Wstrict-prototypes and -Wmissing-include-dirs
# in Makefile.include; only a later flag overrides them): RIOT builds with -Werror, and the
# model's include folders exist only once its tar is unpacked (a model without runtime
# headers has no runtime/include at all).
CFLAGS += -Wno-strict-prototypes
CFLAGS += -Wno-missing-include-dirs

# The firmware file, under the name it has always had: scripts ask `make info-debug-variable-BINARY`.
override BINARY := $(ELFFILE)
