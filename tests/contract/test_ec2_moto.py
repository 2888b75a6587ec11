"""The EC2 provider against moto's EC2 server on 127.0.0.1 (never AWS): security group,
launch (tags, user-data, ClientToken), listing, terminate, and the error policy (capacity
failover, throttling retried, auth refused, a dead endpoint), the faults injected by a thin
wrapper around the real moto-backed client."""

from __future__ import annotations

import base64
import logging
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from botocore.exceptions import (  # noqa: E402
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from moto.server import ThreadedMotoServer  # noqa: E402

from elastic.adapters.providers import ec2 as ec2mod  # noqa: E402
from elastic.adapters.providers.ec2 import (  # noqa: E402
    EC2,
    CapacityError,
    CloudAuthError,
    CloudUnavailable,
    EC2Refused,
    classify,
)
from elastic.errors import ConfigError, PermanentError, TransientError  # noqa: E402
from elastic.spec.schema import CloudSpec  # noqa: E402

REGION = "us-east-1"
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_url():
    """moto's EC2 on a free loopback port, for the whole session; fake credentials only."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in FAKE_ENV.items():
            mp.setenv(k, v)
        mp.delenv("AWS_PROFILE", raising=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def session(moto_url):
    return boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                         region_name=REGION)


@pytest.fixture(scope="session")
def raw(session, moto_url):
    """A plain client on moto, for looking behind the provider's back."""
    return session.client("ec2", endpoint_url=moto_url)


@pytest.fixture(scope="session")
def ami(raw) -> str:
    return raw.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]


@pytest.fixture
def cloud(moto_url, ami) -> Callable[..., CloudSpec]:
    def make(**kw: Any) -> CloudSpec:
        base: dict[str, Any] = {
            "region": REGION, "endpoint_url": moto_url, "image": ami,
            "instance_types": ["t3.small", "t3.medium"], "tags": {"team": "hpc"},
            "prices": {"t3.small": 0.0208, "t3.medium": 0.0416},
        }
        return CloudSpec(**{**base, **kw})
    return make


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def make(cloud, session) -> Callable[..., EC2]:
    """make(client_wrapper=None, spec=None, **EC2 kwargs) -> EC2 for a fresh cluster id."""

    def _make(wrap: Callable[[Any], Any] | None = None, spec: CloudSpec | None = None,
              cluster_id: str | None = None, **kw: Any) -> EC2:
        spec = spec or cloud()
        client = None
        if wrap is not None:
            client = wrap(EC2(spec, project="p", cluster_id="x", session=session)._client)
        kw.setdefault("sleep", Sleeps())
        return EC2(spec, project="proj", cluster_id=cluster_id or f"c-{uuid.uuid4().hex[:8]}",
                   session=session, client=client, **kw)
    return _make


def client_error(code: str, message: str = "injected", status: int = 400,
                 op: str = "RunInstances") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, op)


class Faulty:
    """The real client, but ``fail(operation, kwargs)`` may return an error to raise
    instead of calling it. ``calls`` records (operation, kwargs)."""

    def __init__(self, real: Any, fail: Callable[[str, dict], Exception | None]) -> None:
        self._real = real
        self._fail = fail
        self.calls: list[tuple[str, dict]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._real, name)
        if name.startswith("_") or name in ("meta", "get_paginator") or not callable(attr):
            return attr

        def call(**kw: Any) -> Any:
            self.calls.append((name, kw))
            err = self._fail(name, kw)
            if err is not None:
                raise err
            return attr(**kw)
        return call

    def ops(self, name: str) -> list[dict]:
        return [kw for op, kw in self.calls if op == name]


def faulty(fail: Callable[[str, dict], Exception | None]) -> tuple[list[Faulty], Callable]:
    made: list[Faulty] = []

    def wrap(real: Any) -> Faulty:
        made.append(Faulty(real, fail))
        return made[-1]
    return made, wrap


# ------------------------------------------------------------------------- security group

