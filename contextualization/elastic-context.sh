#!/bin/sh
# elastic-context.sh: configure a node at boot from its MACs and an optional context source.
#
# The contract (variables, ISO label, file layout, console markers) is in README.md next to
# this file; keep the two in step. In short:
#   1. find the context: $ELASTIC_CONTEXT_DIR, or an ISO9660 image labelled CONTEXT on a
#      disk or cdrom, copied to /run/elastic/context; none is fine;
#   2. read context.sh from it (KEY='value' lines);
#   3. for every ethN: address from the MAC (or ETHn_IP), mask, MTU; then the default route,
#      extra routes, hostname, /etc/hosts, /etc/resolv.conf;
#   4. groups, users (password hashes, ssh keys), root's password and keys, files/;
#   5. print "ELASTIC-READY <hostname> <ip>" on the console (or ELASTIC-FAILED ...);
#   6. run the image's hooks (/etc/elastic/boot.d), startup.sh, START_SCRIPT_BASE64,
#      START_SCRIPT; print "ELASTIC-STARTED <hostname> <rc>".
#
# POSIX sh (dash, busybox ash). Usage:
#   elastic-context.sh             configure this machine (root, at boot)
#   elastic-context.sh --dry-run   needs ELASTIC_CONTEXT_ROOT=DIR: read sysfs and write files
#                                  under DIR, print "+ cmd ..." instead of running commands
#                                  (ip, hostname, mount, chown, scripts); markers go to stdout.
set -eu

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

dry=0
for arg in "$@"; do
    case $arg in
        --dry-run) dry=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "elastic-context: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

script_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$script_dir/lib.sh"

# ---------------------------------------------------------------------------- settings
# Every path the script touches is "$root/<path in the guest>"; root is empty on a node.
root=${ELASTIC_CONTEXT_ROOT:-}
root=${root%/}
if [ "$dry" = 1 ] && [ -z "$root" ]; then
    echo "elastic-context: --dry-run needs ELASTIC_CONTEXT_ROOT set to a scratch directory" >&2
    exit 2
fi
ctx_label=${ELASTIC_CONTEXT_LABEL:-CONTEXT}
# Devices that may hold the context ISO, in search order: virtio disks first (the renderer's
# default, found at once), then cdroms (IDE/SATA, probed asynchronously by libata), Xen, SCSI.
ctx_devices=${ELASTIC_CONTEXT_DEVICES:-/dev/vd? /dev/sr? /dev/hd? /dev/xvd? /dev/sd?}
# Seconds to keep looking for the ISO when none is visible yet (a cdrom shows up a little
# after its driver is loaded). A node without a context pays this once per boot.
ctx_wait=${ELASTIC_CONTEXT_WAIT:-2}
# Seconds to wait for the first network interface to appear.
net_wait=${ELASTIC_NET_WAIT:-5}
# Whole seconds only: shell arithmetic below, and a bad value must not abort the boot.
case $ctx_wait in '' | *[!0-9]*) ctx_wait=2 ;; esac
case $net_wait in '' | *[!0-9]*) net_wait=5 ;; esac
console=${ELASTIC_CONSOLE:-/dev/console}
state_dir=$root/run/elastic
log_file=$state_dir/context.log

failures=0       # commands or steps that failed; READY is still printed if eth0 is up
fatal=""         # reason for ELASTIC-FAILED, if any

umask 022
mkdir -p "$state_dir"
chmod 0700 "$state_dir"

# ---------------------------------------------------------------------------- helpers
log() {
    printf 'elastic-context: %s\n' "$*"
    printf '%s\n' "$*" >>"$log_file" 2>/dev/null || true
}

warn() {
    log "WARNING: $*"
    failures=$((failures + 1))
}

# run CMD...: run a command that changes the system; in a dry run, only print it.
run() {
    if [ "$dry" = 1 ]; then
        printf '+ %s\n' "$*"
        return 0
    fi
    "$@"
}

# try CMD...: run, and count a failure instead of stopping the boot.
try() {
    run "$@" || warn "command failed ($?): $*"
}

