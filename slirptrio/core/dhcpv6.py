"""Stateless DHCPv6 (RFC 8415 section 6.1): the guest's Information-Request answered with the
DNS servers and the domain search list.

Theory of operation
-------------------
The router advertisement's O flag tells the guest to ask for "other configuration". Its
Information-Request (to ff02::1:2, port 547) gets a Reply with the server identifier (a DUID-LL
of the router MAC), the client identifier it sent, DNS servers (``ipv6-dns``), the domain list
(``dnssearch``) and an information refresh time. This is what libslirp answers. A client that
asks for the boot file URL (RFC 5970, option 59, in its option request) gets it when
``bootfile=`` is set: ``tftp://[ipv6-host]/NAME``, or the boot file itself when it is already
an ``http://`` or ``tftp://`` URL.

Addresses come from SLAAC, not from here: a Solicit gets an Advertise saying NoAddrsAvail (RFC
8415 18.3.9), a Request a Reply whose IA_NA says NoAddrsAvail, a Renew or Rebind one saying
NoBinding; Release and Decline are acknowledged with Success. Stateful IA_NA (as passt has) was
left out: it would add leases to keep, journal and snapshot for addresses SLAAC already gives.
Confirm and anything else get no answer. A message naming another server's identifier, or
carrying options this server must not see (RFC 8415 16), is dropped and counted. Under
restrict=on no DNS is given, as the IPv4 DHCP server does.

The server keeps no state between messages.
"""

from __future__ import annotations

import collections
from typing import ClassVar

from slirptrio.config import Config
from slirptrio.wire import MalformedFrame
from slirptrio.wire import dhcpv6 as w
from slirptrio.wire.ndp import encode_names

INFORMATION_REFRESH_S = 86400


class Dhcpv6Server:
    """Answers one guest's DHCPv6 messages (stateless).

    Args:
      config: DNS address, search list and restrict come from here.
      server_mac: the MAC the server identifier (DUID-LL) is made of.
      counters: where ``dhcpv6_*`` counts go.
    """

    # No state of its own: every attribute is set from the arguments (snapshot "wiring").
    _SNAPSHOT_WIRING: ClassVar[frozenset[str]] = frozenset(
        {"counters", "duid", "_dns", "_search", "_boot_url"}
    )

    def __init__(
        self, config: Config, server_mac: bytes, counters: collections.Counter[str]
    ) -> None:
        self.counters = counters
        self.duid = w.duid_ll(server_mac)
        self._dns = b"" if config.restrict else config.ipv6_dns.packed
        self._search = b"" if config.restrict else encode_names(config.dnssearch)
        self._boot_url = boot_url(config).encode()

    def handle(self, data: bytes | memoryview) -> bytes | None:
        """The reply to one client message, or None."""
        c = self.counters
        try:
            msg = w.parse_dhcpv6(data)
        except MalformedFrame:
            c["dhcpv6_malformed"] += 1
            return None
        t = msg.msg_type
        server_id = msg.option(w.OPT_SERVERID)
        client_id = msg.option(w.OPT_CLIENTID)
        if server_id is not None and server_id != self.duid:
            c["dhcpv6_other_server"] += 1
            return None
        if t == w.INFORMATION_REQUEST:
            if msg.option(w.OPT_IA_NA) is not None or msg.option(w.OPT_IA_TA) is not None:
                c["dhcpv6_bad_message"] += 1
                return None
            c["dhcpv6_information_request"] += 1
            opts = self._ids(client_id) + self._config_options(msg)
            opts.append((w.OPT_INFORMATION_REFRESH_TIME, INFORMATION_REFRESH_S.to_bytes(4, "big")))
            return w.build_message(w.REPLY, msg.xid, opts)
        if client_id is None:
            c["dhcpv6_no_client_id"] += 1
            return None
        if t == w.SOLICIT:
            if server_id is not None:
                c["dhcpv6_bad_message"] += 1
                return None
            c["dhcpv6_solicit"] += 1
            opts = self._ids(client_id)
            opts.append((w.OPT_STATUS_CODE, w.status(w.STATUS_NO_ADDRS_AVAIL, "use SLAAC")))
            return w.build_message(w.ADVERTISE, msg.xid, opts + self._config_options(msg))
        if t in (w.REQUEST, w.RENEW, w.REBIND):
            if t != w.REBIND and server_id is None:
                c["dhcpv6_bad_message"] += 1
                return None
            c["dhcpv6_" + ("request" if t == w.REQUEST else "renew")] += 1
            code = w.STATUS_NO_ADDRS_AVAIL if t == w.REQUEST else w.STATUS_NO_BINDING
            opts = self._ids(client_id)
            for ia in msg.all(w.OPT_IA_NA):
                if len(ia) >= 12:  # IAID, T1, T2: echo the IAID with zero timers
                    inner = w.encode_option(w.OPT_STATUS_CODE, w.status(code, "no addresses"))
                    opts.append((w.OPT_IA_NA, ia[:4] + bytes(8) + inner))
            return w.build_message(w.REPLY, msg.xid, opts + self._config_options(msg))
        if t in (w.RELEASE, w.DECLINE):
            if server_id is None:
                c["dhcpv6_bad_message"] += 1
                return None
            c["dhcpv6_release"] += 1
            opts = self._ids(client_id)
            opts.append((w.OPT_STATUS_CODE, w.status(w.STATUS_SUCCESS, "")))
            return w.build_message(w.REPLY, msg.xid, opts)
        c["dhcpv6_ignored"] += 1
        return None

    def _ids(self, client_id: bytes | None) -> list[tuple[int, bytes]]:
        opts = [(w.OPT_SERVERID, self.duid)]
        if client_id is not None:
            opts.append((w.OPT_CLIENTID, client_id))
        return opts

    def _config_options(self, msg: w.Dhcpv6Message) -> list[tuple[int, bytes]]:
        opts = []
        if self._dns:
            opts.append((w.OPT_DNS_SERVERS, self._dns))
        if self._search:
            opts.append((w.OPT_DOMAIN_LIST, self._search))
        if self._boot_url and _requested(msg, w.OPT_BOOTFILE_URL):
            opts.append((w.OPT_BOOTFILE_URL, self._boot_url))
        return opts


def _requested(msg: w.Dhcpv6Message, code: int) -> bool:
    """Whether the client's option request option (ORO) names ``code``."""
    oro = msg.option(w.OPT_ORO) or b""
    return any(int.from_bytes(oro[i : i + 2], "big") == code for i in range(0, len(oro) - 1, 2))


def boot_url(config: Config) -> str:
    """The DHCPv6 boot file URL for ``config`` ("" without ``bootfile=`` or IPv6)."""
    name = config.bootfile
    if not name or not config.ipv6:
        return ""
    if name.startswith(("http://", "https://", "tftp://")):
        return name
    return f"tftp://[{config.ipv6_host}]/{name.lstrip('/')}"
