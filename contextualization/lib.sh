# shellcheck shell=sh
# elastic contextualization: function library.
#
# POSIX sh: runs under dash, busybox ash and bash. Sourced by elastic-context.sh, the
# tiny image's rcS and the unit tests (tests/unit/test_context_shell.py). It only defines
# functions and sets no options, so sourcing it never changes the caller's shell state.
#
# Pure functions are written with a subshell body `name() ( ... )` so that their
# variables, `set --` and IFS changes cannot leak into the caller.
#
# The MAC <-> IPv4 rule (same as elastic/addressing.py, tested against
# tests/data/mac-vectors.txt): a MAC is a two-octet prefix followed by the four octets
# of the IPv4 address in hex, 10.0.0.5 <-> 02:00:0a:00:00:05. The prefix is ignored
# when decoding.
#
# Hex conversion uses shell arithmetic `$((0x..))`: busybox awk cannot convert hex.

# is_hex_octet X: true if X is exactly two hex digits. Checked before `$((0x$X))`
# because a bad arithmetic expression aborts a non-interactive shell.
is_hex_octet() {
    case $1 in
        [0-9a-fA-F][0-9a-fA-F]) return 0 ;;
        *) return 1 ;;
    esac
}

# is_dec_octet X: true if X is a decimal number 0..255 (no sign, at most 3 digits).
is_dec_octet() {
    case $1 in
        '' | *[!0-9]* | ????*) return 1 ;;
    esac
    [ "$1" -le 255 ]
}

# valid_ipv4 A.B.C.D: true for a dotted quad of decimal octets.
valid_ipv4() (
    case $1 in *.*.*.*.*) return 1 ;; esac
    IFS=.
    # shellcheck disable=SC2086
    set -- $1
    [ $# -eq 4 ] || return 1
    for o in "$@"; do is_dec_octet "$o" || return 1; done
)

# mac_to_ip MAC: print the IPv4 address encoded in the last four octets of MAC.
# 02:00:0a:0b:00:05 -> 10.11.0.5. Returns 1 (printing nothing) if MAC is malformed.
mac_to_ip() (
    IFS=:
    # shellcheck disable=SC2086
    set -- $1
    [ $# -eq 6 ] || return 1
    for o in "$@"; do is_hex_octet "$o" || return 1; done
    printf '%d.%d.%d.%d\n' "$((0x$3))" "$((0x$4))" "$((0x$5))" "$((0x$6))"
)

# ip_to_mac PREFIX IP: print PREFIX followed by the four octets of IP in lower-case hex.
# ip_to_mac 02:00 10.11.0.5 -> 02:00:0a:0b:00:05. Returns 1 on a bad prefix or address.
ip_to_mac() (
    prefix=$(printf '%s' "$1" | tr 'A-F' 'a-f')
    IFS=:
    # shellcheck disable=SC2086
    set -- $prefix "$2"
    [ $# -eq 3 ] && is_hex_octet "$1" && is_hex_octet "$2" || return 1
    ip=$3
    valid_ipv4 "$ip" || return 1
    IFS=.
    # shellcheck disable=SC2086
    set -- $ip
    # `10#` is not POSIX; octets are validated as plain decimal, and a leading zero
    # would make printf read octal, so strip leading zeros first.
    for o in "$@"; do
        while :; do case $o in 0?*) o=${o#0} ;; *) break ;; esac; done
        set -- "$@" "$o"
        shift
    done
    printf '%s:%02x:%02x:%02x:%02x\n' "$prefix" "$1" "$2" "$3" "$4"
)

# mask_to_prefix MASK: print the prefix length of MASK, which may be a prefix length
# ("24" or "/24") or a dotted netmask ("255.255.255.0"). Returns 1 if MASK is neither
# (including non-contiguous netmasks such as 255.0.255.0).
mask_to_prefix() (
    m=${1#/}
    case $m in
        '') return 1 ;;
        *.*)
            valid_ipv4 "$m" || return 1
            IFS=.
            # shellcheck disable=SC2086
            set -- $m
            bits=0
            zero_seen=0
            for o in "$@"; do
                while :; do case $o in 0?*) o=${o#0} ;; *) break ;; esac; done
                for b in 128 64 32 16 8 4 2 1; do
                    if [ $((o & b)) -ne 0 ]; then
                        [ "$zero_seen" -eq 0 ] || return 1
                        bits=$((bits + 1))
                    else
                        zero_seen=1
                    fi
                done
            done
            echo "$bits"
            ;;
        *[!0-9]*) return 1 ;;
        *)
            [ "${#m}" -le 2 ] && [ "$m" -le 32 ] || return 1
            echo "$((m + 0))"
            ;;
    esac
)

# iso_label DEVICE_OR_FILE: print the volume label of an ISO9660 image (trailing blanks
# removed). Returns 1 if DEVICE is not ISO9660 or cannot be read.
# The primary volume descriptor is sector 16 (byte 32768): type byte 1, then "CD001",
# then a version byte and an unused byte; the 32-byte volume identifier is at byte 40.
# Reading a few bytes with dd needs neither blkid nor a mounted filesystem.
iso_label() (
    magic=$(dd if="$1" bs=1 skip=32769 count=5 2>/dev/null) || return 1
    [ "$magic" = CD001 ] || return 1
    label=$(dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | tr -d '\000') || return 1
    # strip the blank padding on the right
    while :; do case $label in *' ') label=${label%' '} ;; *) break ;; esac; done
    printf '%s\n' "$label"
)

# find_iso_by_label LABEL DEV...: print the first DEV that is an ISO9660 image labelled
# LABEL. Nonexistent paths (an unmatched glob) are skipped.
find_iso_by_label() {
    _fil_label=$1
    shift
    for _fil_dev in "$@"; do
        [ -e "$_fil_dev" ] || continue
        if [ "$(iso_label "$_fil_dev" 2>/dev/null || true)" = "$_fil_label" ]; then
            printf '%s\n' "$_fil_dev"
            return 0
        fi
    done
    return 1
}

# hostname_from_ip A.B.C.D: the hostname a node gets when nothing names it: node-A-B-C-D.
hostname_from_ip() {
    printf 'node-%s\n' "$(printf '%s' "$1" | tr . -)"
}

# valid_var_name NAME: true for a shell variable name made of A-Z, a-z, 0-9 and _.
valid_var_name() {
    case $1 in
        '' | [0-9]* | *[!A-Za-z0-9_]*) return 1 ;;
        *) return 0 ;;
    esac
}

# ctx_get NAME: print the value of variable NAME, or nothing if it is unset.
# Used for indexed context variables such as ETH0_MASK whose name is computed.
ctx_get() {
    valid_var_name "$1" || return 1
    eval "printf '%s' \"\${$1:-}\""
}

# ctx_let DEST NAME: set variable DEST to the value of NAME (empty if unset), without the
# subshell that `$(ctx_get NAME)` costs; for loops over many indices.
ctx_let() {
    valid_var_name "$1" && valid_var_name "$2" || return 1
    eval "$1=\${$2:-}"
}

# lower S: S in lower case.
lower() {
    printf '%s' "$1" | tr 'A-Z' 'a-z'
}

# is_true S: true for yes/true/1/on (any case).
is_true() {
    case $(lower "$1") in
        yes | true | 1 | on) return 0 ;;
        *) return 1 ;;
    esac
}
