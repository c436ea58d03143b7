"""Named steps and what the deploy prints.

Every change the deploy makes runs inside `console.step(name)`. A step that
fails raises DeployError carrying its name; nothing after it runs unless the
caller explicitly undoes what that step changed (a `try`/`except` around it
that re-raises). There is no exit status to lose: a failed command raises.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class DeployError(Exception):
    """A failed step: the deploy stops. `step` names it (set by Console.step)."""

    def __init__(self, message: str, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


class UsageError(Exception):
    """A command line that cannot be run: exit 2, nothing touched."""


class Console:
    """Headings (==>), details (four spaces), warnings on stderr.

    Streams are looked up when written, so a caller (a test) may redirect
    sys.stdout and sys.stderr.
    """

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self._out = out
        self._err = err
        self.current: str | None = None

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err or sys.stderr

    def heading(self, text: str) -> None:
        print(f"==> {text}", file=self.out, flush=True)

    def say(self, text: str) -> None:
        print(f"    {text}", file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(f"    {text}", file=self.err, flush=True)

    def loud(self, text: str) -> None:
        """A warning nobody may miss (a deploy without canary analysis)."""
        print(f"!!! WARNING: {text} !!!", file=self.err, flush=True)

    @contextmanager
    def step(self, name: str, heading: str | None = None, announce: bool = True) -> Iterator[None]:
        """Run a named step: print its heading (unless announce is False);
        any failure inside becomes a DeployError naming the step (the
        innermost step names it)."""
        if announce:
            self.heading(heading or name)
        outer, self.current = self.current, name
        try:
            yield
        except DeployError as e:
            if e.step is None:
                e.step = name
            raise
        except Exception as e:  # an AWS, OS or subprocess error: this step failed
            raise DeployError(f"{type(e).__name__}: {e}", step=name) from e
        finally:
            self.current = outer
