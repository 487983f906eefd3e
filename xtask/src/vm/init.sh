#!/bin/busybox sh
# PID 1 of the xmacvlan test VM (built into the initramfs by `cargo xtask vm-test`).
# Loads the modules, mounts the host's / read-only over 9p with a tmpfs overlay on top,
# chroots into it and runs the script named by `xmvm_script=` on the kernel command line.
# Its exit code is printed as `XMVM:<nonce>:exit <code>` before the VM powers off.
# Every `xmvm_keep=PATH` (the checkout, the test binaries' directory) stays visible even where
# the guest mounts a fresh filesystem over a parent (a checkout under /tmp or /run).
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

script=
nonce=
keep=
for word in $(cat /proc/cmdline); do
    case "$word" in
        xmvm_script=*) script="${word#*=}" ;;
        xmvm_nonce=*) nonce="${word#*=}" ;;
        xmvm_keep=*) keep="$keep ${word#*=}" ;;
    esac
done

die() {
    echo "XMVM:$nonce:exit 125 init: $*"
    poweroff -f
    sleep 60
}

while read -r module; do
    insmod "/lib/modules/$module" || die "insmod $module failed"
done < /modules.list

mkdir -p /mnt/lower /mnt/rw /mnt/root
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /mnt/lower \
    || die "mounting the host's / over 9p failed"
mount -t tmpfs -o size=512m,mode=0755 tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay /mnt/root \
    || die "mounting the overlay failed"

r=/mnt/root
# Hold on to the kept paths before anything is mounted over their parents.
n=0
for k in $keep; do
    mkdir -p /mnt/keep/$n
    mount -o bind "$r$k" /mnt/keep/$n || die "$k is not visible in the guest"
    n=$((n + 1))
done
mount -t proc proc $r/proc || die "mounting /proc failed"
mount -t sysfs sysfs $r/sys || die "mounting /sys failed"
mount -t devtmpfs devtmpfs $r/dev || die "mounting /dev failed"
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $r/dev/pts
mount -t tmpfs tmpfs $r/dev/shm
mount -t tmpfs -o mode=0755 tmpfs $r/run || die "mounting /run failed"
mkdir -p $r/run/netns
mount -t tmpfs -o mode=0755 tmpfs $r/run/netns || die "mounting /run/netns failed"
mount -t tmpfs -o mode=1777 tmpfs $r/tmp || die "mounting /tmp failed"
mount -t bpf bpf $r/sys/fs/bpf || die "mounting bpffs on /sys/fs/bpf failed"
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs $r/sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs $r/sys/kernel/tracing 2>/dev/null
n=0
for k in $keep; do
    mkdir -p "$r$k" && mount -o bind /mnt/keep/$n "$r$k" || die "binding $k back failed"
    n=$((n + 1))
done
hostname xmacvlan-vm
ip link set lo up 2>/dev/null

[ -n "$script" ] || die "no xmvm_script= on the kernel command line"
chroot $r /bin/sh "$script"
echo "XMVM:$nonce:exit $?"
poweroff -f
sleep 60