# marker LINE: tell the outside world. Written to the console, and to the first serial port
# as well when that is not already the console (the provider reads the serial log).
marker() {
    printf '%s\n' "$*" >>"$log_file" 2>/dev/null || true
    if [ "$dry" = 1 ]; then
        printf '%s\n' "$*"
        return 0
    fi
    printf '%s\n' "$*" >>"$console" 2>/dev/null || printf '%s\n' "$*"
    # /dev/console is the last console listed in .../active; add ttyS0 if that is not it.
    active=$(cat /sys/class/tty/console/active 2>/dev/null || true)
    case " $active" in
        *' ttyS0') ;;
        *) [ ! -c /dev/ttyS0 ] || printf '%s\n' "$*" >/dev/ttyS0 2>/dev/null || true ;;
    esac
}

# write_file PATH MODE: write stdin to $root/PATH (parent directories created), then chmod.
write_file() {
    mkdir -p "$(dirname "$root$1")"
    cat >"$root$1.elastic-tmp"
    chmod "$2" "$root$1.elastic-tmp"
    mv -f "$root$1.elastic-tmp" "$root$1"
}

# trim S: S without leading and trailing blanks.
trim() {
    printf '%s' "$1" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//'
}

# ---------------------------------------------------------------------------- 1. context source
# Names read from context.sh at the top level; cleared first so that nothing inherited from
# the environment (bash sets HOSTNAME, for one) passes for context data.
unset HOSTNAME DNS SEARCH_DOMAIN HOSTS START_SCRIPT START_SCRIPT_BASE64 \
    ROOT_PASSWORD_HASH ROOT_SSH_KEYS SERIAL_AUTOLOGIN 2>/dev/null || true

ctx_source=none
ctx_dir=${ELASTIC_CONTEXT_DIR:-}

find_context_iso() {
    # $ctx_devices holds glob patterns: split it without globbing (the patterns are paths in
    # the guest), then expand each under $root (which must not contain blanks).
    set -f
    # shellcheck disable=SC2086
    set -- $ctx_devices
    set +f
    for pat in "$@"; do
        # shellcheck disable=SC2086
        find_iso_by_label "$ctx_label" $root$pat && return 0
    done
    return 1
}

if [ -n "$ctx_dir" ]; then
    if [ -d "$ctx_dir" ]; then
        ctx_source="dir:$ctx_dir"
    else
        warn "ELASTIC_CONTEXT_DIR=$ctx_dir is not a directory"
        ctx_dir=""
    fi
else
    iso_dev=""
    tries=$((ctx_wait * 5 + 1))
    while [ "$tries" -gt 0 ]; do
        if iso_dev=$(find_context_iso); then break; fi
        iso_dev=""
        tries=$((tries - 1))
        [ "$tries" -eq 0 ] || sleep 0.2
    done
    if [ -n "$iso_dev" ]; then
        log "context ISO labelled $ctx_label on ${iso_dev#"$root"}"
        ctx_source="iso:${iso_dev#"$root"}"
        # Copy it to /run so that it stays readable after the ISO is detached or changed.
        mnt=$state_dir/mnt
        mkdir -p "$mnt"
        if run mount -t iso9660 -o ro "$iso_dev" "$mnt"; then
            ctx_dir=$state_dir/context
            if [ "$dry" = 0 ]; then
                rm -rf "$ctx_dir"
                cp -R "$mnt" "$ctx_dir" || warn "copying the context ISO failed"
            fi
            try umount "$mnt"
            rmdir "$mnt" 2>/dev/null || true
        else
            warn "cannot mount $iso_dev"
        fi
    else
        log "no context source (no ISO labelled $ctx_label); configuring from the MACs only"
    fi
fi

# ---------------------------------------------------------------------------- 2. context.sh
if [ -n "$ctx_dir" ] && [ -f "$ctx_dir/context.sh" ]; then
    # Check it in a subshell first: a syntax error in a sourced file ends the whole shell.
    if (set +eu; . "$ctx_dir/context.sh") >/dev/null 2>&1; then
        set -a   # export every variable it sets, for the startup scripts
        set +u
        # shellcheck disable=SC1091
        . "$ctx_dir/context.sh"
        set -u
        set +a
        log "read context.sh from $ctx_source"
    else
        fatal="context.sh-unreadable"
        warn "context.sh from $ctx_source does not parse; ignoring it"
    fi
