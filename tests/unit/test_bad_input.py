"""Broken specs: each gives a clear message naming file, line and key, exit code 2, no
traceback, and nothing written to the state database.

Each case is (files, expected message fragment). The line the error must name is marked in
the spec with ``# <-``; a case without a marker expects no particular line.
"""

from __future__ import annotations

import hashlib
import sqlite3
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from elastic.cli.main import cli

GOOD_HEAD = """\
project: demo
networks:
  lan: {cidr: 10.0.0.0/24, gateway: 10.0.0.1}
classes:
  base: {image: tiny, memory: 128M, interfaces: {eth0: {network: lan}}}
"""

CASES: dict[str, tuple[dict[str, str], str]] = {
    # --- YAML itself
    "yaml-bad-indent": ({"c.yaml": """
project: demo
nodes:
  a:
    image: tiny
   memory: 1G   # <-
"""}, "YAML syntax error"),
    "yaml-unclosed-bracket": ({"c.yaml": """
project: demo
nodes:
  a: {image: tiny, memory: 1G
  b: {image: tiny}   # <-
"""}, "YAML syntax error"),
    "yaml-duplicate-key": ({"c.yaml": """
project: demo
nodes:
  a: {image: tiny}
  a: {image: tiny}   # <-
"""}, "duplicate key 'a' (first at line 3)"),
    "yaml-var-in-flow": ({"c.yaml": """
project: demo
vars: {x: y}
nodes:
  a: {image: tiny, search: [${x}]}   # <-
"""}, "quote values that use ${...}"),
    "empty-file": ({"c.yaml": "\n"}, "the file is empty"),
    "top-level-list": ({"c.yaml": "- project: demo\n"}, "the top level must be a mapping"),
    # --- sections and keys
    "unknown-section": ({"c.yaml": GOOD_HEAD + "nodess:   # <-\n  a: {class: base}\n"},
                        "unknown section 'nodess' (did you mean 'nodes'?)"),
    "missing-project": ({"c.yaml": "nodes:\n  a: {image: tiny}\n"}, "missing 'project:'"),
    "bad-project-name": ({"c.yaml": "project: my project   # <-\n"},
                         "'my project' is not a valid project name"),
    "nodes-not-mapping": ({"c.yaml": "project: demo\nnodes:   # <-\n  - a\n"},
                          "nodes: must be a mapping"),
    "unknown-class-key": ({"c.yaml": GOOD_HEAD + """
  web:
    inherit: base
    memroy: 1G   # <-
"""}, "classes.web.memroy: unknown key 'memroy' (did you mean 'memory'?)"),
    "unknown-interface-key": ({"c.yaml": GOOD_HEAD + """
nodes:
  a:
    class: base
    interfaces:
      eth0: {adress: 10.0.0.5}   # <-
"""}, "unknown key 'adress' (did you mean 'address'?)"),
    "vcpus-not-int": ({"c.yaml": GOOD_HEAD + """
nodes:
  a:
    class: base
    vcpus: two   # <-
"""}, "nodes.a.vcpus: input should be a valid integer"),
    "vcpus-zero": ({"c.yaml": GOOD_HEAD + "nodes:\n  a: {class: base, vcpus: 0}   # <-\n"},
                   "greater than or equal to 1"),
    "bad-size-unit": ({"c.yaml": GOOD_HEAD + "nodes:\n  a:\n    class: base\n    memory: 128Q   # <-\n"},
                      "bad size '128Q' (use a number with K, M, G or T"),
    "negative-size": ({"c.yaml": GOOD_HEAD + "nodes:\n  a:\n    class: base\n    disk: -5   # <-\n"},
                      "a size cannot be negative"),
    "size-is-list": ({"c.yaml": GOOD_HEAD + "nodes:\n  a:\n    class: base\n    memory: [1]   # <-\n"},
                     "expected a size such as 128M"),
    "bad-hypervisor": ({"c.yaml": GOOD_HEAD + "nodes:\n  a:\n    class: base\n    hypervisor: vmware   # <-\n"},
                       "'kvm', 'qemu' or 'xen'"),
    "bad-host-type": ({"c.yaml": "project: demo\nhosts:\n  h1: {type: uml}   # <-\n"},
                      "hosts.h1.type"),
    "bad-network-kind": ({"c.yaml": "project: demo\nnetworks:\n  lan: {cidr: 10.0.0.0/24, kind: public}   # <-\n"},
                         "'private' or 'bridged'"),
    "plaintext-password": ({"c.yaml": GOOD_HEAD + """
nodes:
  a:
    class: base
    users:
      alice: {password: secret}   # <-
"""}, "password must be a crypt(3) hash"),
    "file-content-and-source": ({"c.yaml": GOOD_HEAD + """
nodes:
  a:
    class: base
    files:
      /etc/motd: {content: hi, source: motd.txt}   # <-
"""}, "exactly one of content: or source:"),
    # --- inheritance
    "inherit-cycle": ({"c.yaml": """
project: demo
classes:
  a: {inherit: b, image: tiny}
  b: {inherit: c}
  c: {inherit: a}   # <-
nodes:
  n: {class: a}
"""}, "inheritance cycle: c -> a -> b -> c"),
    "inherit-self": ({"c.yaml": "project: demo\nclasses:\n  a: {inherit: a}   # <-\n"},
                     "inheritance cycle: a -> a"),
    "unknown-parent": ({"c.yaml": GOOD_HEAD + "  web: {inherit: bsae}   # <-\n"},
                       "unknown class 'bsae' (did you mean 'base'?)"),
    "unknown-node-class": ({"c.yaml": GOOD_HEAD + """
  webserver: {inherit: base}
nodes:
  web:
    class: webserverr   # <-
"""}, "nodes.web.class: unknown class 'webserverr' (did you mean 'webserver'?)"),
    "no-image": ({"c.yaml": "project: demo\nnodes:\n  a: {memory: 1G}   # <-\n"},
                 "no image: set image:"),
    # --- includes and variables
    "include-cycle": ({"c.yaml": "project: demo\ninclude: [a.yaml]\n",
                       "a.yaml": "include: [b.yaml]\n",
                       "b.yaml": "include: [a.yaml]   # <-\n"},
                      "include cycle: a.yaml -> b.yaml -> a.yaml"),
    "include-missing": ({"c.yaml": "project: demo\ninclude:\n  - nothere.yaml   # <-\n"},
                        "file not found"),
    "include-duplicate-class": ({"c.yaml": GOOD_HEAD.replace("project: demo\n", "project: demo\ninclude: [more.yaml]\n"),
                                 "more.yaml": "classes:\n  base: {image: other}\n"},
                                "'base' is defined twice"),
    "unknown-variable": ({"c.yaml": "project: demo\nvars: {image: tiny}\nnodes:\n  a: {image: \"${imgae}\"}   # <-\n"},
                         "unknown variable '${imgae}' (did you mean 'image'?)"),
    "variable-cycle": ({"c.yaml": "project: demo\nvars:\n  a: \"${b}\"\n  b: \"${a}\"\n"},
                       "variable cycle"),
    # --- networks and addresses
    "cidr-host-bits": ({"c.yaml": "project: demo\nnetworks:\n  lan: {cidr: 10.0.0.5/24}   # <-\n"},
                       "has host bits set (did you mean 10.0.0.0/24?)"),
    "cidr-no-prefix": ({"c.yaml": "project: demo\nnetworks:\n  lan: {cidr: 10.0.0.0}   # <-\n"},
                       "has no prefix length"),
    "cidr-missing": ({"c.yaml": "project: demo\nnetworks:\n  lan: {kind: private}   # <-\n"},
                     "missing required key 'cidr'"),
    "bad-ip": ({"c.yaml": GOOD_HEAD + "nodes:\n  a:\n    class: base\n    interfaces: {eth0: {address: 10.0.0.300}}   # <-\n"},
               "'10.0.0.300' is not an IPv4 address"),
    "bad-mac-prefix": ({"c.yaml": "project: demo\nnetworks:\n  lan: {cidr: 10.0.0.0/24, mac_prefix: \"03:00\"}   # <-\n"},
                       "is not a MAC prefix"),
    "bad-mac": ({"c.yaml": GOOD_HEAD + "nodes:\n  a:\n    class: base\n    interfaces: {eth0: {mac: \"zz:00:00:00:00:01\"}}   # <-\n"},
                "is not a unicast MAC address"),
    "gateway-outside": ({"c.yaml": "project: demo\nnetworks:\n  lan:\n    cidr: 10.0.0.0/24\n    gateway: 10.0.1.1   # <-\n"},
                        "gateway 10.0.1.1 is outside the network 10.0.0.0/24"),
    "iface-gateway-outside": ({"c.yaml": GOOD_HEAD + "nodes:\n  a:\n    class: base\n    interfaces:\n      eth0: {gateway: 192.168.1.1}   # <-\n"},
                              "gateway 192.168.1.1 is outside the network lan"),
    "range-outside": ({"c.yaml": "project: demo\nnetworks:\n  lan:\n    cidr: 10.0.0.0/24\n    range: {start: 10.0.0.10, end: 10.0.1.10}   # <-\n"},
                      "range end 10.0.1.10 is outside the network"),
    "range-backwards": ({"c.yaml": "project: demo\nnetworks:\n  lan:\n    cidr: 10.0.0.0/24\n    range: 10.0.0.50-10.0.0.10   # <-\n"},
                        "range starts at 10.0.0.50, after its end 10.0.0.10"),
    "unknown-network": ({"c.yaml": GOOD_HEAD + "nodes:\n  a:\n    class: base\n    interfaces:\n      eth1: {network: lna}   # <-\n"},
                        "unknown network 'lna' (did you mean 'lan'?)"),
    "iface-no-network": ({"c.yaml": "project: demo\nnodes:\n  a:\n    image: tiny\n    interfaces:\n      eth0: {address: 10.0.0.5}   # <-\n"},
                         "missing 'network:'"),
    "address-outside": ({"c.yaml": GOOD_HEAD + "nodes:\n  a:\n    class: base\n    interfaces:\n      eth0: {address: 10.0.1.5}   # <-\n"},
                        "address 10.0.1.5 of a.eth0 is outside the network lan (10.0.0.0/24)"),
    "address-is-gateway": ({"c.yaml": GOOD_HEAD + "nodes:\n  a:\n    class: base\n    interfaces:\n      eth0: {address: 10.0.0.1}   # <-\n"},
                           "address 10.0.0.1 is the gateway of network lan"),
    "duplicate-address": ({"c.yaml": GOOD_HEAD + """
nodes:
  a: {class: base, interfaces: {eth0: {address: 10.0.0.5}}}
  b: {class: base, interfaces: {eth0: {address: 10.0.0.5}}}   # <-
"""}, "address 10.0.0.5 of b.eth0 is already used by a.eth0"),
    "duplicate-mac": ({"c.yaml": GOOD_HEAD + """
nodes:
  a: {class: base, interfaces: {eth0: {mac: "02:00:00:00:00:01"}}}
  b: {class: base, interfaces: {eth0: {mac: "02:00:00:00:00:01"}}}   # <-
"""}, "MAC 02:00:00:00:00:01 of b.eth0 is also used by a.eth0"),
    "duplicate-mac-same-subnets": ({"c.yaml": """
project: demo
networks:
  a: {cidr: 10.0.0.0/24}
  b: {cidr: 10.0.0.0/24}
nodes:
  x: {image: tiny, interfaces: {eth0: {network: a, address: 10.0.0.5}}}
  y: {image: tiny, interfaces: {eth0: {network: b, address: 10.0.0.5}}}
"""}, "need different mac_prefix values"),
    "range-too-small": ({"c.yaml": """
project: demo
networks:
  lan: {cidr: 10.0.0.0/24, range: 10.0.0.10-10.0.0.12}
nodes:
  w: {image: tiny, count: 5, interfaces: {eth0: {network: lan}}}   # <-
"""}, "network lan has no free address left for w4.eth0: its range 10.0.0.10-10.0.0.12 holds 3"),
    "netmask-mismatch": ({"c.yaml": GOOD_HEAD + "nodes:\n  a:\n    class: base\n    interfaces:\n      eth0: {netmask: 255.255.0.0}   # <-\n"},
                         "netmask /16 differs from network lan"),
    # --- counts, names, hosts, chunks
    "count-negative": ({"c.yaml": GOOD_HEAD + "nodes:\n  w:\n    class: base\n    count: -1   # <-\n"},
                       "greater than or equal to 0"),
    "count-huge": ({"c.yaml": GOOD_HEAD + "nodes:\n  w:\n    class: base\n    count: 1000000   # <-\n"},
                   "less than or equal to 100000"),
    "count-text": ({"c.yaml": GOOD_HEAD + "nodes:\n  w:\n    class: base\n    count: many   # <-\n"},
                   "input should be a valid integer"),
    "names-without-n": ({"c.yaml": GOOD_HEAD + "nodes:\n  w:\n    class: base\n    count: 2\n    names: worker   # <-\n"},
                        "must contain {n}"),
    "duplicate-node-name": ({"c.yaml": GOOD_HEAD + """
nodes:
  w: {class: base, count: 2}
  w2: {class: base}   # <-
"""}, "node name 'w2' is already used by nodes.w"),
    "bad-node-name": ({"c.yaml": GOOD_HEAD + "nodes:\n  web_1: {class: base}   # <-\n"},
                      "'web_1' is not a valid host name"),
    "unknown-fixed-host": ({"c.yaml": "project: demo\nhosts:\n  node1: {}\nnodes:\n  a:\n    image: tiny\n    host: nod1   # <-\n"},
                           "unknown host 'nod1' (did you mean 'node1'?)"),
    "spread-sum-mismatch": ({"c.yaml": "project: demo\nhosts:\n  h1: {}\n  h2: {}\nnodes:\n  w:\n    image: tiny\n    count: 3\n    hosts: {h1: 1, h2: 1}   # <-\n"},
                            "hosts: places 2 nodes but count is 3"),
    "chunk-two-hosts": ({"c.yaml": """
project: demo
hosts: {h1: {}, h2: {}}
networks: {lan: {cidr: 10.0.0.0/24}}
nodes:
  a: {image: tiny, host: h1, interfaces: {eth0: {network: lan}}}   # <-
  b: {image: tiny, host: h2, interfaces: {eth0: {network: lan}}}
"""}, "chunk lan joins nodes fixed to different hosts (a on h1, b on h2)"),
    "chunk-too-big-for-host": ({"c.yaml": """
project: demo
hosts: {h1: {memory: 1G}}
nodes:
  a: {image: tiny, host: h1, memory: 2G}   # <-
"""}, "chunk a needs 2048 MiB but host h1 has 1024 MiB"),
    "reserved-all-memory": ({"c.yaml": "project: demo\nhosts:\n  h1:\n    memory: 1G\n    reserved: {memory: 1G}   # <-\n"},
                            "leaves nothing of the host's 1024 MiB"),
    # --- later sections
    "scaling-unknown-group": ({"c.yaml": GOOD_HEAD + """
nodes:
  head: {class: base}
  worker: {class: base, count: 0}
scaling:
  group: wroker   # <-
  batch: {master: head}
"""}, "unknown node group 'wroker' (did you mean 'worker'?)"),
    "scaling-min-above-max": ({"c.yaml": GOOD_HEAD + """
nodes:
  head: {class: base}
  worker: {class: base, count: 0}
scaling:   # <-
  group: worker
  batch: {master: head}
  min_workers: 5
  max_workers: 2
"""}, "min_workers (5) is above max_workers (2)"),
    "scaling-group-without-count": ({"c.yaml": GOOD_HEAD + """
nodes:
  head: {class: base}
scaling:
  group: head   # <-
  batch: {master: head}
"""}, "nodes.head has no count:"),
    "scaling-bad-duration": ({"c.yaml": GOOD_HEAD + """
nodes:
  head: {class: base}
  worker: {class: base, count: 0}
scaling:
  group: worker
  batch: {master: head}
  idle_timeout: soon   # <-
"""}, "bad duration 'soon'"),
    "cloud-missing-region": ({"c.yaml": "project: demo\nclouds:\n  ec2:   # <-\n    image: ami-1\n    instance_types: [t3.micro]\n"},
                             "clouds.ec2.region: missing required key 'region'"),
    "cloud-budget-without-prices": ({"c.yaml": "project: demo\nclouds:\n  ec2:   # <-\n    region: r\n    image: ami-1\n    instance_types: [t3.micro]\n    max_hourly_cost: 2\n"},
                                    "missing: t3.micro"),
    "cloud-unknown-burst": ({"c.yaml": GOOD_HEAD + """
nodes:
  head: {class: base}
  worker: {class: base, count: 0}
scaling:
  group: worker
  batch: {master: head}
  burst:
    - aws   # <-
"""}, "unknown cloud 'aws'"),
    "frontend-bounds": ({"c.yaml": GOOD_HEAD + """
nodes:
  web: {class: base, count: 1}
frontends:
  www:   # <-
    group: web
    min: 3
    max: 2
"""}, "need min <= initial <= max"),
    "frontend-balancer-on-a-node": ({"c.yaml": GOOD_HEAD + """
nodes:
  head: {class: base}
  web: {class: base, count: 1}
frontends:
  www:
    group: web
    balancer:
      node: head   # <-
"""}, "frontends.www.balancer.node: only 'controller' for now"),
    "frontend-group-sized-twice": ({"c.yaml": GOOD_HEAD + """
nodes:
  head: {class: base}
  web: {class: base, count: 1}
scaling:
  group: web
  batch: {master: head}
frontends:
  www:
    group: web   # <-
"""}, "nodes.web is already sized by scaling.group"),
    "frontend-rule-changes-nothing": ({"c.yaml": GOOD_HEAD + """
nodes:
  web: {class: base, count: 1}
frontends:
  www:
    group: web
    rules:
      - {metric: rps, threshold: 10, value: 0}   # <-
"""}, "change 0 changes nothing"),
    # --- MLN
    "requirements-syntax": ({"c.yaml": GOOD_HEAD + """
nodes:
  a:
    class: base
    requirements: 'memory_free >> 2048'   # <-
"""}, "nodes.a.requirements: unexpected '>' at column 14 in 'memory_free >> 2048'"),
    "requirements-unknown-attribute": ({"c.yaml": GOOD_HEAD + """
  picky: {inherit: base, requirements: 'rakc == "r1"'}   # <-
hosts:
  h1: {attributes: {rack: r1}}
nodes:
  a: {class: picky}
"""}, "unknown host attribute 'rakc' in 'rakc == \"r1\"' (did you mean 'rack'?)"),
    "rank-syntax": ({"c.yaml": GOOD_HEAD + """
placement:
  policy: striping
  rank: 'memory_free -'   # <-
nodes:
  a: {class: base}
"""}, "placement.rank: 'memory_free -' ends too soon"),
    "placement-unknown-policy": ({"c.yaml": GOOD_HEAD + """
placement: {policy: spread}   # <-
nodes:
  a: {class: base}
"""}, "placement.policy"),
    "anti-affinity-unknown": ({"c.yaml": GOOD_HEAD + """
nodes:
  web:
    class: base
    count: 2
    anti_affinity: [webb]   # <-
"""}, "nodes.web.anti_affinity: unknown node, group or class 'webb' (did you mean 'web'?)"),
    "rebalance-thresholds": ({"c.yaml": GOOD_HEAD + """
rebalance: {cpu_high: 0.2, cpu_low: 0.5}   # <-
nodes:
  a: {class: base}
"""}, "cpu_low (0.5) must be below cpu_high (0.2)"),
    "mln-unbalanced": ({"c.mln": """
global { project demo }
host a {   # <-
  memory 128M
"""}, "c.mln"),
    "mln-stray-brace": ({"c.mln": "global { project demo }\n}   # <-\n"}, "c.mln"),
}


