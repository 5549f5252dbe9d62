"""Guest networking, plugged into the daemon (Daemon._install_features calls install)."""

from typing import TYPE_CHECKING

from warden.net.api import NetApi
from warden.net.hook import NetHook
from warden.net.service import NetService

if TYPE_CHECKING:
    from warden.daemon.core import Daemon


def install(daemon: "Daemon") -> None:
    service = NetService(daemon)
    daemon.services.append(service)
    daemon.c.hooks.append(NetHook(service))
    NetApi(service).install(daemon)
