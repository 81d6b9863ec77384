"""The known fixes, worded once so every finding and command says the same thing."""

from __future__ import annotations

from collections.abc import Sequence

ALLOWLIST = (
    "Stop CrowdSec from banning cluster addresses: add a whitelist parser (s02-enrich) for the "
    "cluster CIDRs (`auditor allowlist` prints one), and list them in the bouncer's "
    "clientTrustedIPs."
)

PRESERVE_CLIENT_IP = (
    "Make Traefik see the real client: run Traefik as a DaemonSet on the nodes that hold the "
    "external IPs and set `service.spec.externalTrafficPolicy: Local` on its Service; on k3s "
    "either start the servers with `--disable servicelb` and use MetalLB, or keep servicelb with "
    "`externalTrafficPolicy: Local`. Behind an external load balancer or CDN, enable PROXY "
    "protocol (`entryPoints.<ep>.proxyProtocol.trustedIPs`) or trust its X-Forwarded-For "
    "(`entryPoints.<ep>.forwardedHeaders.trustedIPs`) for exactly the proxy's addresses."
)

KEEP_HEADERS = (
    "Keep the forwarding headers in the access log so the real client stays visible: "
    "`accessLog.fields.headers.names.X-Forwarded-For: keep` and `X-Real-Ip: keep` "
    "(Traefik drops all headers by default)."
)

JSON_FORMAT = (
    "Set `accessLog.format: json` (Helm chart >= v41; `logs.access.format: json` on older charts "
    "and k3s' HelmChartConfig). Traefik writes common log format by default, so CrowdSec setups "
    "that expect JSON silently make no decisions."
)


def internal_ban_fix(value: str, *, ranged: bool) -> str:
    """``ranged``: ``Decision.is_range`` (an Ip decision written as a CIDR is a range too)."""
    flag = "--range" if ranged else "--ip"
    return " ".join(
        (
            f"Remove the decision now: `cscli decisions delete {flag} {value}`.",
            ALLOWLIST,
            PRESERVE_CLIENT_IP,
        )
    )


def suspected_hop_fix(value: str, *, banned: bool, ban_range: str = "") -> str:
    """A public address that carries many clients: a node's SNAT or a proxy nobody listed.
    ``ban_range``: the ban is on a range that covers the address, not on the address."""
    parts = []
    if banned and ban_range:
        parts.append(
            f"Remove the decision now: it bans {ban_range}, which covers {value} and so locks "
            f"out everyone behind it: `cscli decisions delete --range {ban_range}`."
        )
    elif banned:
        parts.append(
            f"Remove the decision now: `cscli decisions delete --ip {value}` (it locks out "
            "everyone behind this address)."
        )
    parts += [
        f"Find what {value} is (a node's public address, another node running Traefik, an "
        "unlisted proxy or CDN). If it is a node or a load balancer, list it "
        "(`--node-ip`/`--lb-ip`) so it is judged as internal, and whitelist it in CrowdSec "
        "(`auditor allowlist`).",
        PRESERVE_CLIENT_IP,
    ]
    return " ".join(parts)


def masking_started_fix(changed_at: str) -> str:
    """The share stepped up at ``changed_at`` (UTC): what changed then is the lead."""
    return " ".join(
        (
            f"Find what changed around {changed_at}: a Traefik or k3s upgrade, a Helm "
            "values change, a CNI change (Cilium 1.18 with Traefik 3.5), the Service's "
            "externalTrafficPolicy reset to Cluster, Traefik rescheduled to another node; "
            "`kubectl -n kube-system get events --sort-by=.lastTimestamp` and `helm history "
            "traefik -n kube-system` list them. Revert it, or restore the client IP.",
            PRESERVE_CLIENT_IP,
            ALLOWLIST,
        )
    )


def masking_started_hop_fix(value: str, changed_at: str) -> str:
    """A public address (a suspected hop) began to carry everyone's requests at ``changed_at``
    (UTC): what made it appear then is the lead."""
    return " ".join(
        (
            f"Find what made {value} carry everyone's requests from {changed_at}: a k3s "
            "upgrade after which the nodes SNAT to their own public address (servicelb, HA "
            "servers), Traefik rescheduled to another node so traffic now crosses this one, the "
            "Service's externalTrafficPolicy reset to Cluster, a new proxy or load balancer in "
            "front; `kubectl get nodes -o wide` says whether it is a node's address, "
            "`kubectl -n kube-system get events --sort-by=.lastTimestamp` and `kubectl -n "
            "kube-system get pods -o wide -l app.kubernetes.io/name=traefik` what changed then. "
            "Revert it; if the address stays a hop, list it (`--node-ip`/`--lb-ip`) so it is "
            "judged as internal, and whitelist it in CrowdSec (`auditor allowlist`).",
            PRESERVE_CLIENT_IP,
        )
    )


