#!/bin/sh
# images/tiny/build.sh OUTDIR: build the tiny elastic guest image from Debian packages.
#
# Debian packages needed (the project's setup script installs them):
#   linux-image-amd64   the guest kernel (/boot/vmlinuz-*) and its modules (/lib/modules)
#   busybox-static      the whole userland (shell, init, getty, ip, httpd, ...)
#   cpio lz4            the initramfs archive (LZ4, the kernel's legacy format: under
#                       QEMU TCG it unpacks in about a third of gzip's time)
#   xz-utils            to take the kernel out of its bzImage (vmlinux, below)
#   qemu-utils          qemu-img, for disk.qcow2
#   e2fsprogs           mkfs.ext4, for the filesystem in disk.qcow2
#   kmod                modinfo and depmod, to find module dependencies
#
# Output in OUTDIR:
#   vmlinuz             a copy of the Debian kernel (the newest in /boot with its modules)
#   vmlinux             the same kernel uncompressed (an ELF), when it has a PVH entry point:
#                       QEMU starts it there, with no decompression in the guest (the XZ
#                       bzImage spends 4-7 s unpacking itself under TCG). What elastic boots.
#   initramfs.cpio.lz4  the root filesystem: busybox, kernel modules, contextualization
#   disk.qcow2          base for the per-node overlays (ext4, label "data", mounted on /data)
#   manifest.json       kernel version, sizes, checksums, build time
#
# Environment:
#   KVER=VERSION        kernel to use (default: the newest /boot/vmlinuz-* with /lib/modules)
#   PAYLOAD=DIR         copied over the initramfs root, last (e.g. a scheduler daemon with
#                       its libraries, plus a hook in etc/elastic/boot.d/ that starts it)
#   EXTRA_MODULES="m.." more kernel modules (dependencies are added)
#   DISK_SIZE=1G        virtual size of disk.qcow2 when it is made
#   FORCE=1             rebuild even if the inputs have not changed
#
# Idempotent: if manifest.json records the same input hash and the outputs exist, nothing is
# done. disk.qcow2 is made once and then never replaced, because per-node overlays may use it
# as their backing file; delete it by hand to make a new one.
set -eu

PACKAGES="linux-image-amd64 busybox-static cpio lz4 xz-utils qemu-utils e2fsprogs kmod"

# Modules loaded at boot (dependencies are found with modinfo and loaded first):
#   virtio_pci          the virtio bus on PCI (QEMU/libvirt devices)
#   virtio_net          the NICs (ethN)
#   virtio_blk          the node's disk (vda) and a context ISO attached as a disk (vdb)
#   ata_piix ahci sr_mod  a context ISO attached as a cdrom (IDE on "pc", SATA on "q35")
#   isofs               the ISO9660 filesystem of the context
#   ext4 crc32c_generic disk.qcow2's filesystem (ext4 asks for "crc32c" by name: a soft
#                       dependency that modinfo's "depends" does not list)
#   virtio_rng          entropy from the host when a virtio-rng device is present
#   virtio_balloon      libvirt adds a balloon device unless told not to
#   button evdev        the ACPI power button, so that a graceful shutdown works
MODULES="virtio_pci virtio_net virtio_blk ata_piix ahci sr_mod isofs ext4 crc32c_generic
virtio_rng virtio_balloon button evdev"

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
t_start=$(now_ms)

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
ctx_src=$repo/contextualization
mkdir -p "$1"
out=$(cd "$1" && pwd)

# ---------------------------------------------------------------------------- tools and kernel
missing=""
for tool in cpio lz4 xz qemu-img mkfs.ext4 modinfo depmod sha256sum od; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
BUSYBOX=${BUSYBOX:-/bin/busybox}
[ -x "$BUSYBOX" ] || missing="$missing busybox($BUSYBOX)"
[ -z "$missing" ] || die "missing:$missing (install the Debian packages: $PACKAGES)"
# A dynamically linked busybox would need a libc in the image.
if ! LC_ALL=C ldd "$BUSYBOX" 2>&1 | grep -q 'not a dynamic executable'; then
    die "$BUSYBOX is dynamically linked: install busybox-static"
fi

