"""Amazon EC2 through boto3: the cloud site a project bursts to.

    ec2 = EC2(spec.clouds["ec2"], project="sge", cluster_id="sge-4f2a", name="ec2")
    ec2.ensure_security_group(51820)                  # our group: only UDP 51820 open
    inst = ec2.launch("worker7", user_data, token="sge-worker7-1")   # idempotent per token
    ec2.instances()                                   # ours (tag elastic:cluster-id), not terminated
    ec2.terminate([inst.id])                          # an instance already gone is fine
    ec2.hourly_cost(ec2.instances())                  # $/h at clouds.ec2.prices

The client talks to ``spec.endpoint_url`` when given (a local moto server in tests), else
to AWS in ``spec.region``, with credentials from boto3's usual chain (environment, profile,
instance role); they are never logged. Every call has a connect and read timeout, and
botocore's own retries are off: this module decides what is retried (throttling, 5xx,
connection errors and timeouts, with exponential backoff, ``retries`` times) and turns
everything else into elastic's typed errors (``classify``):

- throttled / unavailable / unreachable, still after the retries -> ``CloudUnavailable``
  (a TransientError);
- no capacity for a type or zone -> the launch tries the next (type, zone); when none is
  left, ``CapacityError`` (a TransientError) naming each one tried and why;
- credentials refused or missing, account not allowed -> ``CloudAuthError`` (a
  PermanentError: bursting stops until a person fixes it);
- anything else -> ``EC2Refused`` (a PermanentError) with AWS's code and message.

Every public method is idempotent. Every call made here is safe to repeat: describes read;
creating a group or rule that exists is tolerated; terminating twice is fine; and
run_instances carries a ClientToken (see ``launch``). The user-data handed to ``launch``
holds the node's VPN key: it is never logged.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from elastic.errors import ElasticError, PermanentError, TransientError
from elastic.model import CloudInstance
from elastic.policy.cloud import candidates
from elastic.policy.cloud import hourly_cost as _hourly_cost

log = logging.getLogger(__name__)

T = TypeVar("T")

# Tags elastic puts on everything it makes (the cluster id is what `instances` filters on).
TAG_PROJECT = "elastic:project"
TAG_NODE = "elastic:node"
TAG_CLUSTER = "elastic:cluster-id"
TAG_TOKEN = "elastic:launch-token"

# What `instances` lists: everything but terminated. 'shutting-down' is included, with its
# state, so a caller sees an instance on its way out (CloudInstance.live is False for it).
LISTED_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")

# ---------------------------------------------------------------- error classification

THROTTLED = "throttled"        # retried with backoff, then CloudUnavailable
UNAVAILABLE = "unavailable"    # 5xx: retried with backoff, then CloudUnavailable
CONNECTION = "connection"      # no answer, timeouts: retried with backoff, then CloudUnavailable
CAPACITY = "capacity"          # next instance type / zone, then CapacityError
AUTH = "auth"                  # CloudAuthError
NOT_FOUND = "not-found"        # EC2Refused (terminate treats it as done)
DUPLICATE = "duplicate"        # EC2Refused (ensure_security_group treats it as done)
OTHER = "other"                # EC2Refused

RETRIED = frozenset({THROTTLED, UNAVAILABLE, CONNECTION})

THROTTLE_CODES = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "EC2ThrottledException",
})
UNAVAILABLE_CODES = frozenset({
    "Unavailable", "ServiceUnavailable", "InternalError", "InternalFailure",
})
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InstanceLimitExceeded", "Unsupported",
    "InsufficientFreeAddressesInSubnet", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded",
    "InsufficientCapacity", "VcpuLimitExceeded",
})
AUTH_CODES = frozenset({
    "AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "OptInRequired",
    "SignatureDoesNotMatch", "Blocked", "PendingVerification", "AccessDenied",
    "AccessDeniedException", "ExpiredToken", "RequestExpired",
})

CAPACITY_RETRY_AFTER = 300.0    # AWS capacity usually comes back within minutes
UNAVAILABLE_RETRY_AFTER = 30.0


class CloudUnavailable(TransientError):
    """EC2 throttled us, failed (5xx) or did not answer, still after our retries."""


class CapacityError(TransientError):
    """No capacity for any (instance type, zone) tried; ``tried`` says what and why."""

    def __init__(self, message: str, *, tried: Sequence[str] = (), code: str | None = None,
                 retry_after: float | None = CAPACITY_RETRY_AFTER) -> None:
        super().__init__(message, retry_after=retry_after)
        self.tried = tuple(tried)
        self.code = code


class CloudAuthError(PermanentError):
    """EC2 refused our credentials or this account may not do it: bursting stops."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class EC2Refused(PermanentError):
    """EC2 said no, and trying again will not change that. ``code`` is AWS's error code."""

    def __init__(self, message: str, code: str, aws_message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.aws_message = aws_message


def _error_code(error: BaseException) -> tuple[str, str, int | None] | None:
    """(code, message, HTTP status) of a botocore ClientError, else None."""
    response = getattr(error, "response", None)
    if not isinstance(response, Mapping) or "Error" not in response:
        return None
    err = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return str(err.get("Code", "")), str(err.get("Message", "")), status


def classify(error: BaseException) -> str:
    """What kind of failure a boto3/botocore exception is: one of THROTTLED, UNAVAILABLE,
    CONNECTION, CAPACITY, AUTH, NOT_FOUND, DUPLICATE, OTHER."""
    coded = _error_code(error)
    if coded is not None:
        code, _, status = coded
        if code in THROTTLE_CODES:
            return THROTTLED
        if code in CAPACITY_CODES:
            return CAPACITY
        if code in AUTH_CODES:
            return AUTH
        if code.endswith(".NotFound") or code.endswith("NotFoundException"):
            return NOT_FOUND
        if code.endswith(".Duplicate"):
            return DUPLICATE
        if code in UNAVAILABLE_CODES or (isinstance(status, int) and status >= 500):
            return UNAVAILABLE
        return OTHER
    try:
        from botocore import exceptions as bx
    except ImportError:   # then nothing here came from botocore
        return OTHER
    if isinstance(error, (bx.NoCredentialsError, bx.PartialCredentialsError,
                          bx.CredentialRetrievalError)):
        return AUTH
    if isinstance(error, (bx.ConnectionError, bx.HTTPClientError)):
        return CONNECTION   # EndpointConnectionError, Connect/ReadTimeoutError, closed...
    return OTHER


def _from_aws(error: BaseException) -> bool:
    """Did boto3/botocore raise this (a ClientError, a connection or credential error)?"""
    if _error_code(error) is not None:
        return True
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return False
    return isinstance(error, BotoCoreError)


def _retryable(error: BaseException) -> bool:
    return classify(error) in RETRIED


def _boto3() -> Any:   # imported lazily: boto3 is the 'cloud' extra, not every install has it
    try:
        import boto3
    except ImportError:
        raise PermanentError("boto3 is not installed (pip install 'elastic[cloud]')") from None
    return boto3


def _attempt_token(token: str, i: int) -> str:
    """The ClientToken of the i-th (type, zone) tried by one launch. Each differs: AWS
    refuses a token repeated with other parameters (IdempotentParameterMismatch)."""
    if i == 0:
        return token
    base = token if len(token) <= 60 else hashlib.sha256(token.encode()).hexdigest()[:60]
    return f"{base}.{i}"


def _instance(d: Mapping[str, Any]) -> CloudInstance:
    tags = {t["Key"]: t["Value"] for t in d.get("Tags") or ()}
    launched = d.get("LaunchTime")
    return CloudInstance(
        id=d["InstanceId"],
        node=tags.get(TAG_NODE),
        state=(d.get("State") or {}).get("Name", "unknown"),
        instance_type=d.get("InstanceType", ""),
        zone=(d.get("Placement") or {}).get("AvailabilityZone"),
        private_ip=d.get("PrivateIpAddress"),
        public_ip=d.get("PublicIpAddress"),
        launched_at=launched.timestamp() if launched is not None else 0.0,
        spot=d.get("InstanceLifecycle") == "spot",
        tags=tags,
    )


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


class EC2:
    """One cloud of a project's spec (``clouds.<name>``), for one cluster id.

    ``client`` replaces the boto3 client (tests wrap a moto-backed one to inject faults);
    ``session`` is a boto3 Session to make it from (default: a new one, boto3's credential
    chain). ``timeout`` bounds each HTTP connect and read; a throttled, failing (5xx) or
    unreachable call is tried again ``retries`` times, waiting 1, 2, 4... s (at most 20)
    through ``sleep``.
    """

    page_size = 1000    # describe_instances MaxResults per page (AWS allows 5..1000)

    def __init__(self, spec: Any, *, project: str, cluster_id: str, name: str = "ec2",
                 session: Any = None, client: Any = None, timeout: float = 30.0,
                 retries: int = 4, sleep: Callable[[float], None] = time.sleep) -> None:
        self.spec = spec
        self.project = project
        self.cluster_id = cluster_id
        self.name = name
        self.timeout = timeout
        self.retries = retries
        self._sleep = sleep
        self._group_id: str | None = None
        self._client = client if client is not None else self._make_client(session)

    def _make_client(self, session: Any) -> Any:
        boto3 = _boto3()
        from botocore.config import Config

        config = Config(connect_timeout=self.timeout, read_timeout=self.timeout,
                        # one attempt: our own policy (below) decides what is retried
                        retries={"mode": "standard", "total_max_attempts": 1},
                        user_agent_extra="elastic")
        session = session if session is not None else boto3.session.Session()
        return session.client("ec2", region_name=self.spec.region,
                              endpoint_url=self.spec.endpoint_url, config=config)

    @property
    def where(self) -> str:
        return f"EC2 {self.spec.region}" + (f" at {self.spec.endpoint_url}"
                                            if self.spec.endpoint_url else "")

    # ---------------------------------------------------------------- calls and errors

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """fn(), retried while it is throttled, failing (5xx) or unreachable; any failure
        comes out as one of elastic's errors."""
        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=1, min=1, max=20),
            retry=retry_if_exception(_retryable), sleep=self._sleep, reraise=True,
            before_sleep=lambda rs: log.info(
                "%s: %s failed (%s), try %d of %d", self.where, what,
                rs.outcome.exception() if rs.outcome else "?", rs.attempt_number,
                self.retries + 1))
        try:
            return retrying(fn)
        except ElasticError:
            raise
        except Exception as e:
            if not _from_aws(e):
                raise               # a bug of ours: not EC2's to answer for
            raise self._translate(e, what) from None

    def _translate(self, error: Exception, what: str) -> ElasticError:
        kind = classify(error)
        coded = _error_code(error)
        code, message = (coded[0], coded[1]) if coded else (type(error).__name__, str(error))
        said = f"{code}: {message}" if message else code
        if kind in RETRIED:
            how = {THROTTLED: "throttled us", UNAVAILABLE: "failed",
                   CONNECTION: "did not answer"}[kind]
            return CloudUnavailable(f"{self.where} {how} on {what}, {self.retries + 1} "
                                    f"times ({said}); try again later",
                                    retry_after=UNAVAILABLE_RETRY_AFTER)
        if kind == CAPACITY:
            return CapacityError(f"{self.where}: no capacity for {what} ({said})",
                                 tried=(f"{what}: {code}",), code=code)
        if kind == AUTH:
            return CloudAuthError(
                f"{self.where} refused {what} ({said}); bursting to clouds.{self.name} stops "
                "until the credentials or the account's permissions are fixed", code=code)
        return EC2Refused(f"{self.where} refused {what} ({said})", code, message)

    # ---------------------------------------------------------------- security group

    def _vpc_id(self) -> str:
        c = self._client
        if self.spec.subnet:
            subnets = self._call("describe_subnets", functools.partial(
                c.describe_subnets, SubnetIds=[self.spec.subnet]))["Subnets"]
            return subnets[0]["VpcId"]
        vpcs = self._call("describe_vpcs", functools.partial(
            c.describe_vpcs, Filters=[{"Name": "isDefault", "Values": ["true"]}]))["Vpcs"]
        if not vpcs:
            raise EC2Refused(f"{self.where} has no default VPC: set clouds.{self.name}.subnet "
                             "to a subnet of the VPC to use", "NoDefaultVpc")
        return vpcs[0]["VpcId"]

    def _find_group(self, name: str, vpc: str) -> dict[str, Any] | None:
        groups = self._call("describe_security_groups", functools.partial(
            self._client.describe_security_groups,
            Filters=[{"Name": "group-name", "Values": [name]},
                     {"Name": "vpc-id", "Values": [vpc]}]))["SecurityGroups"]
        return groups[0] if groups else None

    def ensure_security_group(self, port: int, protocol: str = "udp") -> str:
        """The id of the cluster's security group, made if missing: in the subnet's VPC (or
        the default VPC), named ``clouds.<name>.security_group`` (default
        ``elastic-<cluster id>``), with ``protocol``/``port`` open from anywhere and no
        other inbound rule (EC2's default outbound rule, everything, stays). A group that
        exists keeps its rules; the port is added if it lacks it. A ``security_group``
        that is an id (``sg-...``) is the user's: used as it is, never changed."""
        configured = self.spec.security_group
        if configured and configured.startswith("sg-"):
            self._group_id = configured
            return configured
        name = configured or f"elastic-{self.cluster_id}"
        vpc = self._vpc_id()
        group = self._find_group(name, vpc)
        if group is None:
            try:
                made = self._call(f"create_security_group {name}", functools.partial(
                    self._client.create_security_group, GroupName=name, VpcId=vpc,
                    Description=f"elastic {self.project}: VPN {protocol}/{port} only",
                    TagSpecifications=[{"ResourceType": "security-group",
                                        "Tags": _tag_list(self._tags())}]))
                group = {"GroupId": made["GroupId"], "IpPermissions": []}
                log.info("%s: made security group %s (%s)", self.where, name, made["GroupId"])
            except EC2Refused as e:
                if classify_code(e.code) != DUPLICATE:
                    raise
                group = self._find_group(name, vpc)   # made meanwhile by another caller
                if group is None:
                    raise
        gid = group["GroupId"]
        if not _opens(group.get("IpPermissions") or (), port, protocol):
            rule = {"IpProtocol": protocol, "FromPort": port, "ToPort": port,
                    "IpRanges": [{"CidrIp": "0.0.0.0/0",
                                  "Description": f"elastic VPN ({self.spec.vpn.type})"}]}
            try:
                self._call(f"authorize_security_group_ingress {gid}", functools.partial(
                    self._client.authorize_security_group_ingress, GroupId=gid,
                    IpPermissions=[rule]))
            except EC2Refused as e:
                if classify_code(e.code) != DUPLICATE:   # InvalidPermission.Duplicate
                    raise
        self._group_id = gid
        return gid

    def _group(self) -> str:
        if self._group_id is None:
            self.ensure_security_group(self.spec.vpn.port)
        assert self._group_id is not None
        return self._group_id

    # ---------------------------------------------------------------- instances

    def _tags(self, node: str | None = None, token: str | None = None) -> dict[str, str]:
        tags = dict(self.spec.tags)
        if node is not None:
            tags["Name"] = node
        tags[TAG_PROJECT] = self.project
        tags[TAG_CLUSTER] = self.cluster_id
        if node is not None:
            tags[TAG_NODE] = node
        if token is not None:
            tags[TAG_TOKEN] = token
        return tags

    def _by_token(self, token: str) -> CloudInstance | None:
        filters = [{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster_id]},
                   {"Name": f"tag:{TAG_TOKEN}", "Values": [token]}]
        found = self._list(filters, "describe_instances (launch token)")
        if not found:
            return None
        found.sort(key=lambda i: (not i.live, i.launched_at, i.id))
        return found[0]

    def launch(self, node: str, user_data: str | bytes, *, token: str,
               instance_types: Sequence[str] | None = None,
               zones: Sequence[str] | None = None,
               on_capacity: Callable[[str, str | None, str | None], None] | None = None,
               ) -> CloudInstance:
        """Start one instance for ``node`` and return it (usually 'pending').

        Idempotent per ``token`` (at most 64 ASCII characters, unique per launch): an
        instance already launched with it (tag ``elastic:launch-token``) is returned, in
        whatever state it is now, instead of a new one; and run_instances carries it as its
        ClientToken, so AWS itself returns the same instance when a retried request had in
        fact been carried out.

        Tries ``instance_types`` (default ``clouds.<name>.instance_types``) in order, each
        in ``zones`` in order (default ``clouds.<name>.zones``; not used with a subnet, which
        fixes the zone), moving on only when EC2 has no capacity; raises CapacityError when
        none is left. The instance gets the tags Name, elastic:project, elastic:node,
        elastic:cluster-id, elastic:launch-token and ``clouds.<name>.tags``, the cluster's
        security group, the subnet and key pair when given, spot when ``spot: true``, and
        terminates (not stops) when the guest powers off. ``on_capacity(type, zone, code)``
        is told of each (type, zone) that had no capacity.
        """
        if not token or len(token) > 64 or not token.isascii():
            raise ValueError(f"launch token {token!r}: 1 to 64 ASCII characters")
        existing = self._by_token(token)
        if existing is not None:
            log.info("%s: %s already launched as %s (%s)", self.where, node, existing.id,
                     existing.state)
            return existing
        types = list(instance_types if instance_types is not None else self.spec.instance_types)
        if self.spec.subnet:
            where: Sequence[str] = ()
        else:
            where = list(zones if zones is not None else self.spec.zones)
        group = self._group()
        tried: list[str] = []
        last: CapacityError | None = None
        for i, (itype, zone) in enumerate(candidates(types, where)):
            label = itype + (f" in {zone}" if zone else "")
            params = self._run_params(node, user_data, itype, zone, group, token,
                                      _attempt_token(token, i))
            try:
                # Retrying run_instances (on throttling, 5xx, a timeout) is safe ONLY because
                # of its ClientToken: a request that EC2 did carry out, whose answer we lost,
                # returns the same instance again instead of starting a second one.
                reply = self._call(f"run_instances ({label})", functools.partial(
                    self._client.run_instances, **params))
            except CapacityError as e:
                log.info("%s: no capacity for %s (%s), trying the next", self.where, label,
                         e.code)
                tried.append(f"{label}: {e.code}")
                last = e
                if on_capacity is not None:   # (type, zone, code): the caller backs it off
                    on_capacity(itype, zone, e.code)
                continue
            inst = _instance(reply["Instances"][0])
            log.info("%s: launched %s as %s (%s%s)", self.where, node, inst.id, label,
                     ", spot" if self.spec.spot else "")
            return inst
        if not tried:
            raise ValueError("launch: no instance type to try")
        raise CapacityError(f"{self.where}: no capacity for {node}; tried "
                            + "; ".join(tried), tried=tried,
                            code=last.code if last else None)

    def _run_params(self, node: str, user_data: str | bytes, itype: str, zone: str | None,
                    group: str, token: str, client_token: str) -> dict[str, Any]:
        tags = _tag_list(self._tags(node, token))
        params: dict[str, Any] = {
            "ImageId": self.spec.image, "MinCount": 1, "MaxCount": 1,
            "InstanceType": itype,
            "UserData": user_data,          # boto3 base64-encodes it
            "ClientToken": client_token,
            "SecurityGroupIds": [group],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
        }
        if self.spec.subnet:
            params["SubnetId"] = self.spec.subnet
        if self.spec.key_pair:
            params["KeyName"] = self.spec.key_pair
        if zone:
            params["Placement"] = {"AvailabilityZone": zone}
        if self.spec.spot:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time",
                                "InstanceInterruptionBehavior": "terminate"}}
        return params

    def _list(self, filters: list[dict[str, Any]], what: str) -> list[CloudInstance]:
        def listing() -> list[CloudInstance]:
            pages = self._client.get_paginator("describe_instances").paginate(
                Filters=filters, PaginationConfig={"PageSize": self.page_size})
            return [_instance(d) for page in pages for r in page.get("Reservations", ())
                    for d in r.get("Instances", ())]
        return self._call(what, listing)   # read-only: the whole listing may be retried

    def instances(self) -> list[CloudInstance]:
        """The cluster's instances (tag elastic:cluster-id), every page, in launch order:
        pending, running, stopping, stopped and shutting-down ones (with their state),
        never terminated ones."""
        found = self._list([{"Name": f"tag:{TAG_CLUSTER}", "Values": [self.cluster_id]},
                            {"Name": "instance-state-name", "Values": list(LISTED_STATES)}],
                           "describe_instances")
        return sorted(found, key=lambda i: (i.launched_at, i.id))

    def terminate(self, ids: Iterable[str]) -> None:
        """Terminate these instances. Ids already gone (InvalidInstanceID.NotFound) are
        fine, and so is an instance already terminated; no ids, no call."""
        remaining = sorted(set(ids))
        while remaining:
            try:
                self._call(f"terminate_instances ({len(remaining)})", functools.partial(
                    self._client.terminate_instances, InstanceIds=remaining))
                log.info("%s: terminating %s", self.where, ", ".join(remaining))
                return
            except EC2Refused as e:
                if e.code != "InvalidInstanceID.NotFound":
                    raise
                gone = set(re.findall(r"i-[0-9a-zA-Z]+", e.aws_message)) & set(remaining)
                if not gone:
                    if len(remaining) == 1:
                        return
                    for one in remaining:   # the message named none: one at a time
                        self.terminate([one])
                    return
                log.info("%s: already gone: %s", self.where, ", ".join(sorted(gone)))
                remaining = [i for i in remaining if i not in gone]

    def hourly_cost(self, instances: Iterable[CloudInstance]) -> float:
        """$/h of the billed instances at ``clouds.<name>.prices`` (ConfigError naming that
        key for a type without a price)."""
        return _hourly_cost(instances, self.spec.prices, key=f"clouds.{self.name}.prices")


def classify_code(code: str) -> str:
    """classify() for a bare AWS error code."""
    return classify(_Coded(code))


class _Coded(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code, "Message": ""}}


def _opens(permissions: Iterable[Mapping[str, Any]], port: int, protocol: str) -> bool:
    """Do these inbound rules open protocol/port to 0.0.0.0/0?"""
    for p in permissions:
        if str(p.get("IpProtocol")) not in (protocol, "-1"):
            continue
        if p.get("IpProtocol") != "-1" and not (p.get("FromPort", -1) <= port
                                                <= p.get("ToPort", -1)):
            continue
        if any(r.get("CidrIp") == "0.0.0.0/0" for r in p.get("IpRanges") or ()):
            return True
    return False