def test_security_group_opens_only_the_vpn_port_and_is_idempotent(make, raw):
    ec2 = make()
    gid = ec2.ensure_security_group(51820)
    group = raw.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    default_vpc = raw.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])
    assert group["GroupName"] == f"elastic-{ec2.cluster_id}"
    assert group["VpcId"] == default_vpc["Vpcs"][0]["VpcId"]
    perms = group["IpPermissions"]
    assert len(perms) == 1
    assert perms[0]["IpProtocol"] == "udp"
    assert (perms[0]["FromPort"], perms[0]["ToPort"]) == (51820, 51820)
    assert [r["CidrIp"] for r in perms[0]["IpRanges"]] == ["0.0.0.0/0"]
    assert not perms[0].get("UserIdGroupPairs") and not perms[0].get("Ipv6Ranges")
    tags = {t["Key"]: t["Value"] for t in group.get("Tags", [])}
    assert tags["elastic:cluster-id"] == ec2.cluster_id

    assert ec2.ensure_security_group(51820) == gid
    again = make(cluster_id=ec2.cluster_id)       # a new controller: no cache
    assert again.ensure_security_group(51820) == gid
    group = raw.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    assert len(group["IpPermissions"]) == 1


def test_security_group_made_meanwhile_by_someone_else_is_fine(make, raw):
    first = make()
    gid = first.ensure_security_group(51820)
    # the second controller's lookup misses it (it was being made), its create is Duplicate
    made, wrap = faulty(lambda op, kw: None)
    second = make(wrap=wrap, cluster_id=first.cluster_id)
    real_find = second._find_group
    calls = {"n": 0}

    def find(name, vpc):
        calls["n"] += 1
        return None if calls["n"] == 1 else real_find(name, vpc)

    second._find_group = find
    assert second.ensure_security_group(51820) == gid
    assert made[0].ops("create_security_group")     # it tried, got Duplicate, found it


def test_named_security_group_in_the_subnets_vpc_and_own_group_id(make, cloud, raw):
    vpc = raw.create_vpc(CidrBlock="10.91.0.0/16")["Vpc"]["VpcId"]
    subnet = raw.create_subnet(VpcId=vpc, CidrBlock="10.91.1.0/24")["Subnet"]["SubnetId"]
    name = f"burst-{uuid.uuid4().hex[:6]}"
    ec2 = make(spec=cloud(subnet=subnet, security_group=name))
    gid = ec2.ensure_security_group(1194)
    group = raw.describe_security_groups(GroupIds=[gid])["SecurityGroups"][0]
    assert (group["GroupName"], group["VpcId"]) == (name, vpc)
    assert [(p["IpProtocol"], p["FromPort"]) for p in group["IpPermissions"]] == [("udp", 1194)]

    own = raw.create_security_group(GroupName=f"own-{uuid.uuid4().hex[:6]}",
                                    Description="the user's", VpcId=vpc)["GroupId"]
    assert make(spec=cloud(security_group=own)).ensure_security_group(51820) == own
    assert raw.describe_security_groups(GroupIds=[own])["SecurityGroups"][0]["IpPermissions"] == []


def test_unknown_subnet_is_refused_with_the_aws_code(make, cloud):
    ec2 = make(spec=cloud(subnet="subnet-0000000000000dead"))
    with pytest.raises(EC2Refused) as e:
        ec2.ensure_security_group(51820)
    assert e.value.code == "InvalidSubnetID.NotFound"
    assert "InvalidSubnetID.NotFound" in str(e.value)
    assert isinstance(e.value, PermanentError)


# ------------------------------------------------------------------------------- launch

