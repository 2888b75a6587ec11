#!/bin/sh
# images/debian/build.sh OUTDIR: build the Debian 12 (bookworm) elastic node image.
#
# NEEDS ROOT: debootstrap and chroot (the packages' maintainer scripts run as root in the
# new system). Run it as root, e.g. `sudo images/debian/build.sh OUTDIR`.
#
# A debootstrap --variant=minbase system with systemd, udev, dbus, iproute2, openssh-server,
# ca-certificates, sudo and a kernel (linux-image-cloud-amd64: the Debian kernel flavour for
# virtual machines), booted from its own disk by GRUB (BIOS, MBR): no kernel or initrd
# outside the disk, so libvirt needs nothing but the disk. The contextualization
# (contextualization/) runs at boot as elastic-context.service and prints
# "ELASTIC-READY <hostname> <ip>" on the serial console (console=ttyS0).
#
# Debian packages needed on the build machine (the project's setup script installs them):
#   debootstrap    the base system, from the Debian mirror apt on this machine uses
#   qemu-utils     qemu-img, for disk.qcow2
#   e2fsprogs      mkfs.ext4 -d (the filesystem is made from a directory: no loop device)
# GRUB, the kernel and the initramfs tools come from the image's own packages (in chroot).
#
# Output in OUTDIR:
#   disk.qcow2     the image: MBR, GRUB, one ext4 partition (label elastic-root); the base
#                  of the nodes' overlays. Root grows to fill a larger overlay at boot.
#   manifest.json  suite, mirror, kernel, sizes, checksums, build time, input hash
#   packages.txt   the installed packages and their versions
#
# Environment:
#   MIRROR=URL          Debian mirror (default: the one apt on this machine uses for SUITE)
#   SECURITY_MIRROR=URL security updates (default: the one apt uses for SUITE-security;
#                       "none": no security updates)
#   SUITE=bookworm      Debian release
#   KERNEL=PACKAGE      kernel package (default linux-image-cloud-amd64; linux-image-amd64
#                       for the generic kernel with every driver: +160 MB)
#   EXTRA_PACKAGES="p…" more Debian packages (e.g. gridengine-exec)
#   PAYLOAD=DIR         copied over the root filesystem, last (e.g. a hook in
#                       etc/elastic/boot.d/ that starts a daemon)
#   DISK_SIZE=1G        virtual size of disk.qcow2 (a node's disk must be at least this)
#   COMPRESS=1          compressed qcow2 (0: plain, larger but a little faster to read)
#   DEB_CACHE=DIR       keep downloaded .deb files here for the next build
#                       (default OUTDIR/.debs; empty: no cache)
#   FORCE=1             rebuild even if the inputs have not changed
#
# Idempotent: if manifest.json records the same input hash (this script, rootfs/,
# contextualization/, the payload and the settings above) and disk.qcow2 exists, nothing is
# done. The Debian archive is not an input: FORCE=1 picks up new package versions.
# A rebuild replaces disk.qcow2 (atomically); elastic copies base images to its hosts under
# content-addressed names, so nodes made from the old one keep working.
set -eu

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die() {
    echo "build.sh: $*" >&2
    exit 1
}

[ $# -eq 1 ] || { usage >&2; exit 2; }
case $1 in -h | --help) usage; exit 0 ;; esac

now_ms() { echo "$(($(date +%s%N) / 1000000))"; }
secs() { echo "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"; }
t_start=$(now_ms)

[ "$(id -u)" -eq 0 ] ||
    die "needs root (debootstrap and chroot run the packages' scripts as root): sudo $0 $1"

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
ctx_src=$repo/contextualization
mkdir -p "$1"
out=$(cd "$1" && pwd)

# ---------------------------------------------------------------------------- tools and settings
PACKAGES="debootstrap qemu-utils e2fsprogs"
missing=""
for tool in debootstrap qemu-img mkfs.ext4 chroot mount umount sha256sum flock dd; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
[ -z "$missing" ] || die "missing:$missing (install the Debian packages: $PACKAGES)"

