"""An incremental Server-Sent Events parser, liberal in what it accepts.

Follows the WHATWG event-stream rules: lines end in CRLF, LF or CR; ``:`` starts a comment
(keep-alives); ``data:`` lines accumulate with newlines; a field without a colon has an empty value;
one leading space after the colon is dropped; a blank line dispatches; unknown fields are ignored.
``retry:`` is ignored too: after a break the follower checks the task by GET and reconnects at
once, so the server's reconnection delay would only add latency.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event. ``last_event_id`` is the stream's id after this event."""

    event: str
    data: str
    last_event_id: str | None


class SSEParser:
    """Feed it bytes as they arrive; it returns the events completed by each chunk."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pending = b""
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._saw_cr = False
        self._started = False

    @property
    def last_event_id(self) -> str | None:
        return self._last_id

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        text = self._decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        events: list[ServerSentEvent] = []
        for line in self._lines(text):
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _decode(self, chunk: bytes) -> str:
        data = self._pending + chunk
        # Keep an incomplete UTF-8 sequence for the next chunk.
        for cut in range(1, min(4, len(data)) + 1):
            lead = data[-cut]
            if lead & 0xC0 != 0x80:
                need = 2 if lead >= 0xC0 else 1
                need = 3 if lead >= 0xE0 else need
                need = 4 if lead >= 0xF0 else need
                if need > cut:
                    self._pending = data[-cut:]
                    return data[:-cut].decode("utf-8", errors="replace")
                break
        self._pending = b""
        return data.decode("utf-8", errors="replace")

    def _lines(self, text: str) -> list[str]:
        if self._saw_cr and text.startswith("\n"):
            text = text[1:]
        self._saw_cr = False
        buf = self._buffer + text
        if "\r" not in buf:
            # The common case (LF only): split in C rather than walking characters.
            *complete, self._buffer = buf.split("\n")
            return complete
        lines: list[str] = []
        start = 0
        i = 0
        while i < len(buf):
            ch = buf[i]
            if ch == "\n" or ch == "\r":
                lines.append(buf[start:i])
                if ch == "\r":
                    if i + 1 < len(buf):
                        if buf[i + 1] == "\n":
                            i += 1
                    else:
                        self._saw_cr = True
                start = i + 1
            i += 1
        self._buffer = buf[start:]
        return lines

    def _line(self, line: str) -> ServerSentEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\x00" not in value:
            self._last_id = value
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent(
            event=self._event or "message",
            data="\n".join(self._data),
            last_event_id=self._last_id,
        )
        self._data = []
        self._event = ""
        return event
