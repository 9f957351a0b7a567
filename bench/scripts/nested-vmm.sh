#!/usr/bin/env bash
# Boots `cordon run` nested: an L1 Linux under QEMU TCG (emulated AMD SVM) loads kvm_amd,
# and inside L1 the statically built cordon VMM boots the L2 guest with real KVM.
# Usage: nested-vmm.sh CORDON_BIN L1_SCRIPT [EXTRA_FILE...]
#   L1_SCRIPT runs inside L1 after kvm_amd is loaded; /guest holds vmlinuz, l2.cpio.gz and
#   the extra files; /bin holds cordon. Env: KERNEL_DIR (extracted Debian cloud kernel,
#   default /tmp/guest-try/kernel), WORK (default /tmp/cordon-nested), L1_MEM (MiB).
set -euo pipefail
cordon=$1; l1script=$2; shift 2
K=${KERNEL_DIR:-/tmp/guest-try/kernel}
W=${WORK:-/tmp/cordon-nested}; mkdir -p "$W"
[ -d "$K/lib/modules" ] || { echo "no extracted kernel in $K (run /work/shared/guest/try-guests.sh setup)" >&2; exit 2; }
kver=$(ls "$K/lib/modules"); vmlinuz="$K/boot/vmlinuz-$kver"
[ -f "$K/lib/modules/$kver/modules.dep" ] || depmod -b "$K" "$kver"

# initramfs SRC OUT MODULE...: busybox + SRC tree + modules (deps first, decompressed)
initramfs() {
  local src=$1 out=$2; shift 2
  local r; r=$(mktemp -d); mkdir -p "$r"/{bin,proc,sys,dev,tmp,lib/modules}
  cp /bin/busybox "$r/bin/"; cp -a "$src"/. "$r/"
  for m in "$@"; do
    for dep in $(modprobe -d "$K" -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}'); do
      xz -dc "$dep" > "$r/lib/modules/$(basename "${dep%.xz}")"
      basename "${dep%.xz}" >> "$r/lib/modules/order"
    done
  done
  chmod +x "$r/init"; (cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) > "$out"; rm -rf "$r"
}
common_init='#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
[ -f /lib/modules/order ] && for m in $(cat /lib/modules/order); do insmod /lib/modules/$m; done'

# L2: prints a marker, then reboots (i8042, reboot=k: the VMM exits 0).
if [ ! -f "$W/l2.cpio.gz" ] || [ -n "${L2_REBUILD:-}" ]; then
  rm -rf "$W/l2-root"; mkdir -p "$W/l2-root"
  if [ -n "${L2_INIT:-}" ]; then cp "$L2_INIT" "$W/l2-root/init"; else
  printf '%s\n%s\n' "$common_init" 'echo "L2-INIT-MARKER uptime=$(cut -d" " -f1 /proc/uptime)"
[ -e /dev/hwrng ] && { head -c 16 /dev/hwrng | od -An -tx1 | tr -d " \n"; echo " L2-HWRNG-OK"; }
reboot -f' > "$W/l2-root/init"; fi
  initramfs "$W/l2-root" "$W/l2.cpio.gz" ${L2_MODULES:-}
fi

rm -rf "$W/l1-root"; mkdir -p "$W/l1-root"/{bin,guest}
cp "$cordon" "$W/l1-root/bin/cordon"
cp -L "$vmlinuz" "$W/l1-root/guest/vmlinuz"; cp "$W/l2.cpio.gz" "$W/l1-root/guest/"
for f in "$@"; do cp -a "$f" "$W/l1-root/guest/"; done
# WITH_QEMU=1: also put qemu-system-x86_64 (and its libraries, qboot) into L1 as a peer VMM.
if [ -n "${WITH_QEMU:-}" ]; then
  q=$(command -v qemu-system-x86_64); cp "$q" "$W/l1-root/bin/"; mkdir -p "$W/l1-root/usr/share/qemu"
  for l in $(ldd "$q" | grep -o '/[^ ]*'); do mkdir -p "$W/l1-root$(dirname "$l")"; cp -L "$l" "$W/l1-root$l"; done
  for f in /usr/share/qemu/qboot.rom /usr/share/seabios/bios-microvm.bin /usr/share/qemu/linuxboot_dma.bin; do
    [ -f "$f" ] && cp -L "$f" "$W/l1-root/usr/share/qemu/"; done
fi
# L1 moves onto a tmpfs first: jailed backends pivot_root, which the initramfs cannot do.
printf '%s\n%s\n%s\n%s\n' '#!/bin/busybox sh
if [ ! -e /.tmpfs-root ]; then
  /bin/busybox mkdir -p /newroot && /bin/busybox mount -t tmpfs -o size=90% root /newroot
  for d in /*; do [ "$d" = /newroot ] || /bin/busybox cp -a "$d" /newroot/; done
  /bin/busybox touch /newroot/.tmpfs-root; exec /bin/busybox switch_root /newroot /init
fi' "$(echo "$common_init" | tail -n +2)" 'mkdir -p /tmp; mount -t tmpfs tmp /tmp
echo "L1-READY uptime=$(cut -d" " -f1 /proc/uptime)"; cd /guest' \
  "$(cat "$l1script")
echo \"L1-DONE uptime=\$(cut -d' ' -f1 /proc/uptime)\"; poweroff -f" > "$W/l1-root/init"
initramfs "$W/l1-root" "$W/l1.cpio.gz" kvm_amd
exec timeout "${TIMEOUT:-300}" qemu-system-x86_64 -M q35 -accel tcg -cpu max -m "${L1_MEM:-2048}" -smp 1 \
  -nographic -no-reboot -kernel "$vmlinuz" -initrd "$W/l1.cpio.gz" \
  -append "console=ttyS0 quiet reboot=t panic=-1"
