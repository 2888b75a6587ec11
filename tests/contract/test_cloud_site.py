"""engine.cloud.CloudSite against moto's EC2 (loopback), with a fake VPN hub and batch
system: what it records in the state DB and does in the cloud for a launch, a capacity
failover, a budget, a sweep (adoption, orphans, vanished instances) and a removal."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from elastic.engine.cloud import CloudSite  # noqa: E402
from elastic.lifecycle import State, path  # noqa: E402
from elastic.spec import load_project  # noqa: E402
from elastic.state import Store  # noqa: E402
from tests.contract.test_ec2_moto import (  # noqa: E402,F401  (fixtures)
    REGION, ami, client_error, cloud, faulty, make, moto_url, raw, session,
)

SPEC = """
project: cs
networks:
  cluster: {{cidr: 10.23.0.0/24, kind: private}}
  lan: {{cidr: 10.77.0.0/24, kind: bridged}}
classes:
  base: {{image: tiny, memory: 192M, vcpus: 1, interfaces: {{eth0: {{network: cluster}}}},
          users: {{sgeuser: {{uid: 1000}}}}}}
nodes:
  head: {{class: base, interfaces: {{eth1: {{network: lan, address: 10.77.0.23}}}}}}
  worker: {{class: base, count: 0}}
clouds:
  ec2:
    region: {region}
    endpoint_url: {url}
    image: {ami}
    instance_types: [t3.small, t3.medium]
    max_nodes: 5
    max_hourly_cost: 0.1
    prices: {{t3.small: 0.0208, t3.medium: 0.0416}}
    vpn: {{endpoint: 198.51.100.7}}
    orphan_grace: 60s
scaling:
  group: worker
  batch: {{master: head}}
  burst: [ec2]
  backoff: 30s
