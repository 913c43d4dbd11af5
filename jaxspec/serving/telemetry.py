"""Compile telemetry: how many XLA programs a server has compiled, and since when.

A serving engine should compile only while it warms up; `CompileCounter`
makes that checkable (`stats()["xla_compiles_since_warmup"]` stays 0 under
traffic). jax.monitoring has no per-function hook, so the count is
process-wide: in a server the engine's worker is the only caller that compiles.
"""

from __future__ import annotations

import threading
from typing import Any

import jax

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

_compiles = 0
_lock = threading.Lock()
_listener_installed = False


def _on_event_duration(event: str, duration: float, **_: Any) -> None:
    global _compiles
    if event == _COMPILE_EVENT:
        with _lock:
            _compiles += 1


def install_listener() -> None:
    """Starts counting compilations (idempotent; `CompileCounter` calls it)."""
    global _listener_installed
    with _lock:
        if _listener_installed:
            return
        _listener_installed = True
    jax.monitoring.register_event_duration_secs_listener(_on_event_duration)


def xla_compiles() -> int:
    """XLA compilations in this process since `install_listener` first ran (the first `Engine`)."""
    with _lock:
        return _compiles


class CompileCounter:
    """Compilations since it was built and since warmup, and the distinct programs run. Thread-safe."""

    def __init__(self):
        install_listener()
        self._lock = threading.Lock()
        self._at_start = xla_compiles()
        self._after_warmup: int | None = None
        self._programs: set[Any] = set()

    def ran(self, program: Any) -> None:
        """Records one call of `program` (a hashable description, e.g. its shapes)."""
        with self._lock:
            self._programs.add(program)

    def warmed_up(self, *, keep_earlier: bool = False) -> None:
        """Marks the end of warmup now (or only if none was marked, with `keep_earlier`)."""
        with self._lock:
            if not (keep_earlier and self._after_warmup is not None):
                self._after_warmup = xla_compiles()

    def stats(self) -> dict[str, Any]:
        """programs (distinct ones run), xla_compiles (since built), xla_compiles_since_warmup (None before it)."""
        now = xla_compiles()
        with self._lock:
            return dict(
                programs=len(self._programs),
                xla_compiles=now - self._at_start,
                xla_compiles_since_warmup=None if self._after_warmup is None else now - self._after_warmup,
            )
