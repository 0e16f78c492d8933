"""Imported by the workers' fork server alone (:func:`pellet_analysis.workers.start_server`): it exits without teardown.

The server ends when the process that started it does. Freeing the objects
of the ~1,500 modules it imported took it 0.17 s, during which it still held
the command's standard output and error open, so whatever reads them (a
workflow manager, the benchmark) waited that long after the command's own
end. An exit handler ends it at once instead, as the command ends itself
(:func:`pellet_analysis.cli.command`). The workers it forks inherit the
handler but never run it: they leave through ``os._exit``.
"""

from __future__ import annotations

import atexit
import os

from .io import flush_standard_streams


def _exit_at_once() -> None:
    flush_standard_streams()
    os._exit(0)


atexit.register(_exit_at_once)
