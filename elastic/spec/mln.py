"""Read MLN project files (Manage Large Networks, Kyrre Begnum, Oslo) as they are.

``parse_mln(path)`` returns the raw document a cluster.yaml would give after YAML loading
(``project``, ``networks``, ``classes``, ``nodes`` and, if service hosts are named, ``hosts``),
each key remembering the MLN file and line it came from. The resolver then checks and
resolves it exactly like YAML; ``elastic import-mln FILE`` prints it as YAML.

The language as elastic reads it
--------------------------------
- Words are separated by blanks; ``{``, ``}`` and ``;`` are words of their own, so several
  statements may share a line. ``"..."`` quotes a value that contains blanks.
- ``# ...`` is a comment (a ``#`` that starts a word). ``#include FILE`` puts FILE (relative
  to the including file) in its place; positions then name the included file and line.
- Known keywords take a fixed number of values, written on the same line: ``xen``, ``kvm``,
  ``uml`` and ``lvm`` none; ``memory``, ``size``, ``free_space``, ``template``,
  ``service_host``, ``superclass``, ``term``, ``nameserver``, ``switch``, ``address``,
  ``netmask``, ``gateway``, ``broadcast``, ``project``, ``hwaddress``/``mac`` one. Any other
  keyword opens a block if ``{`` follows it, else it takes the rest of its line.
- ``global { $name = value }`` defines a variable; ``$name`` or ``$[name]`` is replaced by
  its value anywhere after. Crypt hashes (``$6$salt$hash``) are left alone. In ``startup``
  an unknown ``$name`` is left for the shell; anywhere else it is an error.

Mapping MLN -> elastic YAML
---------------------------
=============================================  ===============================================
MLN                                            elastic
=============================================  ===============================================
global { project NAME }                        project: NAME
superclass NAME { ... }                        classes.NAME
superclass { NAME { ... } NAME2 { ... } }      classes.NAME, classes.NAME2
host NAME { ... }  /  host { NAME { ... } }    nodes.NAME
switch NAME { ... } / switch { NAME { } }      networks.NAME: {kind: private, cidr: (derived)}
switch NAME { hosts { NODE IFACE ... } }       nodes.NODE.interfaces.IFACE.network: NAME
switch NAME { KEY VALUE }                      networks.NAME.KEY: VALUE (e.g. cidr, gateway)
---------------------------------------------  -----------------------------------------------
in a superclass:  superclass X                 inherit: X
in a host:        superclass X                 class: X
memory 128M / size 2G / free_space 500M        memory / disk / free_space
template X                                     image: X
service_host X                                 host: X   (and hosts.X, see below)
nameserver X  (may repeat)                     nameservers: [X, ...]
term X                                         console: X
xen / kvm / uml                                hypervisor: xen / kvm / uml (uml is refused later)
lvm                                            storage: lvm
network IFACE { ... } / network { IFACE {} }   interfaces.IFACE
  switch S                                     network: S
  address A / netmask M / gateway G            address (dhcp, auto kept) / netmask / gateway
  hwaddress X  or  mac X                       mac: X
  broadcast B                                  ignored (it follows from address and netmask)
users { NAME [HASH] ... }                      users.NAME: {password: HASH} (or {}); a user a
                                               line, or NAME $HASH pairs on one line
groups { GROUP MEMBER ... }                    groups.GROUP: {}; GROUP added to users.MEMBER.groups
startup { ... }                                startup: [each non-empty line, raw]; it ends at
                                               the '}' that balances its '{' (shell braces and
                                               quotes inside commands are fine)
mount { SRC TARGET [TYPE [OPTIONS]] }          mounts: [{source, target, type, options}]
vcpus, priority, search, description, ...      passed through under the same name
any other block  NAME { ... }                  plugins.NAME: nested mapping (repeats: lists)
any other block  NAME ARG { ... }              plugins.NAME.ARG: nested mapping
any other keyword  KEY VALUE...                plugins.KEY: "VALUE..."
=============================================  ===============================================

``autoenum { superclass C  numhosts N  address auto  addresses_begin K  net X
service_hosts { SERVER COUNT ... }  [hostname P | prefix P] }`` (in ``global`` or at the
top) becomes one counted node group ``nodes.P`` (P defaults to C): ``{class: C, count: N,
names: "P{n}", interfaces: {eth0: {address: auto, address_start: K}}, hosts: {SERVER:
COUNT}}``; the counts must add up to N. Other autoenum keys go to ``plugins.autoenum``.

Networks. MLN switches have no address range, so a switch's ``cidr`` is the subnet of the
interfaces attached to it (address + netmask, looked up through the superclass chain;
autoenum's ``net`` counts as an address). An interface with no switch is on the host's
uplink: it is put on a bridged network ``uplink`` (``uplink2``, ... for further subnets)
with that subnet and the interface's gateway; an uplink interface without a static address
(``address dhcp`` or none) goes on a bridged network with ``dhcp: true`` and no cidr.
Interfaces name a switch declared with ``switch NAME { }``; a switch no interface gives a
subnet to is an error (or give it one: ``switch lan { cidr 10.0.0.0/24 }``).

Hosts. Every ``service_host`` (and autoenum service host) gets an entry
``hosts.NAME: {uri: qemu+ssh://NAME/system}`` to edit as needed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from elastic.errors import ConfigError
from elastic.model import Where
from elastic.spec.loader import display_path
from elastic.spec.source import SList, SMap, read_text
from elastic.spec.units import parse_netmask

__all__ = ["parse_mln"]

# keyword -> example, for keywords that take exactly one value
_ONE_VALUE = {
    "memory": "memory 128M", "size": "size 2G", "free_space": "free_space 500M",
    "template": "template ubuntu-server.ext3", "service_host": "service_host server1",
    "superclass": "superclass common", "term": "term screen", "nameserver": "nameserver 10.0.0.1",
    "switch": "switch lan", "address": "address 10.0.0.1", "netmask": "netmask 255.255.255.0",
    "gateway": "gateway 10.0.0.254", "broadcast": "broadcast 10.0.0.255",
    "project": "project webfarm", "hwaddress": "hwaddress 02:00:0a:00:00:01",
    "mac": "mac 02:00:0a:00:00:01", "numhosts": "numhosts 8",
    "addresses_begin": "addresses_begin 10",
    "net": "net 10.0.0.0", "hostname": "hostname compute", "prefix": "prefix compute",
}
_SETTINGS = {"memory": "memory", "size": "disk", "free_space": "free_space", "template": "image",
             "service_host": "host", "term": "console"}
_PASSTHROUGH = {"vcpus", "priority", "description", "search", "image", "disk", "host",
                "console", "hypervisor", "storage"}
_INTEGERS = {"vcpus", "priority"}
_IFACE = {"switch": "network", "address": "address", "netmask": "netmask", "gateway": "gateway",
          "hwaddress": "mac", "mac": "mac"}
_AUTOENUM_ARGS = ("superclass", "numhosts", "address", "addresses_begin", "net", "hostname",
                  "prefix")
# Words that cannot start a statement inside a host or superclass: meeting one there means
# the block's '}' is missing, which is reported at the block's '{'.
_TOP_WORDS = frozenset({"global", "host", "switch"})
_CRYPT_RE = re.compile(r"^\$(?:1|2[abxy]?|5|6|7|y|gy|md5|sha1)\$")
_VAR_RE = re.compile(r"\$(?:\[(?P<b>[^\]\s]*)(?P<close>\])?|(?P<n>[A-Za-z_]\w*))")
_DEF_RE = re.compile(r"^\$(?:\[([A-Za-z_]\w*)\]|([A-Za-z_]\w*))\s*=\s*(.*)$")
_INCLUDE_RE = re.compile(r'#include\b\s*("[^"]*"|<[^>]*>|[^\s{};]*)')
_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")


def parse_mln(path: Path) -> SMap:
    """The raw spec document of the MLN project file ``path`` (see the module docstring)."""
    path = Path(path)
    lines = _read(path, display_path(path), (), None)
    parser = _Parser(_Lexer(lines), display_path(path))
    return parser.parse()


def _err(message: str, where: Where, key: str | None = None) -> ConfigError:
    return ConfigError(message, where.file, where.line, key)


# ------------------------------------------------------------- lines: comments, includes

@dataclass(frozen=True)
class _Line:
    text: str
    where: Where


def _read(path: Path, name: str, chain: tuple[tuple[Path, str], ...],
          origin: Where | None) -> list[_Line]:
    """The code lines of ``path`` with comments dropped and includes put in place."""
    real = path.resolve()
    names = [n for p, n in chain]
    if any(p == real for p, _ in chain):
        assert origin is not None
        raise _err(f"include cycle: {' -> '.join([*names, name])}", origin)
    try:
        text = read_text(path, origin, "#include")
    except ConfigError as e:
        if origin is None or e.line is not None:
            raise
        raise _err(f"cannot #include {name}: {e.problems[0].message}", origin) from None
    out: list[_Line] = []
    for number, raw in enumerate(text.splitlines(), 1):
        _split_line(raw, Where(name, number), path, (*chain, (real, name)), out)
    return out


def _split_line(text: str, where: Where, path: Path, chain: tuple[tuple[Path, str], ...],
                out: list[_Line]) -> None:
    while True:
        start = _comment_start(text)
        if start is None:
            out.append(_Line(text, where))
            return
        out.append(_Line(text[:start], where))
        m = _INCLUDE_RE.match(text, start)
        if m is None:
            return                                   # a plain comment: drop the rest
        target = m.group(1).strip('"<>').strip()
        if not target:
            raise _err("#include needs a file name (e.g. #include servers.txt)", where)
        shown = display_path(path.parent / target)
        out.extend(_read(path.parent / target, shown, chain, where))
        text = text[m.end():]


def _comment_start(text: str) -> int | None:
    """Where a comment starts: a '#' that begins a word, outside a "quoted value"."""
    quoted = False
    for i, ch in enumerate(text):
        word_start = i == 0 or text[i - 1].isspace() or text[i - 1] in "{};"
        if ch == '"' and (quoted or word_start):
            quoted = not quoted
        elif ch == "#" and not quoted and word_start:
            return i
    return None


# -------------------------------------------------------------------------------- words

@dataclass(frozen=True)
class _Tok:
    text: str
    where: Where
    row: int                # the line (segment) it is on: values stay on their keyword's line
    quoted: bool = False

    @property
    def punct(self) -> bool:
        return not self.quoted and self.text in ("{", "}", ";")

    def is_(self, text: str) -> bool:
        return not self.quoted and self.text == text


class _Lexer:
    """Words on demand, so that ``startup`` can take raw lines instead."""

    def __init__(self, lines: list[_Line]) -> None:
        self.lines = lines
        self.row = 0
        self.col = 0
        self._peeked: tuple[_Tok | None, int, int] | None = None

    def peek(self) -> _Tok | None:
        if self._peeked is None:
            self._peeked = self._scan(self.row, self.col)
        return self._peeked[0]

    def next(self) -> _Tok | None:
        tok = self.peek()
        assert self._peeked is not None
        _, self.row, self.col = self._peeked
        self._peeked = None
        return tok

    def _scan(self, row: int, col: int) -> tuple[_Tok | None, int, int]:
        while row < len(self.lines):
            line = self.lines[row]
            text = line.text
            while col < len(text) and text[col].isspace():
                col += 1
            if col >= len(text):
                row, col = row + 1, 0
                continue
            if text[col] in "{};":
                return _Tok(text[col], line.where, row), row, col + 1
            if text[col] == '"':
                end = text.find('"', col + 1)
                if end < 0:
                    raise _err("unterminated string: a '\"' has no closing '\"' on its line",
                               line.where)
                return _Tok(text[col + 1:end], line.where, row, True), row, end + 1
            end = col
            while end < len(text) and not text[end].isspace() and text[end] not in "{};":
                end += 1
            return _Tok(text[col:end], line.where, row), row, end
        return None, row, col

    def raw_block(self, opener: _Tok, what: str) -> list[tuple[str, Where]]:
        """Raw lines up to the '}' that closes ``opener`` (braces in them must balance)."""
        self._peeked = None
        row, col, depth = self.row, self.col, 0
        out: list[tuple[str, Where]] = []
        while row < len(self.lines):
            line = self.lines[row]
            end, depth = _closing_brace(line.text, col, depth)
            _add_raw(out, line.text[col:end], line.where)
            if end is not None:
                self.row, self.col = row, end + 1
                return out
            row, col = row + 1, 0
        raise _unclosed(opener, what)


def _closing_brace(text: str, col: int, depth: int) -> tuple[int | None, int]:
    """Where on this line the '}' closing a raw block is (None: not on it), and the brace
    depth reached. Braces inside quotes or after a backslash do not count."""
    quote = ""
    i = col
    while i < len(text):
        ch = text[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch == "\\":
            i += 1
        elif ch in "'\"":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0:
                return i, depth
            depth -= 1
        i += 1
    return None, depth


def _add_raw(out: list[tuple[str, Where]], text: str, where: Where) -> None:
    if text.strip():
        out.append((text.strip(), where))


def _unclosed(opener: _Tok, what: str, found: _Tok | None = None) -> ConfigError:
    before = ""
    if found is not None:
        before = f" before '{found.text}' at {found.where}"
    return _err(f"the '{{' of {what} is never closed (missing '}}'{before})", opener.where)


# ------------------------------------------------------------------------------- parser

@dataclass
class _Attached:
    """One interface of a node with its settings looked up through the class chain."""

    node: str
    iface: str
    network: str | None
    address: str | None
    netmask: str | None
    gateway: str | None
    where: Where
    gateway_where: Where


class _Parser:
    def __init__(self, lexer: _Lexer, file: str) -> None:
        self.lex = lexer
        self.file = file
        self.vars: dict[str, str] = {}
        self.project: tuple[str, Where] | None = None
        self.networks = SMap()
        self.classes = SMap()
        self.nodes = SMap()
        self.switches: list[str] = []
        self.links: list[tuple[str, _Tok, _Tok]] = []     # switch, node, interface
        self.nets: dict[str, tuple[str, Where]] = {}     # autoenum group -> its 'net'

    # ------------------------------------------------------------------ words and values
    def _subst(self, text: str, where: Where, strict: bool = True) -> str:
        if "$" not in text or _CRYPT_RE.match(text):
            return text

        def one(m: re.Match[str]) -> str:
            name = m.group("n") if m.group("n") is not None else m.group("b")
            if m.group("n") is None and (m.group("close") is None or
                                         not re.fullmatch(r"[A-Za-z_]\w*", name)):
                if not strict:
                    return m.group(0)
                raise _err(f"bad variable reference '{m.group(0)}' (write $[name] or $name)",
                           where)
            if name in self.vars:
                return self.vars[name]
            if not strict:
                return m.group(0)
            raise _err(f"undefined variable ${name} (define it in global {{ ${name} = ... }})",
                       where)

        return _VAR_RE.sub(one, text)

    def _tok(self, tok: _Tok) -> _Tok:
        return _Tok(self._subst(tok.text, tok.where), tok.where, tok.row, tok.quoted)

    def _next_is_open(self) -> bool:
        tok = self.lex.peek()
        return tok is not None and tok.is_("{")

    def _arg(self, kw: _Tok) -> str:
        """The one value of ``kw``, on its line."""
        tok = self.lex.peek()
        if tok is None or tok.row != kw.row or tok.punct:
            example = _ONE_VALUE.get(kw.text, f"{kw.text} VALUE")
            raise _err(f"'{kw.text}' needs a value on the same line (e.g. {example})", kw.where)
        return self._tok(self._take()).text

    def _take(self) -> _Tok:
        tok = self.lex.next()
        assert tok is not None
        return tok

    def _rest(self, kw: _Tok, substitute: bool = True) -> list[_Tok]:
        """The words after ``kw`` on its line, up to a brace or ';'."""
        out: list[_Tok] = []
        while (tok := self.lex.peek()) is not None and tok.row == kw.row and not tok.punct:
            tok = self._take()
            out.append(self._tok(tok) if substitute else tok)
        return out

    def _name(self, after: _Tok, what: str) -> _Tok:
        tok = self.lex.next()
        if tok is None or tok.punct:
            found = "the end of the file" if tok is None else f"'{tok.text}'"
            raise _err(f"expected {what} after '{after.text}', found {found}",
                       (tok or after).where)
        return self._tok(tok)

    def _open(self, after: _Tok, what: str) -> _Tok:
        tok = self.lex.next()
        if tok is None or not tok.is_("{"):
            found = "the end of the file" if tok is None else f"'{tok.text}'"
            raise _err(f"expected '{{' after {what}, found {found}", (tok or after).where)
        return tok

    def _block(self, opener: _Tok, what: str, statement: Callable[[_Tok], None],
               closers: frozenset[str] = frozenset()) -> None:
        """Run ``statement`` on each keyword up to the '}' that closes ``opener``."""
        while True:
            tok = self.lex.peek()
            if tok is None:
                raise _unclosed(opener, what)
            if tok.punct:
                self.lex.next()
                if tok.text == "}":
                    return
                if tok.text == "{":
                    raise _err(f"unexpected '{{' in {what}: a block needs a keyword or name "
                               "before its '{'", tok.where)
                continue
            if not tok.quoted and tok.text in closers:
                raise _unclosed(opener, what, tok)
            statement(self._take())

    def _token_lines(self, opener: _Tok, what: str) -> list[list[_Tok]]:
        """The words of a flat block, line by line (';' also ends a line)."""
        lines: list[list[_Tok]] = []
        row = -1
        while True:
            tok = self.lex.next()
            if tok is None:
                raise _unclosed(opener, what)
            if tok.is_("}"):
                return [line for line in lines if line]
            if tok.is_("{"):
                raise _err(f"unexpected '{{' in {what} (it holds plain lines, no blocks)",
                           tok.where)
            if tok.is_(";") or tok.row != row:
                lines.append([])
                row = tok.row
            if not tok.is_(";"):
                lines[-1].append(self._tok(tok))

    # --------------------------------------------------------------------------- top level
    def parse(self) -> SMap:
        seen_any = False
        while (tok := self.lex.next()) is not None:
            seen_any = True
            if tok.punct:
                if tok.text == ";":
                    continue
                if tok.text == "}":
                    raise _err("unexpected '}': no block is open here", tok.where)
                raise _err("unexpected '{': a block needs a keyword before it (global, "
                           "superclass, host, switch)", tok.where)
            self._top(tok)
        if not seen_any:
            raise ConfigError("the file is empty (an MLN project starts with "
                              "global { project NAME })", self.file)
        self._connect_switch_hosts()
        self._derive_networks()
        return self._document()

    def _top(self, kw: _Tok) -> None:
        if kw.is_("global"):
            opener = self._open(kw, "global")
            self._block(opener, "global", self._global_entry, _TOP_WORDS | {"superclass"})
        elif kw.is_("superclass"):
            self._named(kw, "superclass", self._superclass)
        elif kw.is_("host"):
            self._named(kw, "host", self._host)
        elif kw.is_("switch"):
            self._named(kw, "switch", self._switch)
        elif kw.is_("autoenum"):
            self._autoenum(kw)
        elif kw.text.startswith("$"):
            self._variable(kw)
        else:
            raise _err(f"unknown statement '{kw.text}' (expected global, superclass, host, "
                       "switch or autoenum)", kw.where)

    def _named(self, kw: _Tok, what: str, define: Callable[[_Tok, _Tok], None]) -> None:
        """``KW NAME { ... }`` or the grouped ``KW { NAME { ... } NAME2 { ... } }``."""
        if self._next_is_open():
            group = self._take()

            def entry(name: _Tok) -> None:
                name = self._tok(name)
                define(name, self._open(name, f"{what} name '{name.text}'"))

            self._block(group, f"the {what} group", entry)
            return
        name = self._name(kw, f"a {what} name")
        define(name, self._open(name, f"{what} '{name.text}'"))

    def _global_entry(self, kw: _Tok) -> None:
        if kw.text.startswith("$"):
            self._variable(kw)
        elif kw.is_("project"):
            self.project = (self._arg(kw), kw.where)
        elif kw.is_("autoenum"):
            self._autoenum(kw)
        else:
            raise _err(f"bad global entry '{kw.text}' (global holds project NAME, "
                       "$variable = value and autoenum { ... })", kw.where)

    def _variable(self, kw: _Tok) -> None:
        text = " ".join([kw.text] + [t.text for t in self._rest(kw, substitute=False)])
        m = _DEF_RE.match(text)
        if m is None:
            raise _err(f"bad global entry '{text}': a variable is set as $name = value",
                       kw.where)
        name = m.group(1) or m.group(2)
        value = m.group(3).strip()
        if not value:
            raise _err(f"variable ${name} has no value (write ${name} = value)", kw.where)
        self.vars[name] = " ".join(self._subst(w, kw.where) for w in value.split())

    # ---------------------------------------------------------------- classes and nodes
    def _new_entry(self, section: SMap, name: str, where: Where, what: str) -> SMap:
        if name in section:
            raise _err(f"{what} '{name}' is defined twice (first at {section.where_of(name)})",
                       where)
        if section.where is None:
            section.where = where
        entry = SMap(where=where)
        section.set(name, entry, where)
        return entry

    def _superclass(self, name: _Tok, opener: _Tok) -> None:
        entry = self._new_entry(self.classes, name.text, name.where, "superclass")
        self._settings(opener, entry, f"superclass {name.text}", "inherit")

    def _host(self, name: _Tok, opener: _Tok) -> None:
        entry = self._new_entry(self.nodes, name.text, name.where, "host")
        self._settings(opener, entry, f"host {name.text}", "class")

    def _settings(self, opener: _Tok, target: SMap, what: str, inherit_key: str) -> None:
        def statement(kw: _Tok) -> None:
            if kw.is_("superclass"):
                target.set(inherit_key, self._arg(kw), kw.where)
                if self._next_is_open():     # 'superclass X {' inside a block: a missing '}'
                    raise _unclosed(opener, what, kw)
            else:
                self._setting(kw, target)

        self._block(opener, what, statement, _TOP_WORDS)

    def _setting(self, kw: _Tok, target: SMap) -> None:
        k = kw.text
        if k in ("xen", "kvm", "uml"):
            target.set("hypervisor", k, kw.where)
        elif k == "lvm":
            target.set("storage", "lvm", kw.where)
        elif k in _SETTINGS:
            target.set(_SETTINGS[k], self._arg(kw), kw.where)
        elif k == "nameserver":
            _list(target, "nameservers", kw.where).add(self._arg(kw), kw.where)
        elif k == "network":
            self._network(kw, _map(target, "interfaces", kw.where))
        elif k == "users":
            self._users(self._open(kw, "users"), target)
        elif k == "groups":
            self._groups(self._open(kw, "groups"), target)
        elif k == "startup":
            self._startup(self._open(kw, "startup"), _list(target, "startup", kw.where))
        elif k == "mount":
            self._mounts(self._open(kw, "mount"), _list(target, "mounts", kw.where))
        elif k in _PASSTHROUGH and not self._next_is_open():
            self._passthrough(kw, target)
        else:
            self._plugin_entry(kw, _map(target, "plugins", kw.where))

    def _passthrough(self, kw: _Tok, target: SMap) -> None:
        """An elastic setting MLN does not have (vcpus, search, ...): kept under its name."""
        values = [t.text for t in self._rest(kw)]
        if not values:
            raise _err(f"'{kw.text}' needs a value on the same line", kw.where)
        if kw.text == "search":
            lst = _list(target, "search", kw.where)
            for v in values:
                lst.add(v, kw.where)
            return
        value = " ".join(values)
        target.set(kw.text, _scalar(value) if kw.text in _INTEGERS else value, kw.where)

    # -------------------------------------------------------------------------- interfaces
    def _network(self, kw: _Tok, ifaces: SMap) -> None:
        if self._next_is_open():
            group = self._take()
            self._block(group, "the network group", lambda name: self._interface(
                self._tok(name), ifaces), frozenset({"global", "host", "superclass"}))
            return
        self._interface(self._name(kw, "an interface name (e.g. network eth0 { ... })"), ifaces)

    def _interface(self, name: _Tok, ifaces: SMap) -> None:
        opener = self._open(name, f"interface '{name.text}'")
        iface = _map(ifaces, name.text, name.where)
        self._block(opener, f"interface {name.text}", lambda kw: self._iface_setting(kw, iface),
                    frozenset({"global", "host", "superclass"}))

    def _iface_setting(self, kw: _Tok, iface: SMap) -> None:
        k = kw.text
        if k == "broadcast":
            self._arg(kw)                                 # follows from address/netmask
        elif k in _IFACE:
            value = self._arg(kw)
            if k == "address" and value.lower() in ("dhcp", "auto"):
                value = value.lower()
            iface.set(_IFACE[k], value, kw.where)
        elif self._next_is_open():
            raise _err(f"unexpected block '{k}' in an interface (it holds switch, address, "
                       "netmask, gateway, hwaddress)", kw.where)
        else:
            values = [t.text for t in self._rest(kw)]
            iface.set(k, _scalar(" ".join(values)), kw.where)

    # ---------------------------------------------------------------------- other blocks
    def _users(self, opener: _Tok, target: SMap) -> None:
        users = _map(target, "users", opener.where)
        for line in self._token_lines(opener, "users"):
            i = 0
            while i < len(line):
                name = line[i]
                if not _USER_RE.match(name.text):
                    raise _err(f"users: expected a user name, found '{name.text}' (write "
                               "NAME [PASSWORD-HASH], one user per line)", name.where)
                user = _user(users, name)
                i += 1
                if i < len(line) and (len(line) == 2 or _looks_like_password(line[i].text)):
                    user.set("password", line[i].text, line[i].where)
                    i += 1

    def _groups(self, opener: _Tok, target: SMap) -> None:
        groups = _map(target, "groups", opener.where)
        for line in self._token_lines(opener, "groups"):
            group = line[0]
            if group.text not in groups:
                groups.set(group.text, SMap(where=group.where), group.where)
            for member in line[1:]:
                user = _user(_map(target, "users", member.where), member)
                lst = _list(user, "groups", member.where)
                if group.text not in lst:
                    lst.add(group.text, member.where)

    def _startup(self, opener: _Tok, commands: SList) -> None:
        for text, where in self.lex.raw_block(opener, "startup"):
            commands.add(self._subst(text, where, strict=False), where)

    def _mounts(self, opener: _Tok, mounts: SList) -> None:
        for line in self._token_lines(opener, "mount"):
            if len(line) < 2:
                raise _err(f"a mount needs a source and a target (SRC TARGET [TYPE [OPTIONS]]), "
                           f"found only '{line[0].text}'", line[0].where)
            if len(line) > 4:
                raise _err(f"a mount has at most 4 fields (SRC TARGET TYPE OPTIONS), found "
                           f"{len(line)}; write one mount per line", line[0].where)
            mount = SMap(where=line[0].where)
            for key, tok in zip(("source", "target", "type", "options"), line):
                mount.set(key, tok.text, tok.where)
            mounts.add(mount, line[0].where)

    def _plugin(self, opener: _Tok, what: str) -> SMap:
        """A block elastic does not interpret: a nested mapping of its lines."""
        out = SMap(where=opener.where)
        self._block(opener, what, lambda kw: self._plugin_entry(kw, out))
        return out

    def _plugin_entry(self, kw: _Tok, out: SMap) -> None:
        """``KEY VALUE...``, ``KEY { ... }`` or ``KEY NAME { ... }`` (-> KEY: {NAME: {...}})."""
        key = self._tok(kw).text
        values = " ".join(t.text for t in self._rest(kw))
        if not self._next_is_open():
            _add_repeat(out, key, values, kw.where)
            return
        block = self._plugin(self._take(), f"block {key}")
        if not values:
            _add_repeat(out, key, block, kw.where)
            return
        holder = out.get(key)
        if not isinstance(holder, SMap):
            holder = SMap(where=kw.where)
            _add_repeat(out, key, holder, kw.where)
        _add_repeat(holder, values, block, kw.where)

    # ------------------------------------------------------------------------- switches
    def _switch(self, name: _Tok, opener: _Tok) -> None:
        net = self._new_entry(self.networks, name.text, name.where, "switch")
        net.set("kind", "private", name.where)
        self.switches.append(name.text)

        def entry(kw: _Tok) -> None:
            if kw.is_("hosts"):
                self._switch_hosts(name.text, self._open(kw, "hosts"))
            elif self._next_is_open():
                raise _err(f"unexpected block '{kw.text}' in switch {name.text} (a switch "
                           "holds hosts { HOST IFACE ... })", kw.where)
            else:
                values = [t.text for t in self._rest(kw)]
                if not values:
                    raise _err(f"'{kw.text}' needs a value on the same line", kw.where)
                net.set(kw.text, _scalar(" ".join(values)), kw.where)

        self._block(opener, f"switch {name.text}", entry, _TOP_WORDS | {"superclass"})

    def _switch_hosts(self, switch: str, opener: _Tok) -> None:
        words = [t for line in self._token_lines(opener, f"hosts of switch {switch}")
                 for t in line]
        if len(words) % 2:
            last = words[-1]
            raise _err(f"hosts of switch {switch}: host '{last.text}' has no interface (write "
                       f"HOST IFACE pairs, e.g. {last.text} eth0)", last.where)
        for node, iface in zip(words[::2], words[1::2]):
            self.links.append((switch, node, iface))

    # ------------------------------------------------------------------------- autoenum
    def _autoenum(self, kw: _Tok) -> None:
        opener = self._open(kw, "autoenum")
        args: dict[str, tuple[str, Where]] = {}
        servers: list[tuple[_Tok, int]] | None = None
        servers_at = kw.where
        extra = SMap(where=opener.where)

        def entry(k: _Tok) -> None:
            nonlocal servers, servers_at
            if k.text in _AUTOENUM_ARGS:
                args[k.text] = (self._arg(k), k.where)
            elif k.is_("service_hosts"):
                servers, servers_at = self._service_hosts(self._open(k, "service_hosts")), k.where
            else:
                self._plugin_entry(k, extra)

        self._block(opener, "autoenum", entry, _TOP_WORDS)
        node = self._autoenum_node(kw, args)
        if servers is not None:
            self._autoenum_hosts(node, servers, servers_at, node["count"])
        if extra:
            _map(node, "plugins", kw.where).set("autoenum", extra, kw.where)

    def _autoenum_node(self, kw: _Tok, args: dict[str, tuple[str, Where]]) -> SMap:
        for need in ("superclass", "numhosts"):
            if need not in args:
                raise _err(f"autoenum needs '{_ONE_VALUE[need]}'", kw.where)
        cls, cls_where = args["superclass"]
        prefix, prefix_where = args.get("hostname") or args.get("prefix") or args["superclass"]
        node = self._new_entry(self.nodes, prefix, kw.where, "autoenum node group")
        node.set("class", cls, cls_where)
        node.set("count", _count(*args["numhosts"], "numhosts"), args["numhosts"][1])
        node.set("names", prefix + "{n}", prefix_where)
        if "address" in args or "addresses_begin" in args:
            eth0 = _map(_map(node, "interfaces", kw.where), "eth0", kw.where)
            if "address" in args:
                value, where = args["address"]
                low = value.lower()
                eth0.set("address", low if low in ("auto", "dhcp") else value, where)
            if "addresses_begin" in args:
                value, where = args["addresses_begin"]
                eth0.set("address_start", _scalar(value), where)
        if "net" in args:
            self.nets[prefix] = args["net"]
        return node

    def _service_hosts(self, opener: _Tok) -> list[tuple[_Tok, int]]:
        words = [t for line in self._token_lines(opener, "service_hosts") for t in line]
        if len(words) % 2:
            last = words[-1]
            raise _err(f"service_hosts: server '{last.text}' has no count (write SERVER COUNT, "
                       f"e.g. {last.text} 4)", last.where)
        return [(server, _count(n.text, n.where, f"the count of {server.text}"))
                for server, n in zip(words[::2], words[1::2])]

    def _autoenum_hosts(self, node: SMap, servers: list[tuple[_Tok, int]], where: Where,
                        count: int) -> None:
        total = sum(n for _, n in servers)
        if total != count:
            raise _err(f"autoenum: service_hosts place {total} hosts but numhosts is {count}",
                       where)
        hosts = SMap(where=where)
        for server, n in servers:
            hosts.set(server.text, hosts.get(server.text, 0) + n, server.where)
        node.set("hosts", hosts, where)

    # ------------------------------------------------------------------ after parsing
    def _connect_switch_hosts(self) -> None:
        for switch, node, iface in self.links:
            if node.text not in self.nodes:
                raise _err(f"switch {switch} lists host '{node.text}', but no host of that name "
                           "is defined", node.where, f"switch {switch}")
            entry = self.nodes[node.text]
            settings = _map(_map(entry, "interfaces", node.where), iface.text, iface.where)
            current = settings.get("network")
            if current is not None and current != switch:
                raise _err(f"host {node.text} {iface.text} is on switch {current} "
                           f"({settings.where_of('network')}) but switch {switch} lists it too",
                           node.where)
            settings.set("network", switch, node.where)

    def _chain(self, node: SMap) -> list[SMap]:
        """The node and its classes, nearest first (as far as they exist)."""
        chain = [node]
        seen: set[str] = set()
        cls = node.get("class")
        while isinstance(cls, str) and cls in self.classes and cls not in seen:
            seen.add(cls)
            chain.append(self.classes[cls])
            cls = self.classes[cls].get("inherit")
        return chain

    def _attached(self, name: str, node: SMap) -> Iterator[_Attached]:
        layers = [e["interfaces"] for e in self._chain(node)
                  if isinstance(e.get("interfaces"), SMap)]
        order: list[str] = []
        for ifaces in reversed(layers):
            order += [i for i in ifaces if i not in order]
        for iface in order:
            yield self._attach_one(name, iface, [ls[iface] for ls in layers if iface in ls])

    def _attach_one(self, node: str, iface: str, layers: list[SMap]) -> _Attached:
        def pick(key: str) -> tuple[str | None, Where | None]:
            for layer in layers:
                if isinstance(layer, SMap) and isinstance(layer.get(key), str):
                    return layer[key], layer.where_of(key)
            return None, None

        address, address_where = pick("address")
        if iface == "eth0" and node in self.nets and address in (None, "auto"):
            address, address_where = self.nets[node]
        gateway, gateway_where = pick("gateway")
        where = address_where or layers[0].where or Where(self.file)
        return _Attached(node, iface, pick("network")[0], address, pick("netmask")[0],
                         gateway, where, gateway_where or where)

    def _derive_networks(self) -> None:
        found: dict[str, tuple[str, _Attached]] = {}
        uplinks: dict[str | None, str] = {}
        for name, node in self.nodes.items():
            for a in self._attached(name, node):
                if a.network is None:
                    self._uplink(a, node, uplinks)
                elif a.network in self.switches:
                    self._switch_subnet(a, found)
        for switch in self.switches:
            net = self.networks[switch]
            if "cidr" in net:
                continue
            if switch not in found:
                raise _err(f"switch {switch}: cannot tell its subnet; no interface on it has an "
                           "address and a netmask (MLN switches have no address range, elastic "
                           "needs one)", self.networks.where_of(switch), f"switch {switch}")
            net.set("cidr", found[switch][0], found[switch][1].where)

    def _switch_subnet(self, a: _Attached, found: dict[str, tuple[str, _Attached]]) -> None:
        subnet = _subnet(a.address, a.netmask)
        if subnet is None:
            return
        assert a.network is not None
        first = found.setdefault(a.network, (subnet, a))
        if first[0] != subnet:
            other = first[1]
            raise _err(f"switch {a.network}: {a.node} {a.iface} is on {subnet} but "
                       f"{other.node} {other.iface} ({other.where}) is on {first[0]}", a.where)

    def _uplink(self, a: _Attached, node: SMap, uplinks: dict[str | None, str]) -> None:
        """Put an interface without a switch on a bridged uplink network for its subnet."""
        subnet = _subnet(a.address, a.netmask)
        if subnet is None and a.address not in (None, "dhcp"):
            raise _err(f"{a.node} {a.iface} has no switch, so it is on the uplink network, but "
                       f"its subnet cannot be told from address '{a.address}' and netmask "
                       f"'{a.netmask}' (give a static address and a netmask, or address dhcp)",
                       a.where)
        name = uplinks.get(subnet)
        if name is None:
            name = uplinks[subnet] = self._free_name("uplink")
            net = SMap(where=a.where)
            net.set("kind", "bridged", a.where)
            if subnet is None:
                net.set("dhcp", True, a.where)
            else:
                net.set("cidr", subnet, a.where)
            self._add_network(name, net, a.where)
        net = self.networks[name]
        if subnet is not None and a.gateway and "gateway" not in net:
            net.set("gateway", a.gateway, a.gateway_where)
        iface = _map(_map(node, "interfaces", a.where), a.iface, a.where)
        iface.set("network", name, a.where)

    def _free_name(self, base: str) -> str:
        n = 1
        while (name := base if n == 1 else f"{base}{n}") in self.networks:
            n += 1
        return name

    def _add_network(self, name: str, net: SMap, where: Where) -> None:
        if self.networks.where is None:
            self.networks.where = where
        self.networks.set(name, net, where)

    def _hosts(self) -> SMap:
        """hosts.NAME for every service host named, for the user to complete."""
        hosts = SMap()
        for entry in [*self.nodes.values(), *self.classes.values()]:
            names: list[tuple[str, Where | None]] = []
            if isinstance(entry.get("host"), str):
                names.append((entry["host"], entry.where_of("host")))
            if isinstance(entry.get("hosts"), SMap):
                names += [(h, entry["hosts"].where_of(h)) for h in entry["hosts"]]
            for host, where in names:
                if host not in hosts:
                    if hosts.where is None:
                        hosts.where = where
                    block = SMap(where=where)
                    block.set("uri", f"qemu+ssh://{host}/system", where)
                    hosts.set(host, block, where)
        return hosts

    def _document(self) -> SMap:
        doc = SMap(where=Where(self.file, 1))
        if self.project is not None:
            doc.set("project", *self.project)
        doc.set("networks", self.networks, self.networks.where)
        doc.set("classes", self.classes, self.classes.where)
        doc.set("nodes", self.nodes, self.nodes.where)
        hosts = self._hosts()
        if hosts:
            doc.set("hosts", hosts, hosts.where)
        return doc


# ------------------------------------------------------------------------------ helpers

def _map(parent: SMap, key: str, where: Where) -> SMap:
    """parent[key] as a mapping, made (at ``where``) if missing."""
    child = parent.get(key)
    if not isinstance(child, SMap):
        child = SMap(where=where)
        parent.set(key, child, where)
    return child


def _list(parent: SMap, key: str, where: Where) -> SList:
    child = parent.get(key)
    if not isinstance(child, SList):
        child = SList(where=where)
        parent.set(key, child, where)
    return child


def _add_repeat(target: SMap, key: str, value: object, where: Where) -> None:
    """Set key; a key given again becomes a list of all its values."""
    if key not in target:
        target.set(key, value, where)
        return
    existing = target[key]
    if not isinstance(existing, SList):
        first = target.where_of(key)
        existing = SList(where=first)
        existing.add(target[key], first)
        target.set(key, existing, first)
    existing.add(value, where)


def _user(users: SMap, name: _Tok) -> SMap:
    user = users.get(name.text)
    if not isinstance(user, SMap):
        user = SMap(where=name.where)
        users.set(name.text, user, name.where)
    return user


def _looks_like_password(text: str) -> bool:
    return text.startswith("$") or text in ("!", "!!", "*")


def _scalar(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def _count(text: str, where: Where, what: str) -> int:
    if not text.isdigit():
        raise _err(f"{what} must be a whole number, not '{text}'", where)
    return int(text)


def _subnet(address: str | None, netmask: str | None) -> str | None:
    """'10.0.0.1' + '255.255.255.0' -> '10.0.0.0/24'; None if either is missing or bad."""
    if not address or not netmask or address in ("dhcp", "auto"):
        return None
    try:
        prefix = parse_netmask(netmask)
        return str(ipaddress.IPv4Network(f"{address}/{prefix}", strict=False))
    except ValueError:
        return None