def test_launch_tags_user_data_group(make, cloud, raw):
    ec2 = make()
    script = "#!/bin/sh\n# wg private key stays here\necho joined > /tmp/x\n"
    inst = ec2.launch("worker7", script, token="t-worker7-1")
    assert inst.id.startswith("i-")
    assert inst.node == "worker7"
    assert inst.instance_type == "t3.small"
    assert inst.state in ("pending", "running")
    assert not inst.spot
    assert inst.tags["Name"] == "worker7"
    assert inst.tags["elastic:project"] == "proj"
    assert inst.tags["elastic:node"] == "worker7"
    assert inst.tags["elastic:cluster-id"] == ec2.cluster_id
    assert inst.tags["team"] == "hpc"
    assert inst.launched_at > 0

    attr = raw.describe_instance_attribute(InstanceId=inst.id, Attribute="userData")
    assert base64.b64decode(attr["UserData"]["Value"]).decode() == script
    d = raw.describe_instances(InstanceIds=[inst.id])["Reservations"][0]["Instances"][0]
    assert [g["GroupId"] for g in d["SecurityGroups"]] == [ec2.ensure_security_group(51820)]
    assert d["ImageId"] == ec2.spec.image


def test_launch_with_subnet_key_pair_and_spot(make, cloud, raw):
    subnet = raw.describe_subnets(Filters=[{"Name": "default-for-az",
                                            "Values": ["true"]}])["Subnets"][0]
    key = f"k-{uuid.uuid4().hex[:6]}"
    raw.create_key_pair(KeyName=key)
    ec2 = make(spec=cloud(subnet=subnet["SubnetId"], key_pair=key, spot=True,
                          zones=["us-east-1x"]))     # zones: not used with a subnet
    inst = ec2.launch("w1", "#!/bin/sh\n", token="t-w1")
    d = raw.describe_instances(InstanceIds=[inst.id])["Reservations"][0]["Instances"][0]
    assert d["SubnetId"] == subnet["SubnetId"]
    assert d["KeyName"] == key
    assert inst.spot
    assert inst.zone == subnet["AvailabilityZone"]


def test_same_token_same_instance(make):
    made, wrap = faulty(lambda op, kw: None)
    ec2 = make(wrap=wrap)
    first = ec2.launch("w1", "#!/bin/sh\n", token="tok-1")
    again = ec2.launch("w1", "#!/bin/sh\n", token="tok-1")
    assert again.id == first.id
    assert [i.id for i in ec2.instances()] == [first.id]
    assert len(made[0].ops("run_instances")) == 1
    other = ec2.launch("w1", "#!/bin/sh\n", token="tok-2")   # a new launch of the node
    assert other.id != first.id
    with pytest.raises(ValueError):
        ec2.launch("w1", "", token="x" * 65)


# ---------------------------------------------------------------------- list, terminate

def test_listing_pages_and_filters_by_cluster(make, raw):
    a, b = make(), make()
    a.page_size = 5
    mine = [a.launch(f"a{n}", "", token=f"a{n}").id for n in range(7)]
    theirs = [b.launch(f"b{n}", "", token=f"b{n}").id for n in range(3)]
    pages = []
    a._client.meta.events.register("before-call.ec2.DescribeInstances",
                                   lambda **kw: pages.append(1))
    listed = a.instances()
    assert sorted(i.id for i in listed) == sorted(mine)
    assert len(pages) == 2                       # 5 + 2: the paginator went on
    assert {i.node for i in listed} == {f"a{n}" for n in range(7)}
    assert sorted(i.id for i in b.instances()) == sorted(theirs)

    a.terminate(mine[:2])
    assert sorted(i.id for i in a.instances()) == sorted(mine[2:])   # terminated: not listed


def test_terminate_is_idempotent(make):
    made, wrap = faulty(lambda op, kw: None)
    ec2 = make(wrap=wrap)
    x = ec2.launch("w1", "", token="w1").id
    y = ec2.launch("w2", "", token="w2").id
    ec2.terminate([x])
    ec2.terminate([x])                                        # terminated already
    ec2.terminate([x, y, "i-0123456789abcdef0"])              # one never existed
    ec2.terminate(["i-0fedcba987654321f"])
    assert ec2.instances() == []
    before = len(made[0].calls)
    ec2.terminate([])
    assert len(made[0].calls) == before                       # no ids, no call


