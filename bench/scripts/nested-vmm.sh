#!/usr/bin/env bash
# Boots `cordon run` nested through the guest harness's runner B (tests/src/guest/nested.rs,
# `cordon-guest nested`): an L1 Linux under QEMU TCG (emulated AMD SVM) loads kvm_amd, and
# inside L1 the script starts the statically built cordon VMM, which boots the L2 guest
# (the harness's Debian cloud kernel and agent initramfs) with real KVM. On a host with
# ordinary KVM the script runs on the host instead.
# Usage: nested-vmm.sh L1_SCRIPT [EXTRA_FILE...]
#   In L1_SCRIPT: $L2_KERNEL, $L2_INITRD, $L2_CMDLINE (the agent resets L2 when done, which
#   ends `cordon run`), $CORDON_DIR (holds the extra files) and `cordon` on PATH.
#   Env: CORDON_BIN (a ready static cordon; default: the harness builds it), WITH_QEMU=1
#   (carry QEMU into L1 as a peer VMM), TIMEOUT (s, default 900), NAME (console log name
#   in target/guest-logs). The whole L1 console is printed on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
l1script=$1; shift
args=(--script "$l1script" --timeout "${TIMEOUT:-900}" --name "${NAME:-nested-vmm}")
if [ -n "${CORDON_BIN:-}" ]; then args+=(--bin "$CORDON_BIN"); else args+=(--static-bin cordon:cordon); fi
[ -n "${WITH_QEMU:-}" ] && args+=(--with-qemu)
for f in "$@"; do args+=(--file "$f"); done
exec cargo run -q --manifest-path "$root/Cargo.toml" -p cordon-tests --release --bin cordon-guest -- \
  nested "${args[@]}"
