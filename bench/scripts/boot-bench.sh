#!/usr/bin/env bash
# Boot benchmark: time from VMM start to the guest's init marker, Cordon (`cordon run`)
# vs QEMU (`-M microvm`), same kernel, initramfs, memory and command line, alternating in
# one L1 boot (this host's /dev/kvm is PVM: both VMMs run nested, see nested-vmm.sh).
# Also records the VMM's own setup time (log line "VM set up in") and its RSS at the marker.
# The guest is the harness's L2 (agent initramfs, no checks): the marker is its init's
# "CORDON-INIT ready" line; the agent then resets the guest.
# Usage: boot-bench.sh [RUNS]   Output: raw lines on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
runs=${1:-3}
l1=$(mktemp)
cat > "$l1" <<L1
mark() { while IFS= read -r line; do
  case "\$line" in *CORDON-INIT\ ready*) echo "BENCH-MARK vmm=\$1 l1=\$(cut -d' ' -f1 /proc/uptime)"
    p=\$(pidof \$2 | cut -d' ' -f1); [ -n "\$p" ] && echo "BENCH-RSS vmm=\$1 \$(grep -E 'VmRSS|RssAnon' /proc/\$p/status | tr -s ' \t' ' ' | tr '\n' ' ')";;
  esac; echo "\$line"; done; }
for i in \$(seq $runs); do
  echo "BENCH-START vmm=cordon run=\$i l1=\$(cut -d' ' -f1 /proc/uptime)"
  timeout 300 cordon run --kernel "\$L2_KERNEL" --initrd "\$L2_INITRD" --mem 256 --no-console-input --params "\$L2_CMDLINE" < /dev/null 2>&1 | mark cordon cordon
  echo "BENCH-END vmm=cordon run=\$i l1=\$(cut -d' ' -f1 /proc/uptime)"
  echo "BENCH-START vmm=qemu run=\$i l1=\$(cut -d' ' -f1 /proc/uptime)"
  timeout 300 qemu-system-x86_64 -L /usr/share/qemu -M microvm,rtc=off -enable-kvm -cpu host -m 256 -smp 1 -nographic -no-reboot \
    -kernel "\$L2_KERNEL" -initrd "\$L2_INITRD" -append "\$L2_CMDLINE pci=off" </dev/null 2>&1 | mark qemu qemu-system-x86_64
  echo "BENCH-END vmm=qemu run=\$i l1=\$(cut -d' ' -f1 /proc/uptime)"
done
L1
WITH_QEMU=1 TIMEOUT=${TIMEOUT:-1800} NAME=boot-bench "$here/nested-vmm.sh" "$l1"
rm -f "$l1"
