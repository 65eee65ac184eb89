"""Slowing down password guessing on the studio's login (`--auth USER:PASS`).

Gradio checks a login by calling the function given as `auth`. This one lets a few wrong passwords
through at full speed (typos), then makes every further attempt wait: 0.5 s after the fourth wrong
password, doubling with each one up to 10 s, until a right password resets it. Attempts are checked
one at a time, so sending many at once does not go faster. The wait is an `asyncio.sleep` (Gradio
awaits a coroutine `auth` inside its async login route), so the rest of the studio keeps answering.
"""
from __future__ import annotations

import asyncio
import hmac
import time
from typing import Awaitable, Callable


class LoginThrottle:
    def __init__(self, user: str, password: str, free: int = 3, first_delay: float = 0.5,
                 max_delay: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._user, self._password = user, password
        self.free, self.first_delay, self.max_delay = free, first_delay, max_delay
        self.failures = 0
        self._not_before = 0.0
        self._clock = clock
        self._lock: asyncio.Lock | None = None

    def delay_after(self, failures: int) -> float:
        """Seconds the next attempt waits after `failures` wrong passwords in a row."""
        if failures <= self.free:
            return 0.0
        return min(self.first_delay * 2 ** (failures - self.free - 1), self.max_delay)

    def _matches(self, user: str, password: str) -> bool:
        # Both compared in constant time, and both always compared: the timing says nothing about which was wrong.
        user_ok = hmac.compare_digest(user.encode("utf-8"), self._user.encode("utf-8"))
        pass_ok = hmac.compare_digest(password.encode("utf-8"), self._password.encode("utf-8"))
        return user_ok and pass_ok

    async def check(self, user: str, password: str) -> bool:
        if self._lock is None:
            self._lock = asyncio.Lock()  # made here: it belongs to the server's event loop
        async with self._lock:
            wait = self._not_before - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._matches(str(user or ""), str(password or "")):
                self.failures = 0
                self._not_before = 0.0
                return True
            self.failures += 1
            self._not_before = self._clock() + self.delay_after(self.failures)
            return False


def login_checker(user: str, password: str, **kw) -> Callable[[str, str], Awaitable[bool]]:
    """An `auth` callable for gr.Blocks.launch. A plain coroutine function, not an object with an async
    __call__: Gradio tests `inspect.iscoroutinefunction(auth)` and would take the unawaited coroutine
    an object returns for a yes."""
    throttle = LoginThrottle(user, password, **kw)

    async def check(username: str, pw: str) -> bool:
        return await throttle.check(username, pw)

    check.throttle = throttle  # type: ignore[attr-defined]
    return check
