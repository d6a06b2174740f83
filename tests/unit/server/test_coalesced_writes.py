"""CoalescedWrites: a response's head and body leave in one write, in order, never lost."""

from __future__ import annotations

import asyncio
from typing import Any

from certctl.server.protocol import CoalescedWrites


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 4242)}.get(name, default)


async def _tick() -> None:
    await asyncio.sleep(0)


def test_head_and_body_in_one_iteration_are_one_write() -> None:
    async def main() -> list[bytes]:
        transport = _Transport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())
        writes.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        writes.write(b"ok")
        await _tick()
        return transport.writes

    assert asyncio.run(main()) == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]


def test_a_head_alone_goes_out_on_the_next_iteration() -> None:
    async def main() -> tuple[list[bytes], list[bytes]]:
        transport = _Transport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())
        writes.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        before = list(transport.writes)
        await _tick()
        return before, transport.writes

    before, after = asyncio.run(main())
    assert before == []
    assert after == [b"HTTP/1.1 204 No Content\r\n\r\n"]


def test_close_writes_what_is_held_first() -> None:
    async def main() -> _Transport:
        transport = _Transport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())
        writes.write(b"head")
        writes.close()
        await _tick()  # the scheduled flush finds nothing left and writes nothing
        return transport

    transport = asyncio.run(main())
    assert transport.writes == [b"head"]
    assert transport.closed


def test_a_stream_keeps_its_order_across_iterations() -> None:
    async def main() -> bytes:
        transport = _Transport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())
        for chunk in (b"head|", b"a|", b"b|"):
            writes.write(chunk)
        await _tick()
        writes.write(b"c|")
        await _tick()
        writes.write(b"d|")
        writes.write(b"end")
        await _tick()
        return b"".join(transport.writes)

    assert asyncio.run(main()) == b"head|a|b|c|d|end"


def test_other_transport_calls_pass_through() -> None:
    async def main() -> tuple[Any, bool]:
        transport = _Transport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())
        return writes.get_extra_info("peername"), writes.is_closing()

    assert asyncio.run(main()) == (("127.0.0.1", 4242), False)