elif [ -n "$ctx_dir" ]; then
    log "$ctx_source has no context.sh"
fi

# ---------------------------------------------------------------------------- 3. network
max_if=31          # ETH0 .. ETH31
net_dir=$root/sys/class/net

# Wait for the first interface (drivers may still be probing).
tries=$((net_wait * 10))
while [ "$tries" -gt 0 ]; do
    found=0
    for d in "$net_dir"/*; do
        [ "${d##*/}" != lo ] && [ -r "$d/address" ] && found=1 && break
    done
    [ "$found" = 0 ] || break
    tries=$((tries - 1))
    sleep 0.1
done

# Which context index an interface has: the n with ETHn_MAC equal to its MAC, else the
# number in its kernel name ethN; other interfaces are left alone.
iface_index() {
    n=0
    while [ "$n" -le "$max_if" ]; do
        ctx_let want "ETH${n}_MAC"
        if [ -n "$want" ] && [ "$(lower "$want")" = "$2" ]; then
            echo "$n"
            return 0
        fi
        n=$((n + 1))
    done
    case $1 in
        eth[0-9] | eth[0-9][0-9])
            n=${1#eth}
            [ "$n" -le "$max_if" ] && echo "$((n + 0))" && return 0
            ;;
    esac
    return 1
}

# Map interfaces to indices: if_<n>=name, mac_<n>=mac.
for d in "$net_dir"/*; do
    ifname=${d##*/}
    [ "$ifname" != lo ] && [ -r "$d/address" ] || continue
    # ARPHRD_ETHER is 1; skip tunnels and the like (a fake sysfs may lack the file).
    if [ -r "$d/type" ] && [ "$(cat "$d/type")" != 1 ]; then continue; fi
    mac=$(lower "$(cat "$d/address")")
    if n=$(iface_index "$ifname" "$mac"); then
        ctx_let other "if_$n"
        if [ -n "$other" ]; then
            warn "$ifname and $other both map to ETH$n; keeping the first"
            continue
        fi
        eval "if_$n=\$ifname; mac_$n=\$mac"
    else
        log "leaving $ifname ($mac) alone: not ethN and no ETHn_MAC matches"
    fi
done

try ip link set dev lo up

eth0_ip=""
eth0_skipped=0
n=0
while [ "$n" -le "$max_if" ]; do
    ctx_let ifname "if_$n"
    if [ -z "$ifname" ]; then n=$((n + 1)); continue; fi
    mac=$(ctx_get "mac_$n")
    method=$(lower "$(ctx_get "ETH${n}_METHOD")")
    case ${method:-static} in
        static) ;;
        skip)
            log "$ifname: ETH${n}_METHOD=skip"
            [ "$n" != 0 ] || eth0_skipped=1
            eval "if_$n="
            n=$((n + 1))
            continue
            ;;
        *)
            warn "$ifname: unknown ETH${n}_METHOD '$method'; leaving it alone"
            eval "if_$n="
            n=$((n + 1))
            continue
            ;;
    esac
    ip=$(ctx_get "ETH${n}_IP")
    if [ -z "$ip" ]; then
        ip=$(mac_to_ip "$mac") || ip=""
    fi
    if [ -z "$ip" ] || ! valid_ipv4 "$ip"; then
        warn "$ifname: no usable address (MAC $mac, ETH${n}_IP '$(ctx_get "ETH${n}_IP")')"
        eval "if_$n="
        n=$((n + 1))
        continue
    fi
    mask=$(ctx_get "ETH${n}_MASK")
    if ! plen=$(mask_to_prefix "${mask:-24}"); then
        warn "$ifname: bad ETH${n}_MASK '$mask'; using /24"
        plen=24
    fi
    log "$ifname ($mac): $ip/$plen"
    try ip addr flush dev "$ifname"
    mtu=$(ctx_get "ETH${n}_MTU")
    if [ -n "$mtu" ]; then try ip link set dev "$ifname" mtu "$mtu"; fi
    if run ip addr add "$ip/$plen" broadcast + dev "$ifname" &&
        run ip link set dev "$ifname" up; then
        eval "ip_$n=\$ip"
        [ "$n" != 0 ] || eth0_ip=$ip
    else
        warn "$ifname: cannot set $ip/$plen"
        eval "if_$n="
        [ "$n" != 0 ] || fatal="eth0-address"
    fi
    n=$((n + 1))
