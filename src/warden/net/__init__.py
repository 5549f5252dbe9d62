"""Guest networking: a bridge per [[network]], a tap per NIC, dnsmasq, nftables, capture.

Everything lives in the fleet's [host] netns (or the host's own network namespace when none is
named). The daemon never enters that namespace: a helper process (agent.py) started in it does
the netlink, tap, nft and process work and hands file descriptors back over a UNIX socket.

Modules, from pure to effectful:
    names.py     interface names, MACs, marks (pure)
    plan.py      what should exist: networks, addresses, per-guest NICs (pure)
    rules.py     the nftables ruleset for a plan, as `nft -j` JSON (pure)
    dnsmasq.py   a network's dnsmasq command line (pure)
    capture.py   tcpdump command lines and the capture quota (pure but for pruning files)
    state.py     what warden built, kept across daemon restarts (home/net/state.json)
    agent.py     the helper inside the namespace (a fresh process)
    client.py    the daemon's side of the agent protocol
    checks.py    a fleet checked against the host (pure)
    status.py    what `warden net ls` shows (pure)
    watch.py     the processes started in the namespace (dnsmasq, captures)
    ondemand.py  an on-demand capture's pcap stream
    service.py   networks' life cycle (the driver)
    feature.py   the Feature (warden.daemon.seam) the daemon calls
"""
