"""The cluster language: what a valid spec resolves to."""

from __future__ import annotations

import pytest

from elastic.addressing import mac_to_ip
from elastic.errors import ConfigError
from elastic.spec import load_project

BASE = """
project: demo
networks:
  lan: {cidr: 10.0.0.0/24, gateway: 10.0.0.1}
  storage: {cidr: 10.9.0.0/24, mac_prefix: "0a:00"}
  uplink: {cidr: 192.168.50.0/24, kind: bridged, gateway: 192.168.50.1, range: 192.168.50.100-192.168.50.120}
"""


def test_inheritance_chain_merges_nested_blocks_key_by_key(write):
    p = load_project(write("c.yaml", BASE + """
classes:
  common:
    image: tiny
    memory: 128M
    disk: 2G
    interfaces:
      eth0: {network: lan, netmask: 255.255.255.0}
    users:
      alice: {password: "$6$abc$def", groups: [wheel]}
  web:
    inherit: common
    memory: 256M
    users:
      alice: {shell: /bin/bash}
  fastweb:
    inherit: web
    vcpus: 2
nodes:
  www:
    class: fastweb
    interfaces:
      eth0: {address: 10.0.0.7}
"""))
    www = p.node("www")
    assert www.classes == ("fastweb", "web", "common")
    assert (www.image, www.memory, www.vcpus, www.disk) == ("tiny", 256, 2, 2048)
    eth0 = www.interface("eth0")
    assert eth0.address == "10.0.0.7" and eth0.netmask == "255.255.255.0"
    assert eth0.gateway == "10.0.0.1"          # from the network
    alice = www.users[0]
    assert (alice.password, alice.groups, alice.shell) == ("$6$abc$def", ("wheel",), "/bin/bash")
    assert www.fullname == "www.demo"


def test_count_names_and_auto_addresses_in_order_skipping_fixed_ones(write):
    p = load_project(write("c.yaml", BASE + """
classes:
  node: {image: tiny, interfaces: {eth0: {network: lan}}}
nodes:
  head: {class: node, interfaces: {eth0: {address: 10.0.0.3}}}
  worker: {class: node, count: 4}
  db: {class: node, count: 2, names: "db-{n:02d}", index_start: 0,
       interfaces: {eth0: {address_start: 100}}}
"""))
    addrs = {n.name: n.interface("eth0").address for n in p.nodes}
    assert addrs == {"head": "10.0.0.3", "worker1": "10.0.0.2", "worker2": "10.0.0.4",
                     "worker3": "10.0.0.5", "worker4": "10.0.0.6",
                     "db-00": "10.0.0.100", "db-01": "10.0.0.101"}
    assert [n.index for n in p.nodes if n.group == "worker"] == [1, 2, 3, 4]


def test_mac_encodes_the_address_with_the_networks_prefix_and_explicit_mac_is_kept(write):
    p = load_project(write("c.yaml", BASE + """
nodes:
  a:
    image: tiny
    interfaces:
      eth0: {network: lan, address: 10.0.0.5}
      eth1: {network: storage, address: 10.9.0.5}
      eth2: {network: uplink, mac: "02:aa:bb:cc:dd:ee"}
"""))
    a = p.node("a")
    assert a.interface("eth0").mac == "02:00:0a:00:00:05"
    assert a.interface("eth1").mac == "0a:00:0a:09:00:05"
    assert a.interface("eth2").mac == "02:aa:bb:cc:dd:ee"
    assert a.interface("eth2").address == "192.168.50.100"   # first of the range
    for iface in a.interfaces[:2]:
        assert mac_to_ip(iface.mac) == iface.address


def test_chunks_join_nodes_through_private_networks_only(write):
    p = load_project(write("c.yaml", """
project: demo
networks:
  lan: {cidr: 10.0.0.0/24}
  back: {cidr: 10.1.0.0/24}
  pub: {cidr: 192.168.50.0/24, kind: bridged}
classes:
  n: {image: tiny, memory: 100}
nodes:
  a: {class: n, interfaces: {eth0: {network: lan}}}
  b: {class: n, interfaces: {eth0: {network: lan}, eth1: {network: back}}}
  c: {class: n, interfaces: {eth0: {network: back}, eth1: {network: pub}}}
  d: {class: n, interfaces: {eth0: {network: pub}}}
  e: {class: n, host: localhost, interfaces: {eth0: {network: pub}}}
"""))
    chunks = {c.name: c for c in p.chunks}
    assert set(chunks) == {"back+lan", "d", "e"}
    assert chunks["back+lan"].nodes == ("a", "b", "c")
    assert chunks["back+lan"].memory == 300
    assert chunks["e"].host == "localhost"
    assert p.node("c").chunk == "back+lan"


def test_includes_and_variables(write):
    write("net.yaml", """
vars: {subnet: "10.5.0"}
networks:
  lan: {cidr: "${subnet}.0/24"}
""")
    write("classes/base.yaml", """
classes:
  base: {image: "${img}", memory: "${mem}", interfaces: {eth0: {network: lan}}}
""")
    p = load_project(write("c.yaml", """
project: inc
include: [net.yaml, classes/base.yaml]
vars:
  img: tiny-${subnet}
  mem: 192
nodes:
  n1: {class: base, interfaces: {eth0: {address: "${subnet}.9"}}}
"""))
    n1 = p.node("n1")
    assert (n1.image, n1.memory, n1.interface("eth0").address) == ("tiny-10.5.0", 192, "10.5.0.9")