done

# The default route goes through the lowest-numbered configured interface with a gateway.
n=0
while [ "$n" -le "$max_if" ]; do
    ctx_let gw "ETH${n}_GATEWAY"
    ctx_let ifname "if_$n"
    if [ -n "$gw" ] && [ -n "$ifname" ]; then
        log "default route via $gw dev $ifname"
        try ip route replace default via "$gw" dev "$ifname"
        break
    fi
    n=$((n + 1))
done

# ETHn_ROUTES: comma-separated "DEST [via GW] [metric N]" entries, passed to `ip route`.
n=0
while [ "$n" -le "$max_if" ]; do
    ctx_let routes "ETH${n}_ROUTES"
    ctx_let ifname "if_$n"
    if [ -n "$routes" ] && [ -n "$ifname" ]; then
        old_ifs=$IFS
        IFS=,
        # shellcheck disable=SC2086
        set -- $routes
        IFS=$old_ifs
        for r in "$@"; do
            r=$(trim "$r")
            [ -n "$r" ] || continue
            # word splitting of $r is wanted: "10.12.0.0/16 via 10.11.0.254"
            # shellcheck disable=SC2086
            try ip route replace $r dev "$ifname"
        done
    fi
    n=$((n + 1))
done

if [ -z "$eth0_ip" ] && [ -z "$fatal" ] && [ "$eth0_skipped" = 0 ]; then
    fatal="no-eth0"
    warn "ETH0 is not configured (no interface eth0 or ETH0_MAC match, or it failed)"
fi

# ---------------------------------------------------------------------------- hostname, hosts, DNS
valid_hostname() {
    case $1 in
        '' | -* | .* | *[!A-Za-z0-9.-]*) return 1 ;;
        *) [ "${#1}" -le 253 ] ;;
    esac
}

# shellcheck disable=SC3028 # HOSTNAME here is the context's variable (cleared above)
fqdn=${HOSTNAME:-}
if [ -n "$fqdn" ] && ! valid_hostname "$fqdn"; then
    warn "bad HOSTNAME '$fqdn'; deriving one from the address"
    fqdn=""
fi
if [ -z "$fqdn" ]; then
    if [ -n "$eth0_ip" ]; then fqdn=$(hostname_from_ip "$eth0_ip"); else fqdn=localhost; fi
fi
short=${fqdn%%.*}
log "hostname $short${fqdn#"$short"}"
try hostname "$short"
printf '%s\n' "$short" | write_file /etc/hostname 0644

{
    printf '127.0.0.1\tlocalhost\n'
    printf '::1\tlocalhost ip6-localhost ip6-loopback\n'
    if [ "$fqdn" != "$short" ]; then names="$fqdn $short"; else names=$short; fi
    printf '%s\t%s\n' "${eth0_ip:-127.0.1.1}" "$names"
    if [ -n "${HOSTS:-}" ]; then
        printf '# from the context (HOSTS)\n%s\n' "$HOSTS"
    fi
} | write_file /etc/hosts 0644

if [ -n "${DNS:-}" ] || [ -n "${SEARCH_DOMAIN:-}" ]; then
    {
        if [ -n "${SEARCH_DOMAIN:-}" ]; then printf 'search %s\n' "$SEARCH_DOMAIN"; fi
        for ns in ${DNS:-}; do printf 'nameserver %s\n' "$ns"; done
    } | write_file /etc/resolv.conf 0644
fi

# ---------------------------------------------------------------------------- 4. groups and users
# The account databases are edited as text (busybox-static has no useradd), which works the
# same on a full distribution image.
passwd_f=$root/etc/passwd
shadow_f=$root/etc/shadow
group_f=$root/etc/group
gshadow_f=$root/etc/gshadow
for f in "$passwd_f" "$group_f"; do [ -f "$f" ] || : >"$f"; done
[ -f "$shadow_f" ] || { : >"$shadow_f"; chmod 0640 "$shadow_f"; }

