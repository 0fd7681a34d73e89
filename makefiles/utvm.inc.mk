# A Model Library Format (MLF) tar as a RIOT package.
#
# MLF is what microTVM's AOT flow (and this project's compiler: the layout's Python owner is
# utils/aot/mlf.py) writes:
#   codegen/host/src/*.c                the model as plain C
#   codegen/host/include/tvmgen_*.h     the API the application calls
#   runtime/include/**                  the runtime headers the generated C includes
#   metadata.json                       model name, hash, arena size, optional "cflags"
#
# A model package is three short files in an EXTERNAL_PKG_DIRS folder, e.g. pkg/mnistCNN/:
#   Makefile           PKG_NAME = mnistCNN
#                      include $(UTVM_MAKEFILES)/utvm.inc.mk
#   Makefile.include   INCLUDES += -I$(BINDIR)/pkg/mnistCNN/codegen/host/include
#                      INCLUDES += -I$(BINDIR)/pkg/mnistCNN/runtime/include
#   mnistCNN.tar       the model (generated, not versioned)
# The application exports UTVM_MAKEFILES (the folder of this file) before including RIOT's
# Makefile.include.
#
# PKG_NAME must equal the name in USEPKG: RIOT links a package only through a module of
# exactly that name, so the generated C is compiled as module $(PKG_NAME).

ifeq (,$(PKG_NAME))
  $(error PKG_NAME must be set before including utvm.inc.mk)
endif

UTVM_MAKEFILES ?= $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
UTVM_TAR ?= $(CURDIR)/$(PKG_NAME).tar
# Shown when the tar is missing: how this package's model is made.
UTVM_TAR_HINT ?= compile the model into it first
# Unpacked per board, like a package RIOT builds in-source.
UTVM_MODEL_DIR ?= $(BINDIR)/pkg/$(PKG_NAME)
UTVM_UNPACKED = $(UTVM_MODEL_DIR)/.utvm-unpacked

.PHONY: all prepare clean distclean FORCE

# RIOT runs `make prepare` (errors ignored) before building anything, then `make` (all).
# Both unpack, so the headers exist before the application is compiled and a missing tar
# still stops the build.
all: $(UTVM_UNPACKED)
	$(QQ)"$(MAKE)" -C $(UTVM_MODEL_DIR)/codegen/host/src -f $(UTVM_MAKEFILES)/utvm/Makefile.utvm MODULE=$(PKG_NAME)

# Without the tar, `prepare` leaves the complaint to `all`, so it is said once.
prepare: $(if $(wildcard $(UTVM_TAR)),$(UTVM_UNPACKED))
	@:

# The stamp holds the checksum of the tar it was unpacked from. Another tar, even an older
# file (a different model, UTVM_TAR=...), is a different checksum: make's timestamps alone
# would keep the previous model.
UTVM_TAR_SUM := $(if $(wildcard $(UTVM_TAR)),$(shell cksum < $(UTVM_TAR)))
ifneq ($(UTVM_TAR_SUM),$(shell cat $(UTVM_UNPACKED) 2>/dev/null))
  $(UTVM_UNPACKED): FORCE
endif

# A new tar replaces the whole tree and the module's objects: files the new model no longer
# has must not linger. `tar -m` gives the files the time of unpacking, so everything that
# includes the model's headers is rebuilt too.
$(UTVM_UNPACKED): $(UTVM_TAR)
	$(Q)rm -rf $(UTVM_MODEL_DIR) $(BINDIR)/$(PKG_NAME)
	$(Q)mkdir -p $(UTVM_MODEL_DIR)
	$(Q)tar -xmf $< -C $(UTVM_MODEL_DIR)
	$(Q)test -d $(UTVM_MODEL_DIR)/codegen/host/src || \
	  { echo "$<: no codegen/host/src, not a Model Library Format tar" >&2; exit 1; }
	$(Q)echo "$(UTVM_TAR_SUM)" > $@

FORCE:

$(UTVM_TAR):
	@printf '%s\n' "$@ not found: $(UTVM_TAR_HINT)" >&2; exit 1

clean distclean:
	$(Q)rm -rf $(UTVM_MODEL_DIR)