def test_hourly_cost_uses_prices_and_names_the_key(make, cloud):
    ec2 = make()
    ec2.launch("w1", "", token="w1")
    ec2.launch("w2", "", token="w2", instance_types=["t3.medium"])
    assert ec2.hourly_cost(ec2.instances()) == pytest.approx(0.0624)
    cheap = make(spec=cloud(prices={"t3.small": 0.02}), cluster_id=ec2.cluster_id)
    cheap.name = "burst"
    with pytest.raises(ConfigError) as e:
        cheap.hourly_cost(cheap.instances())
    assert e.value.key == "clouds.burst.prices"
    assert "t3.medium" in str(e.value)


# -------------------------------------------------------------------------- error policy

def test_capacity_fails_over_to_the_next_type(make):
    made, wrap = faulty(lambda op, kw: client_error("InsufficientInstanceCapacity")
                        if op == "run_instances" and kw["InstanceType"] == "t3.small" else None)
    ec2 = make(wrap=wrap)
    told: list[tuple] = []
    inst = ec2.launch("w1", "", token="w1-tok", on_capacity=lambda *a: told.append(a))
    assert inst.instance_type == "t3.medium"
    assert told == [("t3.small", None, "InsufficientInstanceCapacity")]
    runs = made[0].ops("run_instances")
    assert [r["InstanceType"] for r in runs] == ["t3.small", "t3.medium"]
    assert runs[0]["ClientToken"] == "w1-tok" and runs[1]["ClientToken"] != "w1-tok"
    assert ec2._sleep == []                                    # failover does not wait


def test_capacity_fails_over_across_zones(make, cloud):
    def fail(op, kw):
        if op == "run_instances" and kw["Placement"]["AvailabilityZone"] == "us-east-1a":
            return client_error("Unsupported", "not in this zone")
        return None

    made, wrap = faulty(fail)
    ec2 = make(wrap=wrap, spec=cloud(zones=["us-east-1a", "us-east-1b"]))
    inst = ec2.launch("w1", "", token="w1")
    assert (inst.instance_type, inst.zone) == ("t3.small", "us-east-1b")


def test_capacity_exhausted_names_what_was_tried(make):
    made, wrap = faulty(lambda op, kw: client_error("InsufficientInstanceCapacity")
                        if op == "run_instances" else None)
    ec2 = make(wrap=wrap)
    with pytest.raises(CapacityError) as e:
        ec2.launch("w1", "", token="w1")
    assert isinstance(e.value, TransientError) and e.value.retry_after
    assert "t3.small" in str(e.value) and "t3.medium" in str(e.value)
    assert len(e.value.tried) == 2
    assert ec2.instances() == []


def test_throttling_is_retried_with_backoff(make):
    left = {"n": 2}

    def fail(op, kw):
        if op == "run_instances" and left["n"]:
            left["n"] -= 1
            return client_error("RequestLimitExceeded", "slow down")
        return None

    made, wrap = faulty(fail)
    ec2 = make(wrap=wrap)
    inst = ec2.launch("w1", "", token="w1")
    runs = made[0].ops("run_instances")
    assert len(runs) == 3
    assert {r["ClientToken"] for r in runs} == {"w1"}          # the retry is the same request
    assert len(ec2._sleep) == 2 and ec2._sleep[0] < ec2._sleep[1]
    assert [i.id for i in ec2.instances()] == [inst.id]


def test_throttling_that_does_not_stop_is_transient(make):
    made, wrap = faulty(lambda op, kw: client_error("Unavailable", "busy", 503)
                        if op == "run_instances" else None)
    ec2 = make(wrap=wrap, retries=2)
    with pytest.raises(CloudUnavailable) as e:
        ec2.launch("w1", "", token="w1")
    assert isinstance(e.value, TransientError)
    assert len(made[0].ops("run_instances")) == 3
    assert "Unavailable" in str(e.value)