# db_get FILE NAME FIELD: print field FIELD (1-based) of NAME's line in FILE.
db_get() {
    awk -F: -v n="$2" -v f="$3" '$1 == n { print $f; exit }' "$1"
}

# db_put FILE NAME LINE: replace NAME's line in FILE by LINE (append if absent), keeping
# the file's mode and owner.
db_put() {
    awk -F: -v n="$2" -v l="$3" '
        $1 == n { if (!done) print l; done = 1; next }
        { print }
        END { if (!done) print l }' "$1" >"$1.elastic-tmp"
    cat "$1.elastic-tmp" >"$1"
    rm -f "$1.elastic-tmp"
}

# next_id FILE MIN: the lowest id >= MIN above every id in FILE's third field below 60000.
next_id() {
    awk -F: -v m="$2" '$3 + 0 >= m && $3 + 0 < 60000 { m = $3 + 1 } END { print m }' "$1"
}

# id_used FILE ID: true if some line of FILE has ID in its third field.
id_used() {
    awk -F: -v id="$2" '$3 == id { found = 1 } END { exit !found }' "$1"
}

valid_account_name() {
    case $1 in
        '' | [!a-z_]* | *[!a-z0-9_-]*) return 1 ;;
        *) [ "${#1}" -le 32 ] ;;
    esac
}

days_now=$(($(date +%s) / 86400))

# ensure_group NAME [GID]: create group NAME unless it exists.
ensure_group() {
    eg_name=$1
    eg_gid=${2:-}
    if ! valid_account_name "$eg_name"; then warn "bad group name '$eg_name'"; return 1; fi
    if [ -n "$(db_get "$group_f" "$eg_name" 1)" ]; then
        eg_have=$(db_get "$group_f" "$eg_name" 3)
        if [ -n "$eg_gid" ] && [ "$eg_gid" != "$eg_have" ]; then
            warn "group $eg_name exists with gid $eg_have, not $eg_gid"
        fi
        return 0
    fi
    if [ -z "$eg_gid" ]; then
        eg_gid=$(next_id "$group_f" 1000)
    elif id_used "$group_f" "$eg_gid"; then
        warn "gid $eg_gid is taken; group $eg_name not created"
        return 1
    fi
    log "group $eg_name ($eg_gid)"
    db_put "$group_f" "$eg_name" "$eg_name:x:$eg_gid:"
    [ ! -f "$gshadow_f" ] || db_put "$gshadow_f" "$eg_name" "$eg_name:!::"
}

# add_member GROUP USER: add USER to GROUP's member list (idempotent).
add_member() {
    awk -F: -v OFS=: -v g="$1" -v u="$2" '
        $1 == g {
            n = split($4, m, ",")
            for (i = 1; i <= n; i++) if (m[i] == u) { print; next }
            $4 = ($4 == "" ? u : $4 "," u)
        }
        { print }' "$group_f" >"$group_f.elastic-tmp"
    cat "$group_f.elastic-tmp" >"$group_f"
    rm -f "$group_f.elastic-tmp"
}

# install_keys HOME UID GID KEYS: write HOME/.ssh/authorized_keys (replacing it).
install_keys() {
    mkdir -p "$root$1/.ssh"
    chmod 0700 "$root$1/.ssh"
    printf '%s\n' "$4" | write_file "$1/.ssh/authorized_keys" 0600
    try chown "$2:$3" "$root$1/.ssh" "$root$1/.ssh/authorized_keys"
}

# GROUPn_NAME, GROUPn_GID, GROUPn_MEMBERS (members are added after the users exist).
g=0
while [ -n "$(ctx_get "GROUP${g}_NAME")" ]; do
    ensure_group "$(ctx_get "GROUP${g}_NAME")" "$(ctx_get "GROUP${g}_GID")" || true
    g=$((g + 1))
done