def _expected_line(text: str) -> int | None:
    for i, line in enumerate(textwrap.dedent(text).lstrip("\n").splitlines(), 1):
        if "# <-" in line:
            return i
    return None


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A state dir holding a project with leases, to show that bad input changes nothing."""
    from elastic.state import Store
    d = tmp_path / "state"
    with Store.open(d) as store:
        store.put_project("demo", "c.yaml", "0" * 64, 1000.0)
        store.add_node("demo", "a", 1000.0)
        store.lease("demo", "lan", "10.0.0.5", "a", "eth0", "02:00:0a:00:00:05", 1000.0)
    return d


def _snapshot(d: Path) -> tuple[list[str], str]:
    """The files of the state dir (but SQLite's own -wal/-shm) and the database's content."""
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*")
                   if p.is_file() and not p.name.endswith(("-wal", "-shm")))
    conn = sqlite3.connect(d / "elastic.db")
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    return files, hashlib.sha256(dump.encode()).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case: str, write, state_dir: Path) -> None:
    files, fragment = CASES[case]
    paths = [write(name, text) for name, text in files.items()]
    main = paths[0]
    marked = [(name, _expected_line(text)) for name, text in files.items()
              if _expected_line(text) is not None]
    before = _snapshot(state_dir)
    for command in ("validate", "plan"):
        result = CliRunner().invoke(cli, ["--state-dir", str(state_dir), command, str(main)])
        err = result.stderr if hasattr(result, "stderr") else result.output
        assert result.exit_code == 2, f"{command}: exit {result.exit_code}\n{result.output}"
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert fragment in err, err
        for name, line in marked:
            assert f"{name}:{line}:" in err, f"expected {name}:{line}: in\n{err}"
        assert "nothing was changed" in err
    assert _snapshot(state_dir) == before


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40