SUITE=${SUITE:-bookworm}
KERNEL=${KERNEL:-linux-image-cloud-amd64}
EXTRA_PACKAGES=${EXTRA_PACKAGES:-}
DISK_SIZE=${DISK_SIZE:-1G}
COMPRESS=${COMPRESS:-1}
DEB_CACHE=${DEB_CACHE-$out/.debs}

# apt_source SUITE: the first URI that apt on this machine uses for SUITE (one-line
# sources.list entries and deb822 .sources files).
apt_source() {
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v s="$1" '
            $1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == s) { print $i; found = 1; exit }
            }
            END { exit !found }' "$f" && return 0
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v s="$1" '
            BEGIN { RS = "" }
            {
                types = ""; uris = ""; suites = ""
                n = split($0, line, "\n")
                for (k = 1; k <= n; k++) {
                    if (line[k] ~ /^Types:/) types = " " substr(line[k], 7) " "
                    if (line[k] ~ /^URIs:/) uris = substr(line[k], 6)
                    if (line[k] ~ /^Suites:/) suites = " " substr(line[k], 8) " "
                }
                gsub(/[ \t]+/, " ", types); gsub(/[ \t]+/, " ", suites)
                if (index(types, " deb ") && index(suites, " " s " ")) {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
            }
            END { exit !found }' "$f" && return 0
    done
    return 1
}

if [ -z "${MIRROR:-}" ]; then
    MIRROR=$(apt_source "$SUITE") ||
        die "no Debian mirror for $SUITE in /etc/apt/sources.list*; set MIRROR=URL"
fi
if [ -z "${SECURITY_MIRROR:-}" ]; then
    SECURITY_MIRROR=$(apt_source "$SUITE-security") || SECURITY_MIRROR=none
fi
MIRROR=${MIRROR%/}
SECURITY_MIRROR=${SECURITY_MIRROR%/}

payload=""
if [ -n "${PAYLOAD:-}" ]; then
    [ -d "$PAYLOAD" ] || die "PAYLOAD=$PAYLOAD is not a directory"
    payload=$(cd "$PAYLOAD" && pwd)
fi

# DISK_SIZE in bytes (K, M, G, T suffixes, powers of 1024).
case $DISK_SIZE in
    *[Kk]) disk_bytes=$((${DISK_SIZE%?} * 1024)) ;;
    *[Mm]) disk_bytes=$((${DISK_SIZE%?} * 1024 * 1024)) ;;
    *[Gg]) disk_bytes=$((${DISK_SIZE%?} * 1024 * 1024 * 1024)) ;;
    *[Tt]) disk_bytes=$((${DISK_SIZE%?} * 1024 * 1024 * 1024 * 1024)) ;;
    *[!0-9]* | '') die "DISK_SIZE=$DISK_SIZE: a size like 1G, 1536M" ;;
    *) disk_bytes=$DISK_SIZE ;;
esac
disk_bytes=$((disk_bytes / 1048576 * 1048576))
[ "$disk_bytes" -ge $((256 * 1048576)) ] || die "DISK_SIZE=$DISK_SIZE is too small"

# Packages of the base system, besides minbase (what a cluster node needs).
#   systemd-sysv udev dbus  init, devices and modules, logind (the ACPI power button, so
#                           that libvirt's graceful shutdown works)
#   iproute2                ip, for the contextualization (it configures the network itself:
#                           no ifupdown, no networkd)
#   openssh-server sudo     remote login (keys from the context), USERn_SUDO
#   ca-certificates netbase TLS roots, /etc/services and /etc/protocols
#   iputils-ping procps     ping, ps, free, top
#   fdisk                   sfdisk, to grow the root partition at boot
#   zstd                    the initramfs is zstd-compressed (faster to unpack than gzip)
BASE_PACKAGES="systemd-sysv udev dbus iproute2 openssh-server sudo ca-certificates netbase
iputils-ping procps fdisk zstd"
# Installed with apt after the security updates are known (one kernel only):
#   KERNEL        the kernel and its initramfs (initramfs-tools)
#   grub-pc-bin   GRUB for BIOS: the boot code in the MBR and its modules in /boot/grub
LATE_PACKAGES="$KERNEL grub-pc-bin $EXTRA_PACKAGES"

# ---------------------------------------------------------------------------- up to date?
tree_hash() {
    # paths, modes, link targets and contents of every file under $1
    (cd "$1" && find . \( -type f -o -type l \) | LC_ALL=C sort | while IFS= read -r f; do
        if [ -L "$f" ]; then
            printf '%s -> %s\n' "$f" "$(readlink "$f")"
        else
            printf '%s %s %s\n' "$f" "$(stat -c %a "$f")" "$(sha256sum <"$f" | cut -d' ' -f1)"
        fi
    done) | sha256sum | cut -d' ' -f1
}
input_hash=$({
    echo "suite=$SUITE mirror=$MIRROR security=$SECURITY_MIRROR kernel=$KERNEL"
    echo "base=$BASE_PACKAGES late=$LATE_PACKAGES disk=$disk_bytes compress=$COMPRESS"
    sha256sum <"$0"
    tree_hash "$here/rootfs"
    tree_hash "$ctx_src"
    [ -z "$payload" ] || tree_hash "$payload"
} | sha256sum | cut -d' ' -f1)

# One build at a time in OUTDIR (elastic may ask for the image from several threads).
exec 9>>"$out/.lock"
flock 9

if [ "${FORCE:-0}" != 1 ] && [ -f "$out/manifest.json" ] && [ -f "$out/disk.qcow2" ] &&
    grep -q "\"input_hash\": \"$input_hash\"" "$out/manifest.json"; then
    echo "build.sh: $out is up to date ($SUITE, $(sed -n 's/^  "kernel_version": "\(.*\)",$/\1/p' "$out/manifest.json")); checked in $(secs $(($(now_ms) - t_start))) s"
    exit 0
fi

# ---------------------------------------------------------------------------- staging
work=$(mktemp -d "$out/.build.XXXXXX")
root=$work/root

# mounts_under DIR: mount points below DIR, deepest first.
mounts_under() {
    awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r
}
cleanup() {
    for m in $(mounts_under "$root"); do
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done
    if [ -n "$(mounts_under "$root")" ]; then
        echo "build.sh: still mounted under $root; not deleting $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step_ms=$(now_ms)
step() {
    # step NAME: print how long the previous step took
    t=$(now_ms)
    echo "build.sh: $1 ($(secs $((t - step_ms))) s)"
    step_ms=$t
}

in_root() {
    # in_root CMD...: run CMD in the new system, without questions
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"
}
apt_in_root() {
    in_root apt-get -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        -o Dpkg::Options::=--force-unsafe-io -o Dpkg::Use-Pty=0 "$@"
}

# ---------------------------------------------------------------------------- debootstrap
echo "build.sh: debootstrap $SUITE from $MIRROR into $root"
cache_opt=""
if [ -n "$DEB_CACHE" ]; then
    mkdir -p "$DEB_CACHE"
    DEB_CACHE=$(cd "$DEB_CACHE" && pwd)
    cache_opt="--cache-dir=$DEB_CACHE"
fi
# shellcheck disable=SC2086 # cache_opt is one word or none
if ! debootstrap --variant=minbase --merged-usr $cache_opt \
    --include="$(echo $BASE_PACKAGES | tr ' ' ,)" \
    "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    [ ! -f "$root/debootstrap/debootstrap.log" ] || tail -n 30 "$root/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (log above)"
fi
step "debootstrap done"

# ---------------------------------------------------------------------------- apt in the new system
# The image's own files first: apt and dpkg settings (no Recommends, no documentation)
# apply to everything installed from now on.
cp -R "$here/rootfs/." "$root/"
{
    echo "deb $MIRROR $SUITE main"
    echo "deb $MIRROR $SUITE-updates main"
    [ "$SECURITY_MIRROR" = none ] || echo "deb $SECURITY_MIRROR $SUITE-security main"
} >"$root/etc/apt/sources.list"
# No daemon starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
# The kernel's scripts (initramfs) want /proc and /sys.
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
# Earlier builds' packages, for apt (hard links: same filesystem as OUTDIR).
if [ -n "$DEB_CACHE" ]; then
    for deb in "$DEB_CACHE"/*.deb; do
        [ -f "$deb" ] || continue
        [ -e "$root/var/cache/apt/archives/${deb##*/}" ] ||
            ln "$deb" "$root/var/cache/apt/archives/" 2>/dev/null ||
            cp "$deb" "$root/var/cache/apt/archives/"
    done