# USERn_*: one account each.
u=0
while [ -n "$(ctx_get "USER${u}_NAME")" ]; do
    name=$(ctx_get "USER${u}_NAME")
    p="USER${u}_"
    u=$((u + 1))
    if ! valid_account_name "$name"; then warn "bad user name '$name'"; continue; fi
    uid=$(ctx_get "${p}UID")
    [ -n "$uid" ] || uid=$(db_get "$passwd_f" "$name" 3)
    if [ -z "$uid" ]; then
        uid=$(next_id "$passwd_f" 1000)
    elif [ "$(db_get "$passwd_f" "$name" 3)" != "$uid" ] && id_used "$passwd_f" "$uid"; then
        warn "uid $uid is taken; user $name not created"
        continue
    fi
    # Primary group: USERn_GROUP, else a group named after the user (gid = uid when free).
    pgroup=$(ctx_get "${p}GROUP")
    if [ -z "$pgroup" ]; then
        pgroup=$name
        if [ -z "$(db_get "$group_f" "$name" 1)" ] && ! id_used "$group_f" "$uid"; then
            ensure_group "$name" "$uid" || true
        fi
    fi
    ensure_group "$pgroup" || { warn "user $name not created"; continue; }
    gid=$(db_get "$group_f" "$pgroup" 3)
    home=$(ctx_get "${p}HOME")
    home=${home:-/home/$name}
    shell=$(ctx_get "${p}SHELL")
    shell=${shell:-/bin/sh}
    gecos=$(ctx_get "${p}GECOS" | tr -d ':\n')
    hash=$(ctx_get "${p}PASSWORD_HASH")
    # "*": no password login, yet not "locked" ("!"), which OpenSSH would refuse keys for.
    hash=${hash:-*}
    log "user $name ($uid:$gid) home $home"
    db_put "$passwd_f" "$name" "$name:x:$uid:$gid:$gecos:$home:$shell"
    db_put "$shadow_f" "$name" "$name:$hash:$days_now:0:99999:7:::"
    for sg in $(ctx_get "${p}GROUPS" | tr ',' ' '); do
        ensure_group "$sg" && add_member "$sg" "$name"
    done
    if [ ! -d "$root$home" ]; then
        mkdir -p "$root$home"
        chmod 0755 "$root$home"
        try chown "$uid:$gid" "$root$home"
    fi
    keys=$(ctx_get "${p}SSH_KEYS")
    if [ -n "$keys" ]; then install_keys "$home" "$uid" "$gid" "$keys"; fi
    if is_true "$(ctx_get "${p}SUDO")"; then
        if [ -d "$root/etc/sudoers.d" ]; then
            printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$name" | write_file "/etc/sudoers.d/90-elastic-$name" 0440
        else
            log "USER ${name}: SUDO asked but there is no /etc/sudoers.d (no sudo in the image)"
        fi
    fi
done

g=0
while [ -n "$(ctx_get "GROUP${g}_NAME")" ]; do
    gname=$(ctx_get "GROUP${g}_NAME")
    for m in $(ctx_get "GROUP${g}_MEMBERS" | tr ',' ' '); do
        if [ -n "$(db_get "$group_f" "$gname" 1)" ]; then add_member "$gname" "$m"; fi
    done
    g=$((g + 1))
done

if [ -n "${ROOT_PASSWORD_HASH:-}" ]; then
    log "root password hash set"
    awk -F: -v OFS=: -v h="$ROOT_PASSWORD_HASH" -v d="$days_now" \
        '$1 == "root" { $2 = h; $3 = d; found = 1 } { print } END { if (!found) print "root:" h ":" d ":0:99999:7:::" }' \
        "$shadow_f" >"$shadow_f.elastic-tmp"
    cat "$shadow_f.elastic-tmp" >"$shadow_f"
    rm -f "$shadow_f.elastic-tmp"
fi
if [ -n "${ROOT_SSH_KEYS:-}" ]; then
    root_home=$(db_get "$passwd_f" root 6)
    install_keys "${root_home:-/root}" 0 0 "$ROOT_SSH_KEYS"
fi

