#!/bin/sh
# images/tiny/payloads/sge/build-payload.sh OUTDIR: a tiny-image payload with Grid Engine.
#
# Assembles, from the Debian gridengine packages installed on this machine
# (gridengine-master gridengine-exec gridengine-client), a directory to pass as
# PAYLOAD=OUTDIR to images/tiny/build.sh (images/tiny-sge/build.sh does both):
#
#   opt/sge/bin/lx-amd64/      sge_qmaster sge_execd sge_shepherd and the clients (qconf qstat
#                              qsub qhost qacct qmod qdel); their RUNPATH is
#                              $ORIGIN/../../lib/lx-amd64, like the Debian layout
#   opt/sge/utilbin/lx-amd64/  spoolinit, spooldefaults: a fresh spool made at boot
#   opt/sge/lib/lx-amd64/      libspoolb.so libspoolc.so (links in usr/lib/gridengine/, where
#                              the qmaster dlopens them from)
#   opt/sge/util/              arch, resources/{centry,usersets}
#   opt/sge/share/             default-bootstrap, default-configuration (from the package)
#   lib/x86_64-linux-gnu/, lib64/ld-linux-x86-64.so.2
#                              every shared library the programs need (ldd), and the loader
#   usr/bin/q*                 wrappers: SGE_ROOT/SGE_CELL from /etc/default/gridengine
#   usr/sbin/elastic-sge       sets up a head (qmaster) or a worker (execd) at boot
#   usr/sbin/dropbear          the SSH server (package dropbear-bin): the controller reaches
#                              the qmaster over SSH; etc/elastic/boot.d/40-sshd starts it when
#                              root or a user has authorized keys
#   etc/elastic/boot.d/50-sge  runs elastic-sge when the context says SGE_ROLE
#   etc/elastic/sge/           the sgeadmin passwd/group lines (added at boot), nsswitch.conf
#
# The result is deterministic for the same installed packages (the tiny build hashes it).
set -eu

usage() { sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
[ $# -eq 1 ] || { usage >&2; exit 2; }
case $1 in -h | --help) usage; exit 0 ;; esac

here=$(cd "$(dirname "$0")" && pwd)
SGE_LIB=${SGE_LIB:-/usr/lib/gridengine}
SGE_SHARE=${SGE_SHARE:-/usr/share/gridengine}
ARCH=lx-amd64
BINS="sge_qmaster sge_execd sge_shepherd qconf qstat qsub qhost qacct qmod qdel"
UTILBINS="spoolinit spooldefaults.bin gethostname gethostbyname gethostbyaddr"
SPOOLLIBS="libspoolb.so libspoolc.so"

missing=""
for f in $BINS $UTILBINS $SPOOLLIBS; do [ -x "$SGE_LIB/$f" ] || [ -f "$SGE_LIB/$f" ] || missing="$missing $SGE_LIB/$f"; done
[ -x /usr/sbin/dropbear ] || missing="$missing /usr/sbin/dropbear"
for f in default-bootstrap default-configuration util/arch util/resources/centry \
    util/resources/usersets; do
    [ -e "$SGE_SHARE/$f" ] || missing="$missing $SGE_SHARE/$f"
done
getent passwd sgeadmin >/dev/null || missing="$missing user:sgeadmin"
[ -z "$missing" ] || {
    echo "build-payload.sh: missing:$missing (install gridengine-master gridengine-exec gridengine-client dropbear-bin)" >&2
    exit 1
}

mkdir -p "$1"
out=$(cd "$1" && pwd)
rm -rf "$out/.new"
new=$out/.new
mkdir -p "$new"
cd "$new"
mkdir -p opt/sge/bin/$ARCH opt/sge/utilbin/$ARCH opt/sge/lib/$ARCH opt/sge/util/resources \
    opt/sge/share usr/lib/gridengine lib/x86_64-linux-gnu lib64 usr/bin usr/sbin \
    etc/elastic/boot.d etc/elastic/sge

for b in $BINS; do cp "$SGE_LIB/$b" opt/sge/bin/$ARCH/; done
for b in $UTILBINS; do cp "$SGE_LIB/$b" opt/sge/utilbin/$ARCH/; done
mv opt/sge/utilbin/$ARCH/spooldefaults.bin opt/sge/utilbin/$ARCH/spooldefaults
# The spooling libraries: NEEDED by spooldefaults (found through RUNPATH
# $ORIGIN/../../lib/lx-amd64) and dlopened by the qmaster from /usr/lib/gridengine.
for l in $SPOOLLIBS; do
    cp "$SGE_LIB/$l" opt/sge/lib/$ARCH/
    ln -s "/opt/sge/lib/$ARCH/$l" "usr/lib/gridengine/$l"
done
cp "$SGE_SHARE/util/arch" opt/sge/util/
cp "$SGE_SHARE/util/resources/centry" opt/sge/util/resources/ -R
cp -R "$SGE_SHARE/util/resources/usersets" opt/sge/util/resources/
cp "$SGE_SHARE/default-bootstrap" "$SGE_SHARE/default-configuration" opt/sge/share/
cp /usr/sbin/dropbear usr/sbin/dropbear

# Shared libraries: everything ldd names for every ELF file copied, and the loader.
libs=$(for f in opt/sge/bin/$ARCH/* opt/sge/utilbin/$ARCH/* opt/sge/lib/$ARCH/* usr/sbin/dropbear; do
    LC_ALL=C ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
done | LC_ALL=C sort -u)
for l in $libs; do
    case $l in
        */ld-linux-x86-64.so.2) cp -L "$l" lib64/ld-linux-x86-64.so.2 ;;
        *) cp -L "$l" "lib/x86_64-linux-gnu/$(basename "$l")" ;;
    esac
done
# glibc's NSS: files only (the hosts file holds every node; no DNS in the lab).
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nservices: files\n' \
    >etc/elastic/sge/nsswitch.conf
printf 'sge_qmaster\t6444/tcp\nsge_execd\t6445/tcp\n' >etc/elastic/sge/services

# sgeadmin with this machine's ids (below 1000: never a context user's uid).
getent passwd sgeadmin | awk -F: '{print $1":x:"$3":"$4":Grid Engine admin:/opt/sge:/bin/false"}' \
    >etc/elastic/sge/passwd
gid=$(getent passwd sgeadmin | cut -d: -f4)
printf 'sgeadmin:x:%s:\n' "$gid" >etc/elastic/sge/group
printf 'sgeadmin:*:0:0:99999:7:::\n' >etc/elastic/sge/shadow

# Client wrappers (like Debian's /usr/share/gridengine/gridengine-wrapper).
cat >usr/bin/sge-wrapper <<'WRAP'
#!/bin/sh
# SGE_ROOT and SGE_CELL from the environment, else /etc/default/gridengine (written at boot).
[ -n "${SGE_ROOT:-}" ] && [ -n "${SGE_CELL:-}" ] || . /etc/default/gridengine 2>/dev/null || true
SGE_ROOT=${SGE_ROOT:-/opt/sge}; SGE_CELL=${SGE_CELL:-default}; SGE_ARCH=lx-amd64
export SGE_ROOT SGE_CELL SGE_ARCH
exec "$SGE_ROOT/bin/$SGE_ARCH/${0##*/}" "$@"
WRAP
chmod 0755 usr/bin/sge-wrapper
for b in $BINS; do ln -s sge-wrapper "usr/bin/$b"; done

cp "$here/elastic-sge" usr/sbin/elastic-sge
cp "$here/50-sge" etc/elastic/boot.d/50-sge
cp "$here/40-sshd" etc/elastic/boot.d/40-sshd
chmod 0755 usr/sbin/elastic-sge etc/elastic/boot.d/50-sge etc/elastic/boot.d/40-sshd \
    opt/sge/util/arch
find . -type d -exec chmod 0755 {} +

# Replace the previous payload only now (a half-made one is never left in OUTDIR).
find "$out" -mindepth 1 -maxdepth 1 ! -name .new -exec rm -rf {} +
(cd "$new" && find . -mindepth 1 -maxdepth 1 -exec mv {} "$out/" \;)
rmdir "$new"
echo "build-payload.sh: $out: $(du -sk "$out" | cut -f1) KiB, $(echo "$libs" | wc -l) libraries"