fi
apt_in_root update >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; die "apt-get update failed"; }
apt_in_root dist-upgrade >>"$work/apt.log" 2>&1 ||
    { tail -n 30 "$work/apt.log" >&2; die "apt-get dist-upgrade failed"; }
# shellcheck disable=SC2086 # a list of package names
apt_in_root install $LATE_PACKAGES >>"$work/apt.log" 2>&1 ||
    { tail -n 30 "$work/apt.log" >&2; die "apt-get install $LATE_PACKAGES failed"; }
step "security updates, $KERNEL, grub-pc-bin${EXTRA_PACKAGES:+, $EXTRA_PACKAGES} installed"

# Keep this build's packages for the next one; forget the ones it did not use.
if [ -n "$DEB_CACHE" ]; then
    for deb in "$root"/var/cache/apt/archives/*.deb; do
        [ -f "$deb" ] || continue
        [ -e "$DEB_CACHE/${deb##*/}" ] || ln "$deb" "$DEB_CACHE/" 2>/dev/null || cp "$deb" "$DEB_CACHE/"
    done
    for deb in "$DEB_CACHE"/*.deb; do
        [ -f "$deb" ] || continue
        [ -e "$root/var/cache/apt/archives/${deb##*/}" ] || rm -f "$deb"
    done
fi

kver=$(cd "$root/usr/lib/modules" && ls | sort -V | tail -n 1)
[ -n "$kver" ] && [ -f "$root/boot/vmlinuz-$kver" ] && [ -f "$root/boot/initrd.img-$kver" ] ||
    die "no kernel and initramfs in the image after installing $KERNEL"

# ---------------------------------------------------------------------------- configuration
root_uuid=$(cat /proc/sys/kernel/random/uuid)
label=elastic-root
# console=ttyS0 last: it is /dev/console, where the markers go. net.ifnames=0: NICs are
# eth0, eth1, ... as the contextualization expects. panic=-1: a failed boot reboots at once
# (libvirt on_reboot=destroy then stops the VM instead of leaving it hanging).
cmdline="root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200 net.ifnames=0 panic=-1 quiet"

printf 'UUID=%s\t/\text4\tdefaults,errors=remount-ro\t0\t1\n' "$root_uuid" >"$root/etc/fstab"
printf 'localhost\n' >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
# A new machine id on each node's first boot; no host keys, random seed or resolver of the
# build machine in the image.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$root/var/lib/dbus/machine-id"
rm -f "$root"/etc/ssh/ssh_host_* "$root/var/lib/systemd/random-seed" "$root/etc/resolv.conf"
# root: no password (locked with "*") until the context sets ROOT_PASSWORD_HASH or keys.
in_root usermod -p '*' root

# The contextualization and the units (rootfs/ is already in place).
mkdir -p "$root/usr/lib/elastic/context"
cp "$ctx_src/lib.sh" "$ctx_src/elastic-context.sh" "$root/usr/lib/elastic/context/"
chmod 0644 "$root/usr/lib/elastic/context/lib.sh"
chmod 0755 "$root/usr/lib/elastic/context/elastic-context.sh"
in_root systemctl enable elastic-context.service elastic-growroot.service >/dev/null 2>&1 ||
    die "systemctl enable failed"
# e2scrub is for ext4 on LVM (there is none): its boot-time reaper took 14 s of CPU under TCG.
in_root systemctl disable e2scrub_reap.service e2scrub_all.timer >/dev/null 2>&1 || true

