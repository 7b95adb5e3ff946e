"""Stop strings over streamed text: what the generation loop holds back, emits, and where it stops."""

from __future__ import annotations

from typing import Iterable


class StopMatcher:
    """Stop strings over streamed text (llama-server's find_stopping_strings, on str).

    `feed(piece)` returns (text safe to emit, stopped). Text that could be the start of a stop string
    is held back until it is decided; at a full match everything from the stop string on is dropped,
    and `stop_string` names the one that matched (the earliest; on a tie, the first listed).
    `flush()` returns what is still held back when generation ends without a stop.
    """

    def __init__(self, stops: Iterable[str] | None):
        self.stops = [s for s in (stops or []) if s]
        self._buf = ""
        self.stopped = False
        self.stop_string: str | None = None

    def feed(self, piece: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return piece, False
        buf = self._buf + piece
        best = -1
        for s in self.stops:
            pos = buf.find(s)
            if pos != -1 and (best == -1 or pos < best):
                best, self.stop_string = pos, s
        if best != -1:
            self._buf, self.stopped = "", True
            return buf[:best], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        cut = len(buf) - hold
        self._buf = buf[cut:]
        return buf[:cut], False

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return "" if self.stopped else out
