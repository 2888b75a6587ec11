"""MLN project files: what they read as (the raw cluster.yaml document), and their errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from elastic.errors import ConfigError
from elastic.model import Where
from elastic.spec.loader import display_path
from elastic.spec.mln import parse_mln
from elastic.spec.source import SList, SMap

DATA = Path(__file__).resolve().parents[1] / "data" / "mln"

WEBFARM = {
    "project": "webfarm",
    "networks": {
        "lan": {"kind": "private", "cidr": "10.0.0.0/24"},
        "uplink": {"kind": "bridged", "cidr": "128.39.73.0/24", "gateway": "128.39.73.1"},
    },
    "classes": {
        "common": {
            "hypervisor": "xen", "memory": "128M", "image": "ubuntu-server.ext3", "disk": "2G",
            "interfaces": {"eth0": {"network": "lan", "netmask": "255.255.255.0"}},
        },
        "webserver": {
            "inherit": "common",
            "interfaces": {"eth1": {"netmask": "255.255.255.0", "gateway": "128.39.73.1"}},
        },
    },
    "nodes": {
        "www1": {
            "class": "webserver",
            "interfaces": {"eth1": {"address": "128.39.73.101", "network": "uplink"},
                           "eth0": {"address": "10.0.0.1"}},
        },
        "db": {"class": "common", "disk": "3G", "interfaces": {"eth0": {"address": "10.0.0.3"}}},
    },
}


def write(tmp_path: Path, text: str, name: str = "p.mln") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def parse_text(tmp_path: Path, text: str) -> SMap:
    return parse_mln(write(tmp_path, text))


def plain(value: Any) -> Any:
    """The document without positions (and with plain types), to compare whole trees."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def all_key_positions(value: Any, path: str = "") -> list[tuple[str, Where | None]]:
    out: list[tuple[str, Where | None]] = []
    if isinstance(value, SMap):
        for k, v in value.items():
            out.append((f"{path}.{k}", value.key_where.get(k)))
            out += all_key_positions(v, f"{path}.{k}")
    elif isinstance(value, SList):
        for i, v in enumerate(value):
            out += all_key_positions(v, f"{path}[{i}]")
    return out


# ------------------------------------------------------------------------- the web farm

def test_webfarm_reads_as_the_expected_document() -> None:
    doc = parse_mln(DATA / "webfarm.mln")
    assert plain(doc) == WEBFARM
    assert list(doc) == ["project", "networks", "classes", "nodes"]


def test_grouped_and_one_per_line_forms_read_the_same() -> None:
    assert plain(parse_mln(DATA / "webfarm_grouped.mln")) == WEBFARM


def test_every_key_knows_its_mln_file_and_line() -> None:
    doc = parse_mln(DATA / "webfarm.mln")
    for path, where in all_key_positions(doc):
        assert where is not None, path
        assert where.file.endswith("webfarm.mln") and isinstance(where.line, int), path
    www1 = doc["nodes"]["www1"]
    assert doc["nodes"].where_of("www1").line == 6
    assert doc["classes"]["webserver"].where_of("inherit").line == 4
    assert doc["classes"]["common"]["interfaces"]["eth0"].where_of("network").line == 3
    assert www1["interfaces"]["eth1"].where_of("address").line == 6
    assert doc["networks"].where_of("lan").line == 5
    assert doc["networks"]["uplink"].where_of("gateway").line == 4     # from the superclass
    assert doc.where_of("project").line == 1


def test_grouped_form_positions_point_at_each_line() -> None:
    doc = parse_mln(DATA / "webfarm_grouped.mln")
    assert doc["classes"].where_of("common").line == 7
    assert doc["classes"]["common"].where_of("memory").line == 9
    assert doc["classes"]["webserver"]["interfaces"]["eth1"].where_of("gateway").line == 23
    assert doc["nodes"]["db"].where_of("disk").line == 43


def test_webfarm_resolves_like_yaml() -> None:
    from elastic.spec.loader import load_document
    from elastic.spec.resolve import resolve

    project = resolve(load_document(DATA / "webfarm.mln"), "webfarm.mln")
    www1 = project.node("www1")
    assert www1.classes == ("webserver", "common")
    assert (www1.memory, www1.disk, project.node("db").disk) == (128, 2048, 3072)
    eth1 = www1.interface("eth1")
    assert (eth1.network, eth1.address, eth1.prefixlen, eth1.gateway) == \
        ("uplink", "128.39.73.101", 24, "128.39.73.1")
    assert project.network("uplink").kind == "bridged"


