"""The cluster's network: names, subnet, bridge, veths and network namespaces.

Node K >= 1 lives in the namespace ``<name>-nodeK`` behind the veth ``<name>-vK``, at host
number 10 + K of a private /24; the bridge ``<name>-br`` in the root namespace holds the
subnet's first address (the head's). The namespaces get no default route, so nothing sent
from them can leave the machine. Everything here runs ``ip`` (iproute2) and needs root.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lsio_ray.deploy.local_cluster.state import ClusterError, ClusterState

DEFAULT_POOL = "10.213.0.0/16"
"""Private range the /24 subnets are picked from, skipping any the host already routes."""
WORKER_HOST_OFFSET = 10
"""Node K >= 1 gets host number 10 + K of the subnet; the head has the bridge's .1."""


def run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (60 s at most), its output captured as text.

    Raises:
        ClusterError: ``check`` and the command failed.
    """
    proc = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        raise ClusterError(f"`{' '.join(args)}` failed with status {proc.returncode}: {msg}")
    return proc


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = run(["ip", "-j", *args]).stdout.strip()
    return json.loads(out) if out else []


def netns_name(name: str, k: int) -> str:
    """Network namespace of node ``k`` of cluster ``name``."""
    return f"{name}-node{k}"


def veth_name(name: str, k: int) -> str:
    """Root-namespace end of node ``k``'s veth pair."""
    return f"{name}-v{k}"


def bridge_name(name: str) -> str:
    """The cluster's bridge in the root namespace."""
    return f"{name}-br"


def our_netns(name: str) -> list[str]:
    """Existing network namespaces of cluster ``name``."""
    pattern = re.compile(rf"{re.escape(name)}-node\d+")
    return sorted(ns["name"] for ns in _ip_json("netns", "list") if pattern.fullmatch(ns["name"]))


def our_links(name: str) -> list[str]:
    """Existing links (bridge, veths) of cluster ``name`` in the root namespace."""
    pattern = re.compile(rf"{re.escape(name)}-(br|v\d+)")
    return sorted(
        ln["ifname"] for ln in _ip_json("link", "show") if pattern.fullmatch(ln["ifname"])
    )


def link_bytes(link: str) -> int:
    """Bytes received plus sent so far by the root-namespace link ``link`` (a node's
    veth end): every byte between that node and any other node passes it."""
    stats = Path("/sys/class/net", link, "statistics")
    return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())


def netns_pids(netns: str) -> set[int]:
    """Processes in the network namespace ``netns`` (``ip netns pids``)."""
    out = run(["ip", "netns", "pids", netns], check=False).stdout
    return {int(p) for p in out.split() if p.isdigit()}


def _used_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks the host already routes or holds addresses in (default route aside)."""
    used: list[ipaddress.IPv4Network] = []
    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = route.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(dst, strict=False))
    for link in _ip_json("-4", "addr", "show"):
        for addr in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                used.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", False))
    return used


def pick_subnet(subnet: str | None, nodes: int) -> ipaddress.IPv4Network:
    """``subnet`` checked against the host's networks, or the first free /24 of
    :data:`DEFAULT_POOL`; room for ``nodes`` nodes either way."""
    used = _used_networks()
    if subnet is not None:
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            raise ClusterError(f"bad subnet {subnet!r}: {exc}") from None
        if not net.is_private:
            raise ClusterError(f"subnet {net} is not a private range; use e.g. 10.213.0.0/24")
        if net.num_addresses - 2 < WORKER_HOST_OFFSET + nodes:
            raise ClusterError(f"subnet {net} is too small for {nodes} nodes")
        clash = sorted({str(u) for u in used if u.overlaps(net)})
        if clash:
            raise ClusterError(f"subnet {net} overlaps networks in use on this host: {clash}")
        return net
    if nodes > 254 - WORKER_HOST_OFFSET:
        raise ClusterError(f"at most {254 - WORKER_HOST_OFFSET} nodes fit a /24")
    for net in ipaddress.IPv4Network(DEFAULT_POOL).subnets(new_prefix=24):
        if not any(u.overlaps(net) for u in used):
            return net
    raise ClusterError(f"no free /24 left in {DEFAULT_POOL}; pass subnet= explicitly")


def create_network(st: ClusterState) -> None:
    """The bridge with the head's address, and one namespace and veth per worker node."""
    prefix = ipaddress.IPv4Network(st.subnet).prefixlen
    run(["ip", "link", "add", st.bridge, "type", "bridge"])
    run(["ip", "addr", "add", f"{st.bridge_ip}/{prefix}", "dev", st.bridge])
    run(["ip", "link", "set", st.bridge, "up"])
    for node in st.nodes[1:]:
        assert node.netns is not None and node.veth is not None
        run(["ip", "netns", "add", node.netns])
        run(["ip", "link", "add", node.veth, "type", "veth", "peer", "name", "eth0",
             "netns", node.netns])  # fmt: skip
        run(["ip", "link", "set", node.veth, "master", st.bridge, "up"])
        run(["ip", "-n", node.netns, "addr", "add", f"{node.ip}/{prefix}", "dev", "eth0"])
        run(["ip", "-n", node.netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", node.netns, "link", "set", "lo", "up"])


def delete_network(name: str) -> None:
    """Delete the veths, namespaces and bridge of cluster ``name`` (what exists of them)."""
    for link in our_links(name):
        if link != bridge_name(name):
            run(["ip", "link", "del", link], check=False)
    for ns in our_netns(name):
        run(["ip", "netns", "del", ns], check=False)
    if bridge_name(name) in our_links(name):
        run(["ip", "link", "del", bridge_name(name)], check=False)
    deadline = time.monotonic() + 10
    while our_links(name) and time.monotonic() < deadline:
        time.sleep(0.1)  # veths of deleted namespaces go away asynchronously


def forward_warning(bridge: str) -> None:
    """Warn when bridged traffic between namespaces is likely dropped by the firewall."""
    try:
        nf = Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip()
    except OSError:
        return
    if nf != "1" or shutil.which("iptables") is None:
        return
    rules = run(["iptables", "-S", "FORWARD"], check=False).stdout
    if "-P FORWARD DROP" in rules:
        warnings.warn(
            "bridge-nf-call-iptables=1 and the iptables FORWARD policy is DROP (a Docker host?):"
            f" traffic between worker namespaces may be dropped. Allow it with `iptables -I "
            f"FORWARD -i {bridge} -o {bridge} -j ACCEPT`.",
            RuntimeWarning,
            stacklevel=3,
        )
