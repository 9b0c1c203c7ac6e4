"""The studio's scenes: one per browser tab, each with its undo history, all in bounded memory.

A `Session` holds a list of immutable `Scene`s and a position in it: an edit
drops what lies after the position (the redo branch) and appends; undo and redo
move the position. Consecutive scenes share the canvases their edit did not
repaint, so memory is counted per distinct canvas and mask.

`Sessions` hands out unguessable ids and keeps memory bounded: a session whose
history outgrows ``session_bytes`` forgets its oldest scenes; sessions idle for
``ttl`` seconds expire; past ``max_sessions`` or ``total_bytes`` the least
recently used go first. A tab whose session went away is told so
(`SessionGone`) and starts a new one.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

from scenecomp.compose import Scene


class SessionGone(KeyError):
    """The session id is unknown: it expired, was dropped to bound memory, or the server restarted."""

    def __str__(self) -> str:
        return str(self.args[0])


def scene_bytes(scenes) -> int:
    """Bytes held by the canvases and masks of ``scenes``, each shared tensor or array counted once."""
    seen, total = set(), 0
    for scene in scenes:
        for canvas in scene._canvases:
            if id(canvas) not in seen:
                seen.add(id(canvas))
                total += canvas.element_size() * canvas.nelement()
        for obj in scene.objects:
            if id(obj.mask) not in seen:
                seen.add(id(obj.mask))
                total += obj.mask.nbytes
    return total


class Session:
    """One tab's scene and its undo history; ``lock`` serialises the tab's requests."""

    def __init__(self, scene: Scene, max_history: int, max_bytes: int):
        self.history, self.at = [scene], 0
        self.max_history, self.max_bytes = max_history, max_bytes
        self.lock = threading.Lock()
        self.used = time.monotonic()
        self.nbytes = scene_bytes(self.history)

    @property
    def scene(self) -> Scene:
        return self.history[self.at]

    @property
    def can_undo(self) -> bool:
        return self.at > 0

    @property
    def can_redo(self) -> bool:
        return self.at < len(self.history) - 1

    def push(self, scene: Scene) -> None:
        """Make ``scene`` current (a no-op edit adds no step); forget the redo branch and, past the
        bounds, the oldest scenes (the current one is always kept)."""
        if scene is self.scene:
            return
        del self.history[self.at + 1 :]
        self.history.append(scene)
        self.at = len(self.history) - 1
        while len(self.history) > self.max_history:
            self._forget_oldest()
        self.nbytes = scene_bytes(self.history)
        while self.nbytes > self.max_bytes and len(self.history) > 1:
            self._forget_oldest()
            self.nbytes = scene_bytes(self.history)

    def undo(self) -> None:
        if not self.can_undo:
            raise ValueError("nothing to undo")
        self.at -= 1

    def redo(self) -> None:
        if not self.can_redo:
            raise ValueError("nothing to redo")
        self.at += 1

    def _forget_oldest(self) -> None:
        del self.history[0]
        self.at -= 1


class Sessions:
    """Sessions by id, bounded in number, idle time and memory (module docstring)."""

    def __init__(
        self,
        *,
        max_sessions: int = 64,
        total_bytes: int = 1 << 30,
        session_bytes: int = 256 << 20,
        max_history: int = 100,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_sessions, self.total_bytes, self.session_bytes = max_sessions, total_bytes, session_bytes
        self.max_history, self.ttl, self.clock = max_history, ttl, clock
        self._sessions: dict[str, Session] = {}  # in order of last use, oldest first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, scene: Scene) -> tuple[str, Session]:
        session = Session(scene, self.max_history, self.session_bytes)
        session.used = self.clock()
        with self._lock:
            sid = secrets.token_urlsafe(18)
            self._sessions[sid] = session
            self._bound(keep=sid)
        return sid, session

    def get(self, sid: str) -> Session:
        """The session ``sid``, marked as just used; `SessionGone` if there is none."""
        with self._lock:
            self._bound()
            session = self._sessions.pop(sid, None)
            if session is None:
                raise SessionGone(
                    "this tab's scene is gone from the server (idle too long, dropped to keep "
                    "memory bounded, or the server restarted); a new scene was started"
                )
            session.used = self.clock()
            self._sessions[sid] = session  # most recently used last
            return session

    def changed(self) -> None:
        """Call after a session's scene changed: drops the least recently used sessions past the memory bound."""
        with self._lock:
            self._bound()

    def _bound(self, keep: str | None = None) -> None:
        now = self.clock()
        for sid in [s for s, session in self._sessions.items() if now - session.used > self.ttl and s != keep]:
            del self._sessions[sid]
        total = sum(session.nbytes for session in self._sessions.values())
        for sid in list(self._sessions):
            if len(self._sessions) <= 1 or (len(self._sessions) <= self.max_sessions and total <= self.total_bytes):
                break
            if sid != keep:
                total -= self._sessions.pop(sid).nbytes