# ------------------------------------------------------------------ variables, includes

def test_variables_both_spellings_anywhere_after_their_definition() -> None:
    doc = parse_mln(DATA / "variables.mln")
    assert doc["project"] == "oslolab"
    assert doc["classes"]["base"]["memory"] == "256M"                   # $memory=256M
    assert doc["classes"]["base"]["image"] == "debian-oslo.img"          # value uses $[name]
    assert list(doc["nodes"]) == ["oslo1", "node2"]                      # in a host name
    assert doc["nodes"]["oslo1"]["interfaces"]["eth0"]["address"] == "10.1.0.1"
    assert doc["nodes"]["node2"]["interfaces"]["eth0"]["address"] == "10.1.0.2"
    assert doc["networks"]["lan"]["cidr"] == "10.1.0.0/16"


def test_crypt_hashes_are_not_variables(tmp_path: Path) -> None:
    doc = parse_text(tmp_path, "global { project p  $y = no }\n"
                               "superclass c { users { root $y$j9T$abc$def } }\n")
    assert doc["classes"]["c"]["users"]["root"]["password"] == "$y$j9T$abc$def"


def test_include_is_textual_and_positions_name_the_included_file() -> None:
    doc = parse_mln(DATA / "include_main.mln")
    common = doc["classes"]["common"]
    assert plain(common) == {"memory": "64M", "image": "base.img",
                             "interfaces": {"eth0": {"network": "lan",
                                                     "netmask": "255.255.255.0"}}}
    where = doc["classes"].where_of("common")
    assert where.file.endswith("include/common.mln") and where.line == 2
    assert common.where_of("image").line == 4
    assert doc["nodes"].where_of("a").file.endswith("include_main.mln")
    assert doc["nodes"].where_of("a").line == 4                      # lines after the include
    assert doc["networks"]["lan"]["cidr"] == "10.2.0.0/24"


def test_include_cycle_names_the_chain() -> None:
    with pytest.raises(ConfigError) as e:
        parse_mln(DATA / "cycle_a.mln")
    a, b = display_path(DATA / "cycle_a.mln"), display_path(DATA / "cycle_b.mln")
    assert e.value.problems[0].message == f"include cycle: {a} -> {b} -> {a}"
    assert e.value.file == b and e.value.line == 2


def test_missing_include_names_the_including_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "global { project p }\n\n#include nothere.mln\n")
    with pytest.raises(ConfigError) as e:
        parse_mln(path)
    assert "file not found" in str(e.value) and "nothere.mln" in str(e.value)
    assert e.value.file.endswith("p.mln") and e.value.line == 3


# ------------------------------------------------------------------------------ switches

def test_switch_hosts_block_connects_interfaces_and_gives_cidrs() -> None:
    doc = parse_mln(DATA / "switch_hosts.mln")
    web, db = doc["nodes"]["web"], doc["nodes"]["db"]
    assert web["interfaces"]["eth0"]["network"] == "front"
    assert db["interfaces"]["eth0"]["network"] == "front"
    assert db["interfaces"]["eth1"]["network"] == "back"
    assert doc["networks"]["front"] == {"kind": "private", "cidr": "192.168.1.0/24"}
    assert doc["networks"]["back"] == {"kind": "private", "cidr": "172.16.0.0/16"}
    # web's eth1 (from the superclass) has no switch and no address: a DHCP uplink
    assert web["interfaces"]["eth1"] == {"network": "uplink"}
    assert doc["networks"]["uplink"] == {"kind": "bridged", "dhcp": True}
    assert db["interfaces"]["eth0"].where_of("network").line == 3    # the switch's hosts line