def test_auth_error_stops_bursting(make):
    made, wrap = faulty(lambda op, kw: client_error("AuthFailure", "AWS was not able to "
                                                    "validate the provided access credentials")
                        if op == "run_instances" else None)
    ec2 = make(wrap=wrap)
    with pytest.raises(CloudAuthError) as e:
        ec2.launch("w1", "", token="w1")
    assert isinstance(e.value, PermanentError)
    assert "AuthFailure" in str(e.value) and "bursting" in str(e.value)
    assert len(made[0].ops("run_instances")) == 1               # not retried, no failover
    assert ec2._sleep == []


def test_dead_endpoint_is_transient_and_quick(cloud, session):
    port = free_port()                          # nothing listens there
    spec = cloud(endpoint_url=f"http://127.0.0.1:{port}")
    sleeps = Sleeps()
    ec2 = EC2(spec, project="p", cluster_id="c", session=session, timeout=0.5, retries=2,
              sleep=sleeps)
    t = time.monotonic()
    with pytest.raises(CloudUnavailable) as e:
        ec2.instances()
    assert time.monotonic() - t < 5
    assert isinstance(e.value, TransientError) and e.value.retry_after
    assert len(sleeps) == 2
    assert "did not answer" in str(e.value)


def test_a_bug_of_ours_is_not_blamed_on_ec2(make):
    made, wrap = faulty(lambda op, kw: KeyError("oops") if op == "run_instances" else None)
    with pytest.raises(KeyError):
        make(wrap=wrap).launch("w1", "", token="w1")


# ---------------------------------------------------------------------- classification

@pytest.mark.parametrize(("code", "status", "kind"), [
    ("RequestLimitExceeded", 503, ec2mod.THROTTLED),
    ("Throttling", 400, ec2mod.THROTTLED),
    ("ThrottlingException", 400, ec2mod.THROTTLED),
    ("Unavailable", 503, ec2mod.UNAVAILABLE),
    ("InternalError", 500, ec2mod.UNAVAILABLE),
    ("SomethingNew", 502, ec2mod.UNAVAILABLE),
    ("InsufficientInstanceCapacity", 500, ec2mod.CAPACITY),
    ("InstanceLimitExceeded", 400, ec2mod.CAPACITY),
    ("Unsupported", 400, ec2mod.CAPACITY),
    ("InsufficientFreeAddressesInSubnet", 400, ec2mod.CAPACITY),
    ("SpotMaxPriceTooLow", 400, ec2mod.CAPACITY),
    ("MaxSpotInstanceCountExceeded", 400, ec2mod.CAPACITY),
    ("AuthFailure", 401, ec2mod.AUTH),
    ("UnauthorizedOperation", 403, ec2mod.AUTH),
    ("InvalidClientTokenId", 403, ec2mod.AUTH),
    ("OptInRequired", 403, ec2mod.AUTH),
    ("SignatureDoesNotMatch", 403, ec2mod.AUTH),
    ("Blocked", 403, ec2mod.AUTH),
    ("InvalidInstanceID.NotFound", 400, ec2mod.NOT_FOUND),
    ("InvalidGroup.Duplicate", 400, ec2mod.DUPLICATE),
    ("InvalidAMIID.Malformed", 400, ec2mod.OTHER),
    ("IdempotentParameterMismatch", 400, ec2mod.OTHER),
])
def test_classify_client_errors(code, status, kind):
    assert classify(client_error(code, status=status)) == kind


def test_classify_connection_and_credential_errors():
    url = "http://127.0.0.1:9/"
    assert classify(EndpointConnectionError(endpoint_url=url)) == ec2mod.CONNECTION
    assert classify(ConnectTimeoutError(endpoint_url=url)) == ec2mod.CONNECTION
    assert classify(ReadTimeoutError(endpoint_url=url)) == ec2mod.CONNECTION
    assert classify(NoCredentialsError()) == ec2mod.AUTH
    assert classify(ValueError("x")) == ec2mod.OTHER
