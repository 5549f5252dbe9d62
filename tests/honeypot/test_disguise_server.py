"""The host side of the disguise channel against a scripted kernel end (a real socketpair,
no guest): rule sets out, filter requests answered, hung filter programs cut off."""

import asyncio
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from warden.honeypot import disguise_wire as w
from warden.honeypot.disguise_server import DisguiseServer
from warden.honeypot.disguise_wire import MsgType
from warden.honeypot.profile import parse_profile

PROFILE = """
[profile]
timeout_ms = 300
[proc.exitcode]
hide = true
[proc.interrupts]
filter = { drop = ['mconsole'], sub = [['SIGIO', 'IO-APIC']] }
[proc.version]
filter = { command = ['/usr/bin/tr', 'a-z', 'A-Z'] }
[proc.slow]
filter = { command = ['/bin/sleep', '30'] }
fallback = { text = "fallback\\n" }
"""


def request(ident: int, path: str, real: bytes) -> bytes:
    body = struct.pack("<IIHHI", 42, 0, len(path), 0, len(real)) + path.encode() + real
    return w.encode_message(MsgType.REQUEST, ident, body)


async def recv(sock: socket.socket) -> w.Message:
    loop = asyncio.get_running_loop()
    return w.decode_message(await asyncio.wait_for(loop.sock_recv(sock, 1 << 18), 5))


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro_fn())


def test_rule_set_then_filters_then_a_new_profile() -> None:
    async def main() -> None:
        server = DisguiseServer.pair(parse_profile(PROFILE, "t", "t.toml"), "t")
        kernel = server.kernel_sock
        assert kernel is not None and server.kernel_arg == f"disguise_fd={kernel.fileno()}"
        kernel.setblocking(False)
        async with server:
            first = await recv(kernel)
            assert (first.type, first.id) == (MsgType.RULESET, 1)
            rules = w.decode_ruleset(first.body)
            assert [e.path for e in rules.entries] == ["exitcode", "interrupts", "version", "slow"]

            kernel.send(request(1, "interrupts", b" 2: 5 SIGIO ubd\n 5: 0 SIGIO mconsole\n"))
            reply = await recv(kernel)
            assert (reply.type, reply.id, reply.body) == (MsgType.REPLY, 1, b" 2: 5 IO-APIC ubd\n")

            kernel.send(request(2, "version", b"linux version\n"))
            reply = await recv(kernel)
            assert (reply.id, reply.body) == (2, b"LINUX VERSION\n")

            # the kernel acknowledges the rule set when the guest next touches /proc
            kernel.send(w.encode_message(MsgType.ACK, 1, struct.pack("<iII", 0, 1, 4)))
            ack = await server.wait_ack(1, 5)
            assert ack.cpuid_faulting and ack.entries == 4

            gen = server.set_profile(parse_profile("[proc.cmdline]\nreplace = 'x'\n", "u", "u"))
            second = await recv(kernel)
            assert (second.type, second.id, gen) == (MsgType.RULESET, 2, 2)
            assert [e.path for e in w.decode_ruleset(second.body).entries] == ["cmdline"]

            # a request for a path the new profile no longer filters gets the real content
            kernel.send(request(3, "interrupts", b"real\n"))
            assert (await recv(kernel)).body == b"real\n"
        assert server.stats.requests == 3 and server.stats.replies == 3
        kernel.close()

    run(main)


def test_a_hung_filter_program_is_cut_off_and_its_fallback_served() -> None:
    async def main() -> None:
        server = DisguiseServer.pair(parse_profile(PROFILE, "t", "t.toml"), "t")
        kernel = server.kernel_sock
        assert kernel is not None
        kernel.setblocking(False)
        async with server:
            await recv(kernel)
            kernel.send(request(9, "slow", b"real\n"))
            # an unrelated request is answered while the slow one hangs
            kernel.send(request(10, "interrupts", b"x SIGIO\n"))
            first = await recv(kernel)
            assert (first.id, first.body) == (10, b"x IO-APIC\n")
            second = await recv(kernel)
            assert (second.id, second.body) == (9, b"fallback\n")
        assert server.stats.filter_failures == 1
        kernel.close()

    run(main)


def test_garbage_from_the_kernel_is_counted_and_the_channel_goes_on() -> None:
    async def main() -> None:
        server = DisguiseServer.pair(parse_profile(PROFILE, "t", "t.toml"), "t")
        kernel = server.kernel_sock
        assert kernel is not None
        kernel.setblocking(False)
        async with server:
            await recv(kernel)
            kernel.send(b"not a message at all")
            kernel.send(w.encode_message(MsgType.REPLY, 1, b"kernels never send replies"))
            kernel.send(request(4, "interrupts", b"SIGIO\n"))
            assert (await recv(kernel)).body == b"IO-APIC\n"
        assert server.stats.protocol_errors == 2
        kernel.close()

    run(main)


def test_the_kernel_going_away_ends_the_reading_quietly() -> None:
    async def main() -> None:
        server = DisguiseServer.pair(parse_profile(PROFILE, "t", "t.toml"), "t")
        kernel = server.kernel_sock
        assert kernel is not None
        async with server:
            server.kernel_started()  # as after the kernel's start: the host's copy closed
            assert server.kernel_sock is None
            await asyncio.sleep(0.05)
        assert server.closed

    run(main)


def test_stop_ends_filters_still_running() -> None:
    async def main() -> None:
        server = DisguiseServer.pair(parse_profile(PROFILE, "t", "t.toml"), "t")
        kernel = server.kernel_sock
        assert kernel is not None
        kernel.setblocking(False)
        await server.start()
        await recv(kernel)
        kernel.send(request(1, "slow", b"real\n"))
        await asyncio.sleep(0.05)
        await server.stop()  # cancels the request's task, which kills /bin/sleep
        assert server.stats.replies == 0
        kernel.close()

    run(main)