def test_hosts_capacity_groups_and_spread(write):
    p = load_project(write("c.yaml", """
project: spread
hosts:
  h1: {uri: "qemu+tcp://10.99.0.11/system", type: qemu, memory: 4G, vcpus: 4, groups: [fast],
       reserved: {memory: 512M}}
  h2: {uri: "qemu+tcp://10.99.0.12/system", type: qemu}
networks:
  pub: {cidr: 10.99.0.0/24, kind: bridged, range: 10.99.0.100-10.99.0.200}
nodes:
  w: {image: tiny, count: 3, hosts: {h1: 2, h2: 1}, interfaces: {eth0: {network: pub}}}
  v: {image: tiny, count: 3, hosts: [h1, h2], interfaces: {eth0: {network: pub}}}
"""))
    assert [n.host for n in p.nodes] == ["h1", "h1", "h2", "h1", "h2", "h1"]
    h1 = p.host("h1")
    assert (h1.memory, h1.usable_memory, h1.domain_type, h1.groups) == (4096, 3584, "qemu", ("fast",))


def test_no_hosts_means_the_local_machine(write):
    p = load_project(write("c.yaml", "project: solo\nnodes:\n  a: {image: tiny}\n"))
    assert [h.name for h in p.hosts] == ["localhost"]
    assert p.node("a").interfaces == ()


def test_counts_override_and_prior_leases_keep_addresses(write):
    path = write("c.yaml", """
project: grow
networks: {lan: {cidr: 10.0.0.0/24}}
nodes:
  w: {image: tiny, count: 2, interfaces: {eth0: {network: lan}}}
""")
    first = load_project(path)
    assert [n.interface("eth0").address for n in first.nodes] == ["10.0.0.1", "10.0.0.2"]
    # w1 had been given .7 earlier: it keeps it, new nodes fill the gaps
    grown = load_project(path, counts={"w": 4}, leases={("w1", "eth0"): "10.0.0.7"})
    assert [n.interface("eth0").address for n in grown.nodes] == \
        ["10.0.0.7", "10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_sections_clouds_scaling_frontends_are_validated(write):
    p = load_project(write("c.yaml", """
project: full
networks: {lan: {cidr: 10.0.0.0/24}}
classes: {n: {image: tiny, interfaces: {eth0: {network: lan}}}}
nodes:
  head: {class: n}
  worker: {class: n, count: 0}
  web: {class: n, count: 1}
clouds:
  ec2:
    region: eu-north-1
    image: ami-123
    instance_types: [t3.micro, t3.small]
    max_hourly_cost: 1.5
    prices: {t3.micro: 0.01, t3.small: 0.02}
    vpn: {type: wireguard, hub: head}
scaling:
  group: worker
  batch: {master: head}
  max_workers: 20
  idle_timeout: 2m
  burst: [ec2]
frontends:
  www:
    group: web
    min: 1
    max: 5
    rules: [{metric: rps, threshold: 50, value: 1, period: 10s, period_number: 3}]
"""))
    assert p.scaling.idle_timeout == 120.0 and p.scaling.burst == ["ec2"]
    assert p.clouds["ec2"].vpn.hub == "head"
    assert p.frontends["www"].rules[0].metric == "rps"
    assert [n.name for n in p.nodes] == ["head", "web1"]


def test_several_problems_are_reported_together(write):
    with pytest.raises(ConfigError) as e:
        load_project(write("c.yaml", """
project: many
classes:
  a: {memroy: 1}
  b: {vcpus: zero}
"""))
    assert len(e.value.problems) == 2


def test_double_dollar_keeps_a_literal_dollar_brace_for_the_shell(write):
    p = load_project(write("c.yaml", """
project: sh
vars: {who: world}
nodes:
  a:
    image: tiny
    startup: ["echo ${who} $${HOME}"]
"""))
    assert p.node("a").startup == ("echo world ${HOME}",)


def test_group_members_can_be_given_exactly(write):
    path = write("c.yaml", """
project: members
networks: {lan: {cidr: 10.0.0.0/24}}
nodes:
  w: {image: tiny, count: 3, interfaces: {eth0: {network: lan}}}
""")
    leases = {("w1", "eth0"): "10.0.0.1", ("w3", "eth0"): "10.0.0.3"}
    p = load_project(path, counts={"w": [1, 3, 4]}, leases=leases)
    assert [(n.name, n.index, n.interface("eth0").address) for n in p.nodes] == \
        [("w1", 1, "10.0.0.1"), ("w3", 3, "10.0.0.3"), ("w4", 4, "10.0.0.2")]


def test_single_members_may_have_another_class(write):
    path = write("c.yaml", """
project: members
networks: {lan: {cidr: 10.0.0.0/24}}
classes:
  small: {image: tiny, memory: 128M}
  big: {inherit: small, memory: 1G, vcpus: 4}
nodes:
  w: {class: small, count: 3, vcpus: 2, interfaces: {eth0: {network: lan}}}
""")
    p = load_project(path, member_classes={"w": {2: "big"}})
    assert [(n.name, n.classes, n.memory, n.vcpus) for n in p.nodes] == [
        ("w1", ("small",), 128, 2), ("w2", ("big", "small"), 1024, 2),  # the group's vcpus win
        ("w3", ("small",), 128, 2)]
    with pytest.raises(ConfigError) as e:
        load_project(path, member_classes={"w": {2: "huge"}})
    assert "members of w were added with class 'huge'" in str(e.value)
    assert "c.yaml:7: nodes.w:" in str(e.value)