def test_switch_hosts_naming_an_unknown_host_is_an_error(tmp_path: Path) -> None:
    text = ("global { project p }\n"
            "switch lan {\n"
            "  hosts { a eth0\n"
            "          ghost eth0 }\n"
            "}\n"
            "host a { network eth0 { address 10.0.0.1 netmask 255.255.255.0 } }\n")
    with pytest.raises(ConfigError) as e:
        parse_text(tmp_path, text)
    assert "switch lan lists host 'ghost'" in str(e.value)
    assert e.value.line == 4 and e.value.file.endswith("p.mln")


def test_several_uplink_subnets_get_numbered_networks(tmp_path: Path) -> None:
    doc = parse_text(tmp_path, """
global { project p }
host a { network eth0 { address 192.168.1.5  netmask 255.255.255.0  gateway 192.168.1.1 } }
host b { network eth0 { address 192.168.2.5  netmask 255.255.255.0 }
         network eth1 { address 192.168.1.6  netmask 255.255.255.0 } }
host c { network eth0 { address dhcp } }
""")
    assert plain(doc["networks"]) == {
        "uplink": {"kind": "bridged", "cidr": "192.168.1.0/24", "gateway": "192.168.1.1"},
        "uplink2": {"kind": "bridged", "cidr": "192.168.2.0/24"},
        "uplink3": {"kind": "bridged", "dhcp": True},
    }
    assert doc["nodes"]["b"]["interfaces"]["eth1"]["network"] == "uplink"
    assert doc["nodes"]["c"]["interfaces"]["eth0"] == {"address": "dhcp", "network": "uplink3"}


def test_switch_keys_pass_through_and_explicit_cidr_needs_no_derivation(tmp_path: Path) -> None:
    doc = parse_text(tmp_path, "global { project p }\nswitch lan { cidr 10.5.0.0/16 }\n"
                               "host a { network eth0 { switch lan  address auto } }\n")
    assert doc["networks"]["lan"] == {"kind": "private", "cidr": "10.5.0.0/16"}
    assert doc["nodes"]["a"]["interfaces"]["eth0"] == {"network": "lan", "address": "auto"}


# ------------------------------------------------------------------ the other blocks

def test_users_groups_startup_mounts_plugins() -> None:
    doc = parse_mln(DATA / "features.mln")
    base, server = doc["classes"]["base"], doc["nodes"]["server"]
    assert (base["hypervisor"], base["storage"], base["console"]) == ("kvm", "lvm", "screen")
    assert base["nameservers"] == ["10.0.0.53", "10.0.0.54"]
    assert plain(base["users"]) == {
        "alice": {"password": "$6$salt$abcdefghijklmnop", "groups": ["admins"]},
        "bob": {"password": "$1$xy$hash", "groups": ["admins"]},
        "carol": {},
    }
    assert plain(base["groups"]) == {"admins": {}, "staff": {}}
    assert server["startup"] == [
        'for i in 1 2 3; do echo "n${i}" >> /tmp/log; done',
        'if [ -d /srv ]; then { echo "has srv"; } fi',
        "echo alice > /etc/admin",
    ]
    assert server["startup"].where_of(1).line == 28
    assert plain(server["mounts"]) == [
        {"source": "fileserver:/home", "target": "/home", "type": "nfs", "options": "rw,hard"},
        {"source": "/dev/vdb", "target": "/data"},
    ]
    assert plain(server["plugins"]) == {
        "nagios": {"check_ping": "100.0,20% 500.0,60%", "check_http": "",
                   "contact": ["alice", "bob"], "service": {"web": {"port": "80"}}},
        "hostlist": {"kind": "short"},
        "colour": "blue",
    }
    assert (server["host"], server["free_space"], server["vcpus"]) == ("blade1", "1G", 2)
    assert plain(doc["hosts"]) == {"blade1": {"uri": "qemu+ssh://blade1/system"}}


def test_startup_on_one_line_and_after_it_parsing_goes_on(tmp_path: Path) -> None:
    doc = parse_text(tmp_path, "global { project p }\n"
                               "superclass c { startup { echo ${HOME} } memory 64M }\n")
    assert doc["classes"]["c"]["startup"] == ["echo ${HOME}"]
    assert doc["classes"]["c"]["memory"] == "64M"