# GRUB (BIOS): modules in /boot/grub/i386-pc, a fixed grub.cfg that boots /vmlinuz and
# /initrd.img (Debian keeps these links on the newest kernel, so a kernel upgrade on a node
# needs no update-grub), and core.img for the gap between the MBR and the partition.
mkdir -p "$root/boot/grub/i386-pc"
cp "$root"/usr/lib/grub/i386-pc/*.mod "$root"/usr/lib/grub/i386-pc/*.lst "$root/boot/grub/i386-pc/"
cat >"$root/boot/grub/grub.cfg" <<EOF
# Written by images/debian/build.sh (elastic). /vmlinuz and /initrd.img are the newest
# kernel, /vmlinuz.old and /initrd.img.old the one before.
set default=0
set timeout=0
set timeout_style=hidden
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
search --no-floppy --fs-uuid --set=root $root_uuid
menuentry 'Debian GNU/Linux (elastic)' {
    linux /vmlinuz $cmdline
    initrd /initrd.img
}
menuentry 'Debian GNU/Linux (elastic), previous kernel' {
    linux /vmlinuz.old $cmdline
    initrd /initrd.img.old
}
EOF
# For a later grub-pc (update-grub) on a node: the same command line.
cat >"$root/etc/default/grub" <<EOF
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200 net.ifnames=0 panic=-1"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
EOF
# core.img: "(,msdos1)" is partition 1 of the disk the BIOS booted from. The modules that
# grub.cfg needs are inside it (no file lookups through the BIOS for them); others still
# load from /boot/grub/i386-pc.
in_root grub-mkimage -O i386-pc -o /tmp/core.img -p '(,msdos1)/boot/grub' \
    biosdisk part_msdos ext2 normal search search_fs_uuid serial terminal terminfo linux \
    gzio echo test || die "grub-mkimage failed"
mv "$root/tmp/core.img" "$work/core.img"
head -c 440 "$root/usr/lib/grub/i386-pc/boot.img" >"$work/boot.img"
grub_version=$(in_root dpkg-query -W -f '${Version}' grub-pc-bin)

built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cat >"$root/etc/elastic/image" <<EOF
name=debian
suite=$SUITE
kernel=$kver
input_hash=$input_hash
built_at=$built_at
EOF

in_root dpkg-query -W -f '${Package}\t${Version}\n' >"$work/packages.txt"
n_packages=$(wc -l <"$work/packages.txt")

# ---------------------------------------------------------------------------- clean up the system
apt_in_root clean >/dev/null
rm -f "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old \
    "$root"/var/lib/dpkg/*-old "$root/debootstrap" "$root"/tmp/* "$root"/var/tmp/*
mkdir -p "$root/var/lib/apt/lists/partial"
# What the dpkg excludes (rootfs/etc/dpkg/dpkg.cfg.d) would have kept out: debootstrap
# installed before they were in place.
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
find "$root/var/log" -type f -exec truncate -s 0 {} +
for m in $(mounts_under "$root"); do umount "$m"; done

# ---------------------------------------------------------------------------- payload
if [ -n "$payload" ]; then
    cp -a --remove-destination "$payload/." "$root/"
fi
root_bytes=$(du -sb "$root" | cut -f1)
step "system configured ($n_packages packages, kernel $kver, $((root_bytes / 1048576)) MiB)"

# ---------------------------------------------------------------------------- the disk
# MBR: GRUB's boot code, one bootable Linux partition from 1 MiB to the end; core.img in
# the sectors between. The ext4 filesystem is made straight from the directory, at its
# offset in the file (mkfs.ext4 -d, -E offset): no loop device, no mount.
core_bytes=$(stat -c %s "$work/core.img")
[ "$core_bytes" -le $((2047 * 512)) ] || die "core.img is $core_bytes bytes: does not fit before 1 MiB"
part_start=2048
part_sectors=$((disk_bytes / 512 - part_start))
raw=$work/disk.raw
truncate -s "$disk_bytes" "$raw"
mkfs.ext4 -q -F -L "$label" -U "$root_uuid" -m 1 -E "offset=$((part_start * 512)),root_owner=0:0" \
    -d "$root" "$raw" "$((part_sectors / 2))k" || die "mkfs.ext4 failed"

# le32 N: N as 4 little-endian bytes (printf octal escapes)
le32() {
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(($1 & 255)) $((($1 >> 8) & 255)) \
        $((($1 >> 16) & 255)) $((($1 >> 24) & 255)))"
}
# chs LBA: the 3 CHS bytes of LBA for 255 heads and 63 sectors per track (1023/254/63 above)
chs() {
    c=$(($1 / (255 * 63)))
    h=$((($1 / 63) % 255))
    s=$(($1 % 63 + 1))
    if [ "$c" -gt 1023 ]; then c=1023; h=254; s=63; fi
    printf "$(printf '\\%03o\\%03o\\%03o' "$h" $(((s & 63) | ((c >> 2) & 192))) $((c & 255)))"
}
disk_id=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
{
    cat "$work/boot.img"                                   # 440 bytes of boot code
    le32 "$disk_id"                                        # disk signature
    printf '\000\000'
    printf '\200'                                          # partition 1: bootable,
    chs "$part_start"
    printf '\203'                                          # type 0x83 (Linux),
    chs $((part_start + part_sectors - 1))
    le32 "$part_start"                                     # first sector,
    le32 "$part_sectors"                                   # number of sectors
    head -c 48 /dev/zero                                   # partitions 2-4: none
    printf '\125\252'                                      # 0x55 0xAA
} >"$work/mbr.bin"
[ "$(stat -c %s "$work/mbr.bin")" -eq 512 ] || die "MBR is $(stat -c %s "$work/mbr.bin") bytes, not 512"
dd if="$work/mbr.bin" of="$raw" bs=512 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none

if [ "$COMPRESS" = 1 ]; then
    qemu-img convert -q -f raw -O qcow2 -c -o compression_type=zstd "$raw" "$work/disk.qcow2" 2>/dev/null ||
        qemu-img convert -q -f raw -O qcow2 -c "$raw" "$work/disk.qcow2"
else
    qemu-img convert -q -f raw -O qcow2 "$raw" "$work/disk.qcow2"
fi
rm -f "$raw"
step "disk.qcow2 made"

# ---------------------------------------------------------------------------- publish
mv -f "$work/disk.qcow2" "$out/disk.qcow2"
mv -f "$work/packages.txt" "$out/packages.txt"

size() { stat -c %s "$1"; }
sum() { sha256sum <"$1" | cut -d' ' -f1; }
t_end=$(now_ms)
build_ms=$((t_end - t_start))
cat >"$out/manifest.json.tmp" <<EOF
{
  "image": "debian",
  "suite": "$SUITE",
  "mirror": "$MIRROR",
  "security_mirror": "$SECURITY_MIRROR",
  "kernel_package": "$KERNEL",
  "kernel_version": "$kver",
  "boot": "disk: GRUB $grub_version (BIOS, MBR) from the image's own /boot",
  "kernel_cmdline": "$cmdline",
  "root_uuid": "$root_uuid",
  "root_label": "$label",
  "packages": $n_packages,
  "extra_packages": "$EXTRA_PACKAGES",
  "payload": "$payload",
  "rootfs_bytes": $root_bytes,
  "built_at": "$built_at",
  "build_seconds": $(secs "$build_ms"),
  "input_hash": "$input_hash",
  "files": {
    "disk.qcow2": {"bytes": $(size "$out/disk.qcow2"), "virtual_bytes": $disk_bytes, "sha256": "$(sum "$out/disk.qcow2")", "compressed": $([ "$COMPRESS" = 1 ] && echo true || echo false)},
    "packages.txt": {"bytes": $(size "$out/packages.txt")}
  }
}
EOF
mv -f "$out/manifest.json.tmp" "$out/manifest.json"

echo "build.sh: built $out in $(secs "$build_ms") s ($SUITE, kernel $kver, $n_packages packages," \
    "disk.qcow2 $(($(size "$out/disk.qcow2") / 1048576)) MiB of $((disk_bytes / 1048576)) MiB virtual)"