"""


class FakeHub:
    ifname, netns = "ewgtest0001", None

    def __init__(self) -> None:
        self.peers: dict[str, str] = {}

    def ensure(self) -> str:
        return "hubkey"

    def reconcile(self, store):
        return [], []

    def enroll(self, store, node):
        address = self.peers.setdefault(node, f"10.250.0.{len(self.peers) + 2}")
        hub = self

        class Enrolment:
            def __init__(self) -> None:
                self.node, self.address = node, f"{address}/24"

            def context(self) -> dict[str, str]:
                return {"VPN_TYPE": "wireguard", "VPN_ADDRESS": self.address,
                        "VPN_PRIVATE_KEY": "secret-of-" + node, "VPN_HUB_PUBLIC_KEY": "k",
                        "VPN_HUB_ENDPOINT": "198.51.100.7:51820", "VPN_ROUTES": "10.77.0.0/24"}
        del hub
        return Enrolment()

    def retire(self, store, node) -> None:
        self.peers.pop(node, None)


class FakeBatch:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def admit(self, name, address):
        self.calls.append(("admit", name, address))

    def route(self, destination, via):
        self.calls.append(("route", destination, via))


def move(store, project, node, to, reason):
    rec = store.get_node(project, node)
    for s in path(rec.state, to):
        store.transition(project, node, s, reason, 0.0)


@pytest.fixture
def site(tmp_path, moto_url, ami, make):
    spec = tmp_path / "cs.yaml"
    spec.write_text(SPEC.format(region=REGION, url=moto_url, ami=ami))
    project = load_project(spec)
    state = tmp_path / "state"
    with Store.open(state) as store:
        store.put_project("cs", str(spec), "0" * 64, 1.0)

    def build(wrap=None):
        provider = make(wrap=wrap, spec=project.clouds["ec2"],
                        cluster_id=f"cs-{uuid.uuid4().hex[:6]}")
        s = CloudSite(project, "ec2", state, batch=FakeBatch(), move=move, provider=provider,
                      hub=FakeHub(), master=("head", "10.77.0.23"), spec_dir=tmp_path)
        s.route_source = lambda address, netns: "10.77.0.2"
        return s
    return build, project, state


def worker(project, i):
    return next(n for n in load_project(Path(project.source), counts={"worker": i}).nodes
                if n.name == f"worker{i}")


def test_a_launch_records_the_node_and_starts_a_tagged_instance_with_its_context(site, raw):
    build, project, state = site
    s = build()
    with Store.open(state) as store:
        assert s.launch(store, project, worker(project, 1), 100.0) == ""
        rec = store.get_node("cs", "worker1")
    assert rec.state == State.BOOT and rec.site == "ec2" and rec.provider_id.startswith("i-")
    assert ("route", "10.250.0.0/24", "10.77.0.2") in s.batch.calls      # the way back
    assert ("admit", "worker1", "10.250.0.2") in s.batch.calls           # by its overlay addr
    d = raw.describe_instances(InstanceIds=[rec.provider_id])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in d["Tags"]}
    assert tags["elastic:node"] == "worker1" and tags["elastic:cluster-id"] == s.ec2.cluster_id
    assert tags["elastic:launch-token"] == rec.data["token"]
    ud = raw.describe_instance_attribute(InstanceId=rec.provider_id, Attribute="userData")
    import base64
    text = gzip.decompress(base64.b64decode(ud["UserData"]["Value"])).decode()
    assert "VPN_ADDRESS='10.250.0.2/24'" in text and "HOSTNAME='worker1'" in text
    assert "SGE_MASTER_IP='10.77.0.23'" in text


def test_a_type_without_capacity_is_skipped_by_the_next_launch(site):
    build, project, state = site
    made, wrap = faulty(lambda op, kw: client_error("InsufficientInstanceCapacity", status=500)
                        if op == "run_instances" and kw["InstanceType"] == "t3.small" else None)
    s = build(wrap)
    with Store.open(state) as store:
        assert s.launch(store, project, worker(project, 1), 100.0) == ""
        assert s.launch(store, project, worker(project, 2), 110.0) == ""
        entry = store.get_project("cs").data["clouds"]["ec2"]
    runs = [kw["InstanceType"] for op, kw in made[0].calls if op == "run_instances"]
    assert runs == ["t3.small", "t3.medium", "t3.medium"]      # the 2nd skipped t3.small
    assert entry["type_failures"]["t3.small"]["n"] == 1


def test_the_budget_limits_the_room(site):
    build, project, state = site
    s = build()
    with Store.open(state) as store:
        rooms = [s.room(store)[0]]                  # 0.1 $/h, at the dearest type that fits
        for i in range(1, 5):
            assert s.launch(store, project, worker(project, i), 100.0) == ""   # t3.small
            rooms.append(s.room(store)[0])
        n, why = s.room(store)
    assert rooms == [2, 1, 1, 1, 0], rooms
    assert "budget: 0.0832 $/h of max_hourly_cost 0.10 $/h used; no instance type fits" in why


def test_the_sweep_adopts_orphans_and_fails_what_vanished(site, raw):
    build, project, state = site
    s = build()
    with Store.open(state) as store:
        s.launch(store, project, worker(project, 1), 100.0)
        # a launch cut off after run_instances: PROLOG, a token, no instance id yet
        store.add_node("cs", "worker2", 100.0, site="ec2",
                       data={"group": "worker", "index": 2, "token": "tok-w2"})
        move(store, "cs", "worker2", State.PROLOG, "launching")
        raw.run_instances(ImageId=project.clouds["ec2"].image, MinCount=1, MaxCount=1,
                          TagSpecifications=[{"ResourceType": "instance", "Tags": [
                              {"Key": "elastic:cluster-id", "Value": s.ec2.cluster_id},
                              {"Key": "elastic:node", "Value": "worker2"},
                              {"Key": "elastic:launch-token", "Value": "tok-w2"}]}])
        # an instance of ours that nobody knows, and worker1's instance gone by hand
        raw.run_instances(ImageId=project.clouds["ec2"].image, MinCount=1, MaxCount=1,
                          TagSpecifications=[{"ResourceType": "instance", "Tags": [
                              {"Key": "elastic:cluster-id", "Value": s.ec2.cluster_id},
                              {"Key": "elastic:node", "Value": "worker9"}]}])
        w1 = store.get_node("cs", "worker1").provider_id
        raw.terminate_instances(InstanceIds=[w1])
        import time
        done = s.sweep(store, time.time() + 3600)    # long after the grace
        assert store.get_node("cs", "worker2").state == State.BOOT
        assert store.get_node("cs", "worker2").provider_id.startswith("i-")
        assert store.get_node("cs", "worker1").state == State.FAILED
    text = "\n".join(done)
    assert "adopted" in text and "worker9, which the state DB does not know" in text
    assert f"its instance {w1}" in text
    left = {i.node for i in s.ec2.instances() if i.live}
    assert left == {"worker2"}                         # the orphan is terminated


def test_destroy_terminates_retires_and_frees(site):
    build, project, state = site
    s = build()
    with Store.open(state) as store:
        s.launch(store, project, worker(project, 1), 100.0)
        iid = store.get_node("cs", "worker1").provider_id
        s.destroy(store, "worker1", "drained and idle")
        assert store.get_node("cs", "worker1").state == State.DONE
    assert "worker1" not in s.hub.peers
    assert not [i for i in s.ec2.instances() if i.id == iid and i.live]