def test_small_keywords_quotes_and_statement_separators(tmp_path: Path) -> None:
    doc = parse_text(tmp_path, """
global { project p }
host a { uml ; description "the old box"  # a comment
  network eth0 { address DHCP  broadcast 10.0.0.255  hwaddress 02:00:0a:00:00:05 }
  network eth1 { address dhcp  mac 02:00:0a:00:00:06 } search example.org lab.example.org
}
""")
    a = doc["nodes"]["a"]
    assert (a["hypervisor"], a["description"]) == ("uml", "the old box")
    assert plain(a["interfaces"]) == {
        "eth0": {"address": "dhcp", "mac": "02:00:0a:00:00:05", "network": "uplink"},
        "eth1": {"address": "dhcp", "mac": "02:00:0a:00:00:06", "network": "uplink"},
    }
    assert a["search"] == ["example.org", "lab.example.org"]


# ---------------------------------------------------------------------------- autoenum

def test_autoenum_with_included_service_hosts() -> None:
    doc = parse_mln(DATA / "autoenum.mln")
    assert plain(doc["nodes"]) == {"compute": {
        "class": "compute", "count": 8, "names": "compute{n}",
        "interfaces": {"eth0": {"address": "auto", "address_start": 10}},
        "hosts": {"blade1": 4, "blade2": 3, "blade3": 1},
    }}
    hosts = doc["nodes"]["compute"]["hosts"]
    assert hosts.where_of("blade2").file.endswith("servers.txt")
    assert hosts.where_of("blade2").line == 3
    assert doc["networks"]["lan"]["cidr"] == "10.0.0.0/24"      # net + the class's netmask
    assert list(doc["hosts"]) == ["blade1", "blade2", "blade3"]


def test_autoenum_at_top_level_with_prefix_on_the_uplink(tmp_path: Path) -> None:
    doc = parse_text(tmp_path, """
global { project p }
superclass worker { template w.img  network eth0 { netmask 255.255.0.0 } }
autoenum { superclass worker  numhosts 3  hostname node  net 172.20.0.0
           service_hosts { s1 2  s2 1 }  domain example.org }
""")
    node = doc["nodes"]["node"]
    assert (node["class"], node["count"], node["names"]) == ("worker", 3, "node{n}")
    assert plain(node["hosts"]) == {"s1": 2, "s2": 1}
    assert plain(node["plugins"]) == {"autoenum": {"domain": "example.org"}}
    assert node["interfaces"]["eth0"]["network"] == "uplink"
    assert doc["networks"]["uplink"] == {"kind": "bridged", "cidr": "172.20.0.0/16"}


def test_autoenum_resolves_to_numbered_nodes_spread_over_service_hosts(tmp_path: Path) -> None:
    from elastic.spec.loader import load_document
    from elastic.spec.resolve import resolve

    path = write(tmp_path, """
global { project p }
superclass worker { template w.img  network eth0 { netmask 255.255.0.0 } }
autoenum { superclass worker  numhosts 3  prefix node  net 172.20.0.0
           address auto  addresses_begin 10  service_hosts { s1 2  s2 1 } }
""")
    project = resolve(load_document(path), "p.mln")
    assert [(n.name, n.host, n.interface("eth0").address) for n in project.nodes] == [
        ("node1", "s1", "172.20.0.10"), ("node2", "s1", "172.20.0.11"),
        ("node3", "s2", "172.20.0.12")]


def test_autoenum_counts_must_add_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_text(tmp_path, "global { project p\n autoenum { superclass c  numhosts 8\n"
                             "  service_hosts { s1 4  s2 3 } } }\n")
    assert "service_hosts place 7 hosts but numhosts is 8" in str(e.value)
    assert e.value.line == 3


# ------------------------------------------------------------------------------ errors