if [ -z "${KVER:-}" ]; then
    # The newest kernel in /boot whose modules are installed; version-sorted, never hardcoded.
    for k in $(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V); do
        [ -d "/lib/modules/$k/kernel" ] && KVER=$k
    done
fi
[ -n "${KVER:-}" ] || die "no /boot/vmlinuz-* with /lib/modules/<version> (install linux-image-amd64)"
kernel=/boot/vmlinuz-$KVER
[ -r "$kernel" ] || die "$kernel is missing or unreadable"
moddir=/lib/modules/$KVER

payload=""
if [ -n "${PAYLOAD:-}" ]; then
    [ -d "$PAYLOAD" ] || die "PAYLOAD=$PAYLOAD is not a directory"
    payload=$(cd "$PAYLOAD" && pwd)
fi
all_modules="$MODULES ${EXTRA_MODULES:-}"
disk_size=${DISK_SIZE:-1G}

# ---------------------------------------------------------------------------- up to date?
# Everything that goes into vmlinuz and the initramfs (disk.qcow2 is made once, see above).
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
    echo "kver=$KVER modules=$all_modules"
    sha256sum <"$0"
    sha256sum <"$kernel"
    sha256sum <"$BUSYBOX"
    tree_hash "$here/rootfs"
    tree_hash "$ctx_src"
    [ -z "$payload" ] || tree_hash "$payload"
} | sha256sum | cut -d' ' -f1)

if [ "${FORCE:-0}" != 1 ] && [ -f "$out/manifest.json" ] && [ -f "$out/vmlinuz" ] &&
    [ -f "$out/initramfs.cpio.lz4" ] && [ -f "$out/disk.qcow2" ] &&
    grep -q "\"input_hash\": \"$input_hash\"" "$out/manifest.json"; then
    echo "build.sh: $out is up to date (kernel $KVER); checked in $(($(now_ms) - t_start)) ms"
    exit 0
fi

# ---------------------------------------------------------------------------- staging
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
root=$work/root
mkdir -p "$root"
cd "$root"
mkdir -p bin sbin usr/bin usr/sbin etc proc sys dev run tmp data root home mnt www var/log \
    usr/lib/elastic/context "lib/modules/$KVER"
chmod 1777 tmp
chmod 0700 root

# busybox and one symlink per applet, where its Debian build puts it.
cp "$BUSYBOX" bin/busybox
chmod 0755 bin/busybox
"$BUSYBOX" --list-full | while IFS= read -r applet; do
    [ "$applet" != bin/busybox ] || continue
    [ -e "$applet" ] || [ -L "$applet" ] || ln -s /bin/busybox "$applet"
done
# The kernel runs /init; busybox called as "init" is init(8), which reads /etc/inittab.
ln -s bin/busybox init

# The image's own files, then the contextualization scripts.
cp -R "$here/rootfs/." .
cp "$ctx_src/lib.sh" "$ctx_src/elastic-context.sh" usr/lib/elastic/context/
chmod 0644 usr/lib/elastic/context/lib.sh
chmod 0755 usr/lib/elastic/context/elastic-context.sh

cat >etc/passwd <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >etc/group <<'EOF'
root:x:0:
tty:x:5:
nogroup:x:65534:
EOF
# "*": no password login for root until the context sets ROOT_PASSWORD_HASH.
cat >etc/shadow <<'EOF'
root:*:0:0:99999:7:::
nobody:*:0:0:99999:7:::
EOF
chmod 0640 etc/shadow
printf '/bin/sh\n' >etc/shells
printf 'localhost\n' >etc/hostname
printf '127.0.0.1\tlocalhost\n' >etc/hosts
printf 'hello from an elastic tiny node that is still booting\n' >www/index.html

# ---------------------------------------------------------------------------- kernel modules
# order: module files (relative to /lib/modules/KVER), dependencies before dependants.
order=""
seen=" "
add_module() {
    # $1: module name. Recursion: use "$1" after the loop, the globals are shared.
    set -- "$(echo "$1" | tr - _)"
    case $seen in *" $1 "*) return 0 ;; esac
    seen="$seen$1 "
    for dep in $(modinfo -k "$KVER" -F depends "$1" 2>/dev/null | tr , ' '); do
        add_module "$dep"
    done
    file=$(modinfo -k "$KVER" -n "$1" 2>/dev/null) || die "kernel $KVER has no module $1"
    case $file in
        /*) order="$order ${file#"$moddir"/}" ;;
        *) ;; # built into the kernel
    esac
}
for m in $all_modules; do add_module "$m"; done

: >"lib/modules/$KVER/elastic.load"
for ko in $order; do
    mkdir -p "lib/modules/$KVER/$(dirname "$ko")"
    case $ko in
        *.ko) cp "$moddir/$ko" "lib/modules/$KVER/$ko" ;;
        # compressed modules (newer Debian kernels): busybox insmod wants them plain
        *.ko.xz) xz -dc "$moddir/$ko" >"lib/modules/$KVER/${ko%.xz}"; ko=${ko%.xz} ;;
        *.ko.zst) zstd -qdc "$moddir/$ko" >"lib/modules/$KVER/${ko%.zst}"; ko=${ko%.zst} ;;
        *.ko.gz) gzip -dc "$moddir/$ko" >"lib/modules/$KVER/${ko%.gz}"; ko=${ko%.gz} ;;
        *) die "unexpected module file $ko" ;;
    esac
    echo "$ko" >>"lib/modules/$KVER/elastic.load"
done
# modules.dep etc. let busybox modprobe (and the kernel's request_module) load what a
# payload asks for later.
for f in modules.builtin modules.builtin.modinfo modules.order; do
    [ ! -f "$moddir/$f" ] || cp "$moddir/$f" "lib/modules/$KVER/"
done
depmod -b "$root" "$KVER"

# ---------------------------------------------------------------------------- payload
if [ -n "$payload" ]; then
    # --remove-destination: a payload file replaces a busybox symlink instead of writing
    # through it into /bin/busybox.
    cp -a --remove-destination "$payload/." .
fi

built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cat >etc/elastic/image <<EOF
name=tiny
kernel=$KVER
input_hash=$input_hash
EOF

# ---------------------------------------------------------------------------- initramfs
# Reproducible: sorted names, fixed owner and mtime; LZ4 in the legacy frame format, the
# only one the kernel's initramfs unpacker reads.
epoch=${SOURCE_DATE_EPOCH:-946684800}
find . -exec touch -h -d "@$epoch" {} +

# newc_node NAME MODE MAJOR MINOR: a one-entry cpio (newc) archive holding a device node,
# written by hand so that building needs no root (mknod). The kernel needs /dev/console
# before /init runs; it unpacks concatenated archives in order.
newc_hdr() {
    # fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
    #         namesize check; then the name, NUL, padded to a multiple of 4
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
        "$1" "$2" 0 0 1 "$epoch" 0 0 0 "$3" "$4" $((${#5} + 1)) 0 "$5"
    pad=$(((4 - (110 + ${#5} + 1) % 4) % 4))
    [ "$pad" -eq 0 ] || head -c "$pad" /dev/zero
}
{
    find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible
    newc_hdr 900001 $((0020600)) 5 1 dev/console   # char device 5:1, mode 0600
    newc_hdr 0 0 0 0 'TRAILER!!!'
} | lz4 -l -9 -q >"$work/initramfs.cpio.lz4"

cp "$kernel" "$work/vmlinuz"

# ---------------------------------------------------------------------------- vmlinux
# The kernel is the bzImage's payload: find its compressed stream (XZ in Debian's; zstd or
# gzip in others), unpack it, and keep it if it is an ELF with a PVH entry point (an ELF
# note "Xen" of type 18: XEN_ELFNOTE_PHYS32_ENTRY). Else elastic boots vmlinuz.
pvh=false
for magic in 'xz:\xfd\x37\x7a\x58\x5a\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08'; do
    offset=$(LC_ALL=C grep -obUaP "${magic#*:}" "$kernel" | head -n 1 | cut -d: -f1)
    [ -n "$offset" ] || continue
    case ${magic%%:*} in
        xz) unpack="xz -dcq --single-stream" ;;
        zstd) unpack="zstd -dcq" ;;
        gzip) unpack="gzip -dcq" ;;
    esac
    command -v "${unpack%% *}" >/dev/null 2>&1 || continue
    # trailing data after the stream makes zstd and gzip complain: the ELF check decides
    tail -c +$((offset + 1)) "$kernel" | $unpack >"$work/vmlinux" 2>/dev/null || true
    if [ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] &&
        LC_ALL=C grep -qaP '\x04\x00\x00\x00[\x04\x08]\x00\x00\x00\x12\x00\x00\x00Xen\x00' \
            "$work/vmlinux"; then
        pvh=true
        break
    fi
done
[ "$pvh" = true ] || rm -f "$work/vmlinux"

# ---------------------------------------------------------------------------- disk.qcow2
disk_note="kept"
if [ ! -f "$out/disk.qcow2" ]; then
    disk_note="made"
    mkdir -p "$work/disk/lost+found"
    cat >"$work/disk/README" <<'EOF'
The node's own disk, mounted on /data by the tiny image (a qcow2 overlay per node).
EOF
    truncate -s "$disk_size" "$work/disk.raw"
    mkfs.ext4 -q -F -L data -m 0 -E root_owner=0:0 -d "$work/disk" "$work/disk.raw"
    qemu-img convert -q -f raw -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
    rm -f "$work/disk.raw"
    mv -f "$work/disk.qcow2" "$out/disk.qcow2"
fi

# ---------------------------------------------------------------------------- publish
mv -f "$work/vmlinuz" "$out/vmlinuz"
if [ "$pvh" = true ]; then mv -f "$work/vmlinux" "$out/vmlinux"; else rm -f "$out/vmlinux"; fi
mv -f "$work/initramfs.cpio.lz4" "$out/initramfs.cpio.lz4"
rm -f "$out/initramfs.cpio.gz"     # an older build's

size() { stat -c %s "$1"; }
sum() { sha256sum <"$1" | cut -d' ' -f1; }
virtual_size() { qemu-img info "$1" | sed -n 's/^virtual size: .*(\([0-9]*\) bytes).*/\1/p'; }
n_modules=$(wc -l <"$root/lib/modules/$KVER/elastic.load")
t_end=$(now_ms)
build_ms=$((t_end - t_start))
json_list() {
    # a JSON array of the words in $1 (module names and paths: no quotes or backslashes)
    printf '['
    first=1
    for w in $1; do
        [ "$first" = 1 ] || printf ', '
        printf '"%s"' "$w"
        first=0
    done
    printf ']'
}
cat >"$out/manifest.json.tmp" <<EOF
{
  "image": "tiny",
  "kernel_version": "$KVER",
  "kernel_source": "$kernel",
  "busybox": "$("$BUSYBOX" 2>&1 | head -n 1 | sed 's/"/\\"/g')",
  "built_at": "$built_at",
  "build_seconds": $((build_ms / 1000)).$(printf '%03d' $((build_ms % 1000))),
  "input_hash": "$input_hash",
  "payload": "${payload:-}",
  "modules_loaded": $n_modules,
  "pvh": $pvh,
  "modules": $(json_list "$(sed 's|.*/||; s|\.ko$||' "$root/lib/modules/$KVER/elastic.load")"),
  "files": {
    "vmlinuz": {"bytes": $(size "$out/vmlinuz"), "sha256": "$(sum "$out/vmlinuz")"},
$([ "$pvh" != true ] || echo "    \"vmlinux\": {\"bytes\": $(size "$out/vmlinux"), \"sha256\": \"$(sum "$out/vmlinux")\"},")
    "initramfs.cpio.lz4": {"bytes": $(size "$out/initramfs.cpio.lz4"), "sha256": "$(sum "$out/initramfs.cpio.lz4")"},
    "disk.qcow2": {"bytes": $(size "$out/disk.qcow2"), "virtual_bytes": $(virtual_size "$out/disk.qcow2"), "note": "$disk_note"}
  }
}
EOF
mv -f "$out/manifest.json.tmp" "$out/manifest.json"

echo "build.sh: built $out in $((build_ms / 1000)).$(printf '%03d' $((build_ms % 1000))) s" \
    "(kernel $KVER, $n_modules modules, PVH vmlinux $pvh, initramfs $(size "$out/initramfs.cpio.lz4") bytes, disk.qcow2 $disk_note)"