# ---------------------------------------------------------------------------- files
# files/ in the context is laid over /: regular files only, 0644 (0755 when executable in the
# context), directories made 0755; FILEn_PATH/_MODE/_OWNER adjust single files afterwards.
if [ -n "$ctx_dir" ] && [ -d "$ctx_dir/files" ]; then
    list=$state_dir/files.list
    (cd "$ctx_dir/files" && find . -type f) >"$list"
    while IFS= read -r rel; do
        rel=${rel#./}
        src=$ctx_dir/files/$rel
        mkdir -p "$(dirname "$root/$rel")"
        if [ -x "$src" ]; then mode=0755; else mode=0644; fi
        if write_file "/$rel" "$mode" <"$src"; then
            log "file /$rel"
        else
            warn "cannot write /$rel"
        fi
    done <"$list"
    rm -f "$list"
fi
f=0
while [ -n "$(ctx_get "FILE${f}_PATH")" ]; do
    path=$(ctx_get "FILE${f}_PATH")
    mode=$(ctx_get "FILE${f}_MODE")
    owner=$(ctx_get "FILE${f}_OWNER")
    f=$((f + 1))
    if [ ! -e "$root$path" ]; then warn "FILE: $path does not exist"; continue; fi
    if [ -n "$mode" ]; then chmod "$mode" "$root$path" || warn "chmod $mode $path failed"; fi
    if [ -n "$owner" ]; then try chown "$owner" "$root$path"; fi
done

# ---------------------------------------------------------------------------- serial console login
# Read by the image's serial getty wrapper: "yes" gives a root shell without a password.
if is_true "${SERIAL_AUTOLOGIN:-no}"; then
    echo yes >"$state_dir/serial-autologin"
else
    rm -f "$state_dir/serial-autologin"
fi

# ---------------------------------------------------------------------------- 5. readiness
{
    echo "hostname=$short"
    echo "fqdn=$fqdn"
    echo "ip=$eth0_ip"
    echo "context=$ctx_source"
    echo "failures=$failures"
} >"$state_dir/state"

if [ -n "$fatal" ]; then
    marker "ELASTIC-FAILED $short $fatal"
else
    [ "$failures" -eq 0 ] || log "$failures step(s) failed; see $log_file"
    marker "ELASTIC-READY $short ${eth0_ip:--}"
fi

# ---------------------------------------------------------------------------- 6. startup
export ELASTIC_HOSTNAME="$short" ELASTIC_FQDN="$fqdn" ELASTIC_IP="$eth0_ip" \
    ELASTIC_CONTEXT_DIR="$ctx_dir" ELASTIC_CONTEXT_SOURCE="$ctx_source"
start_rc=0

# run_script FILE WHAT: run FILE (directly if it starts with #!, else with sh) in the
# context directory; remember the first non-zero exit status.
run_script() {
    rs_file=$1
    rs_what=$2
    log "running $rs_what"
    if [ "$(head -c 2 "$rs_file" 2>/dev/null)" = '#!' ]; then
        chmod 0700 "$rs_file" 2>/dev/null || true
        set -- "$rs_file"
    else
        set -- sh "$rs_file"
    fi
    if [ "$dry" = 1 ]; then
        printf '+ %s\n' "$*"
        return 0
    fi
    rs_rc=0
    (cd "${ctx_dir:-/}" && "$@") || rs_rc=$?
    if [ "$rs_rc" -ne 0 ]; then
        log "$rs_what exited with $rs_rc"
        [ "$start_rc" -ne 0 ] || start_rc=$rs_rc
    fi
}

# The image's own hooks first (e.g. a payload's scheduler daemon), in name order.
for h in "$root"/etc/elastic/boot.d/*; do
    [ -f "$h" ] && [ -x "$h" ] || continue
    run_script "$h" "hook ${h#"$root"}"
done
if [ -n "$ctx_dir" ] && [ -f "$ctx_dir/startup.sh" ]; then
    run_script "$ctx_dir/startup.sh" "startup.sh"
fi
if [ -n "${START_SCRIPT_BASE64:-}" ]; then
    if printf '%s' "$START_SCRIPT_BASE64" | base64 -d >"$state_dir/start-script-base64" 2>/dev/null; then
        run_script "$state_dir/start-script-base64" START_SCRIPT_BASE64
    else
        warn "START_SCRIPT_BASE64 is not valid base64"
        [ "$start_rc" -ne 0 ] || start_rc=1
    fi
fi
if [ -n "${START_SCRIPT:-}" ]; then
    printf '%s\n' "$START_SCRIPT" >"$state_dir/start-script"
    run_script "$state_dir/start-script" START_SCRIPT
fi

echo "start_rc=$start_rc" >>"$state_dir/state"
marker "ELASTIC-STARTED $short $start_rc"
exit 0