ERRORS = [
    # (text, line, expected message fragment)
    ("global { project p }\nhost a {\n  memory 64M\n", 2,
     "the '{' of host a is never closed"),
    ("global { project p }\nhost a {\n  memory 64M\nhost b { }\n", 2,
     "never closed (missing '}' before 'host'"),
    ("global { project p }\nhost a { network eth0 { address 10.0.0.1 }\n", 2,
     "the '{' of host a is never closed"),
    ("global { project p } }\n", 1, "unexpected '}': no block is open here"),
    ("global { project p }\nhost a { memory\n  size 2G }\n", 2,
     "'memory' needs a value on the same line (e.g. memory 128M)"),
    ("global { project p }\nhost a {\n  template }\n", 3, "'template' needs a value"),
    ("global { project p }\nhost a { network eth0 { switch } }\n", 2, "'switch' needs a value"),
    ("global {\n  project p\n  projekt q\n}\n", 3, "bad global entry 'projekt'"),
    ("global {\n  $mem 64M\n}\n", 2, "a variable is set as $name = value"),
    ("global { $mem = }\n", 1, "variable $mem has no value"),
    ("global { project p }\n\nhost a { memory $mem }\n", 3, "undefined variable $mem"),
    ("global { project p }\nhost a { memory $[mem }\n", 2, "bad variable reference '$[mem'"),
    ('global { project p }\nhost a { description "unterminated }\n', 2, "unterminated string"),
    ("global { project p }\nhost a memory 64M\n", 2, "expected '{' after host 'a', found 'memory'"),
    ("global { project p }\nhost {\n  a memory 64M\n}\n", 3,
     "expected '{' after host name 'a', found 'memory'"),
    ("global { project p }\nhost\n", 2, "expected a host name after 'host', found the end"),
    ("global { project p }\nhots a { }\n", 2, "unknown statement 'hots'"),
    ("global { project p }\nhost a { { } }\n", 2, "unexpected '{' in host a"),
    ("global { project p }\n{ }\n", 2, "unexpected '{': a block needs a keyword"),
    ("global { project p }\nhost a { superclass c {\n  memory 1G }\n", 2,
     "the '{' of host a is never closed (missing '}' before 'superclass'"),
    ("global { project p }\nhost a {\n  startup {\n    echo hi\n", 3,
     "the '{' of startup is never closed"),
    ("global { project p }\nhost a { mount {\n  /dev/vdb\n} }\n", 3,
     "a mount needs a source and a target"),
    ("global { project p }\nhost a { users { /home/x } }\n", 2, "expected a user name"),
    ("global { project p }\nswitch lan { hosts { a eth0 b } }\n", 2,
     "host 'b' has no interface"),
    ("global { project p }\nswitch lan { }\nhost a { }\n", 2,
     "switch lan: cannot tell its subnet"),
    ("global { project p }\nhost a { }\nhost a { }\n", 3, "host 'a' is defined twice"),
    ("global { project p }\nhost a {\n network eth0 { address 10.1.1.1 } }\n", 3,
     "its subnet cannot be told from address '10.1.1.1'"),
    ("global { project p }\nswitch lan { }\n"
     "host a { network eth0 { switch lan address 10.0.0.1 netmask 255.255.255.0 } }\n"
     "host b { network eth0 { switch lan address 10.0.1.1 netmask 255.255.255.0 } }\n", 4,
     "switch lan: b eth0 is on 10.0.1.0/24 but a eth0"),
    ("global { project p\n autoenum { numhosts 2 } }\n", 2, "autoenum needs 'superclass"),
    ("global { project p\n autoenum { superclass c\n numhosts many } }\n", 3,
     "numhosts must be a whole number, not 'many'"),
    ("global { project p\n autoenum { superclass c numhosts 2\n"
     "  service_hosts { s1 two } } }\n", 3, "the count of s1 must be a whole number"),
    ("global { project p }\n#include\n", 2, "#include needs a file name"),
]


@pytest.mark.parametrize(("text", "line", "message"), ERRORS,
                         ids=[f"{i}-{e[2][:30]}" for i, e in enumerate(ERRORS)])
def test_syntax_errors_name_the_file_line_and_what_was_expected(
        tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        parse_mln(path)
    assert message in e.value.problems[0].message
    assert e.value.line == line
    assert e.value.file is not None and e.value.file.endswith("p.mln")


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the file is empty"):
        parse_text(tmp_path, "# only a comment\n")


def test_any_damage_gives_a_config_error_never_a_traceback(tmp_path: Path) -> None:
    text = (DATA / "features.mln").read_text(encoding="utf-8")
    path = tmp_path / "p.mln"
    for i in range(0, len(text), 3):
        path.write_text(text[:i] + text[i + 1:], encoding="utf-8")
        try:
            parse_mln(path)
        except ConfigError:
            pass
