"""Drive the sans-IO HTTP readers in tests: feed bytes, collect events."""

from __future__ import annotations

from meshgate.http import CONNECTION_CLOSED, NEED_DATA, Data, Event, RequestReader, ResponseReader


def drain(reader: RequestReader | ResponseReader) -> list[Event]:
    """Every event available now, merging adjacent Data, up to NEED_DATA or CONNECTION_CLOSED."""
    events: list[Event] = []
    while True:
        event = reader.next_event()
        if event is NEED_DATA:
            return events
        if isinstance(event, Data) and events and isinstance(events[-1], Data):
            events[-1] = Data(events[-1].data + event.data)
            continue
        events.append(event)
        if event is CONNECTION_CLOSED:
            return events


def read_requests(
    data: bytes, *, eof: bool = False, reader: RequestReader | None = None
) -> list[Event]:
    reader = reader or RequestReader()
    reader.feed(data)
    if eof:
        reader.feed_eof()
    return drain(reader)


def read_bytewise(data: bytes, *, eof: bool = False) -> list[Event]:
    """The same input fed one byte at a time: framing must not depend on read sizes."""
    reader = RequestReader()
    events: list[Event] = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        events.extend(drain(reader))
        if events and events[-1] is CONNECTION_CLOSED:
            break
    if eof and not (events and events[-1] is CONNECTION_CLOSED):
        reader.feed_eof()
        events.extend(drain(reader))
    merged: list[Event] = []
    for event in events:
        if isinstance(event, Data) and merged and isinstance(merged[-1], Data):
            merged[-1] = Data(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged
