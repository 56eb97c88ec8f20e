"""How ``llmserve chat`` looks on each kind of input: a face reads the user's lines and shows
the answers. :class:`Face` is the piped, plain one; :class:`JsonLines` (``--json``) and
:class:`Terminal` (interactive) change what they must."""

from __future__ import annotations

import contextlib
import json
import sys

from rich.console import Console
from rich.markup import escape

from llmserve.cli._client import Ending

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class Face:
    """Piped input, plain output: a message per stdin line; each answer streamed as plain text
    and ended with a newline, a blank line between answers. The other faces derive from it."""

    interactive = False
    #: Whether the answer is wanted piece by piece (else it may come whole).
    streams = True

    def __init__(self) -> None:
        self.answers = 0

    def read(self) -> str:
        """The next line, without its line break; EOFError at the end of the input."""
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")

    def started(self, model: str) -> None:
        pass

    def begin(self) -> None:
        if self.answers:
            _write("\n")

    def piece(self, text: str) -> None:
        _write(text)

    def answered(self, ending: Ending | None, text: str) -> None:
        _write("\n")
        self.answers += 1

    def cut(self) -> None:
        """End a partial answer's line before a message about it."""

    def note(self, text: str) -> None:
        stderr.print(text, style="dim", markup=False, emoji=False)


class JsonLines(Face):
    """``--json``: a message per stdin line, one JSON object per answer."""

    streams = False

    def begin(self) -> None:
        pass

    def piece(self, text: str) -> None:
        pass

    def answered(self, ending: Ending | None, text: str) -> None:
        message = {"role": "assistant", "content": text}
        payload = (ending or Ending()).payload("message", message)
        _write(json.dumps(payload, ensure_ascii=False) + "\n")


class Terminal(Face):
    """The interactive face: a prompt with line editing, the answer printed as it arrives."""

    interactive = True

    def __init__(self) -> None:
        super().__init__()
        self.out = Console(highlight=False, soft_wrap=True)
        self.prompt = ">>> "
        self.mid_line = False
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  # line editing and history for input()

            if self.out.color_system is not None:
                # \001 and \002 tell readline that the colour codes take no room on the line.
                self.prompt = "\001\x1b[1;32m\002>>> \001\x1b[0m\002"

    def read(self) -> str:
        return input(self.prompt)

    def started(self, model: str) -> None:
        stderr.print(
            f"[dim]Chatting with [bold]{escape(model)}[/bold]. /help lists the commands; "
            "Ctrl-D quits.[/]"
        )

    def begin(self) -> None:
        pass

    def piece(self, text: str) -> None:
        self.out.print(text, end="", markup=False, emoji=False)
        self.mid_line = not text.endswith("\n")

    def answered(self, ending: Ending | None, text: str) -> None:
        self.out.print()
        self.mid_line = False

    def cut(self) -> None:
        if self.mid_line:
            self.out.print()
            self.mid_line = False


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