def masked_fix(
    headers_kept: bool, forwarding: Sequence[str], *, client_written: bool = False
) -> str:
    """``forwarding``: hops seen adding the header themselves (the only ones safe to trust);
    ``client_written``: some requests through the hops carry a header naming a public client
    that the hops did not add (clients wrote it)."""
    parts = [PRESERVE_CLIENT_IP]
    if forwarding:
        parts.append(
            "The hop(s) "
            + ", ".join(forwarding)
            + " add X-Forwarded-For / X-Real-Ip to every request: trust exactly those "
            "addresses in `forwardedHeaders.trustedIPs` so Traefik uses the real client."
        )
    elif client_written:
        parts.append(
            "Do not add the hop to `forwardedHeaders.trustedIPs`: it does not add "
            "X-Forwarded-For itself (only some requests carry one, written by the client), so "
            "trusting it would let any client choose the address CrowdSec sees and bans."
        )
    elif not headers_kept:
        parts.append(KEEP_HEADERS)
    parts.append(ALLOWLIST)
    return " ".join(parts)


def ban_mismatch_fix(mode: str, checked: Sequence[str] = ()) -> str:
    """How to make the bouncer check the address CrowdSec bans (``core/bouncer.py`` modes).

    ``checked``: the addresses the bouncer checks instead (hops, trusted proxies), busiest first.
    """
    listed = ", ".join(checked[:3])
    if mode == "hop":
        first = (
            "The bouncer checks the TCP peer"
            + (f" ({listed})" if listed else "")
            + " because every X-Forwarded-For element is in its forwardedHeadersTrustedIPs (or "
            "the header it reads is missing), while CrowdSec bans the client named in "
            "X-Forwarded-For: bans on clients never apply, and a ban on the hop locks everyone "
            "out. Remove the client ranges from forwardedHeadersTrustedIPs (list only your "
            "proxies), or set forwardedHeadersCustomName to a header the hop always sets."
        )
    elif mode == "forwarded":
        first = (
            "CrowdSec's traefik-logs parser bans the last X-Forwarded-For element (the end of "
            "ClientHost)"
            + (f", here {listed}," if listed else "")
            + " but the bouncer skips it as a trusted proxy and checks the element left of it: "
            "the bans never match a request. Make the last element the client: have the proxy "
            "in front of Traefik set X-Forwarded-For to the client instead of appending its "
            "peer (nginx `real_ip_header CF-Connecting-IP` with `set_real_ip_from` the CDN's "
            "ranges, then `proxy_set_header X-Forwarded-For $remote_addr`), or use PROXY "
            "protocol. Dropping those proxies from forwardedHeadersTrustedIPs only makes both "
            "sides agree on the proxy: a ban then locks out everyone behind it."
        )
    elif mode == "exempt":
        first = (
            "The bouncer's clientTrustedIPs covers the address it checks"
            + (f" ({listed})" if listed else "")
            + " while CrowdSec bans another, untrusted address: those requests pass whatever is "
            "banned. List only addresses you trust in clientTrustedIPs (LAN, VPN), never a hop "
            "that carries other clients."
        )
    elif mode == "refused":
        first = (
            "The bouncer derives an address that is not an IP"
            + (f" ({listed})" if listed else "")
            + " (a port, `unknown`, a hostname in X-Forwarded-For) and refuses the request. Fix "
            "the proxy that writes the header, or trust it in forwardedHeadersTrustedIPs only if "
            "the element left of it is the client."
        )
    else:  # live decisions the bouncer never sees
        first = (
            "These decisions never apply: the bouncer never checks their address (it checks "
            "another one for the same requests, or clientTrustedIPs exempts it). Fix the "
            "bouncer's forwarded-header settings as the traffic findings say, or whitelist the "
            "addresses in CrowdSec if they are trusted."
        )
    return first + " `auditor check` shows the bouncer's effective settings."
