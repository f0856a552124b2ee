"""JSON Lines into a `TableWriter`, resumable: every line is written, or in the failed file.

    ingest = Ingest(writer, FailedFile(path), ProgressFile(state, source, table))
    for line in parse_lines(stream, first_line=1, offset=0):
        ingest.put(line)            # a bad line goes to the failed file, with its reason
        ...
        ingest.checkpoint()         # now and then: failures written, progress saved
    writer.close()
    ingest.checkpoint()

A line is one item (a JSON object; numbers become `Decimal`). The progress file says which line
every line up to is done (written, or in the failed file), and at which byte the next one starts,
so a rerun continues after it (`ProgressFile.load`). It is written atomically, and refused for
another input, another table, or an input shorter than where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from streams.errors import UserError
from streams.writer.encode import InvalidItemError
from streams.writer.table import TableWriter

__all__ = ["Checkpoint", "FailedFile", "Ingest", "Line", "ProgressFile", "parse_lines"]

_STATE_VERSION = 1


@dataclass(frozen=True)
class Line:
    """One line of the input (or one generated update)."""

    number: int
    start: int  # byte offsets of the line in the input (0 for generated updates)
    end: int
    text: str | None  # the line as read, for the failed file (None when generated)
    item: dict[str, Any] | None  # None: a blank line, or a bad one
    problem: str | None = None  # why the line is not an item


@dataclass(frozen=True)
class Checkpoint:
    """Every line up to `line` (ending at byte `offset`) is written or in the failed file."""

    line: int
    offset: int


def parse_lines(stream: IO[bytes], *, first_line: int, offset: int) -> Iterator[Line]:
    """The lines of `stream`, numbered from `first_line`, `offset` being the first's byte."""
    number, position = first_line - 1, offset
    for raw in stream:
        number += 1
        start, position = position, position + len(raw)
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as error:
            yield Line(number, start, position, None, None, f"not UTF-8 text ({error})")
            continue
        if not text:
            yield Line(number, start, position, None, None)
            continue
        try:
            value = json.loads(
                text, parse_float=Decimal, parse_int=Decimal, parse_constant=_no_constant
            )
        except ValueError as error:
            yield Line(number, start, position, text, None, f"malformed JSON ({error})")
            continue
        except RecursionError:  # a bad line like any other, not the end of the run
            problem = "nested too deeply to read (DynamoDB allows 32 levels)"
            yield Line(number, start, position, text, None, problem)
            continue
        if not isinstance(value, dict):
            problem = f"not a JSON object (one item per line), but {type(value).__name__}"
            yield Line(number, start, position, text, None, problem)
            continue
        yield Line(number, start, position, text, value)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number DynamoDB can store")


class FailedFile:
    """The failed file: one JSON object per line that was not written, opened on first use.

    It holds items, so only its owner may read it (0600, also when an earlier run's file is
    appended to).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.used = False
        self._file: IO[str] | None = None

    def __enter__(self) -> FailedFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()

    def write(self, line: Line, reason: str) -> None:
        if self._file is None:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.fchmod(descriptor, 0o600)
            self._file = os.fdopen(descriptor, "a", encoding="utf-8")
            self.used = True
        head = f'{{"line": {line.number}, "reason": {json.dumps(reason, ensure_ascii=False)}, '
        if line.item is None:
            self._file.write(f'{head}"text": {json.dumps(line.text, ensure_ascii=False)}}}\n')
        elif line.text is not None:
            self._file.write(f'{head}"item": {line.text}}}\n')  # as read: numbers stay exact
        else:
            self._file.write(f'{head}"item": {json.dumps(line.item, ensure_ascii=False)}}}\n')

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()


@dataclass(frozen=True)
class ProgressFile:
    """Where the progress of writing `source` into `table` is kept."""

    path: Path
    source: Path
    table: str

    def save(self, checkpoint: Checkpoint) -> None:
        state = {
            "version": _STATE_VERSION,
            "input": str(self.source.resolve()),
            "table": self.table,
            "line": checkpoint.line,
            "offset": checkpoint.offset,
        }
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(state) + "\n", encoding="utf-8")
        temporary.replace(self.path)  # atomic: a crash leaves the old or the new, never half

    def load(self) -> Checkpoint | None:
        """Where the last run stopped; None when it saved nothing yet. Raises `UserError` for a
        file about another input or table, or an input that shrank since."""
        if not self.path.exists():
            return None
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            input_path, table = saved["input"], saved["table"]
            line, offset = int(saved["line"]), int(saved["offset"])
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"progress file {self.path} is unreadable ({error}): remove it"
            ) from None
        if Path(input_path) != self.source.resolve() or table != self.table:
            raise UserError(
                f"progress file {self.path} is for {input_path} into table {table!r}, not "
                f"{self.source} into {self.table!r}: choose another with --state"
            )
        if offset > self.source.stat().st_size:
            raise UserError(
                f"{self.source} is shorter than when {self.path} was saved: it changed, so "
                f"resuming would skip the wrong lines; run without --resume"
            )
        return Checkpoint(line, offset)


class Ingest:
    """Puts lines into `writer` and keeps track of which are done (see the module docstring).

    `on_bad_line(line, problem)` is told of each line that is not an item (besides the failed
    file). `lines` and `position` say how far the input has been read; `bad` counts bad lines.
    """

    def __init__(
        self,
        writer: TableWriter,
        failed: FailedFile,
        progress: ProgressFile | None = None,
        *,
        start: Checkpoint = Checkpoint(0, 0),
        on_bad_line: Callable[[Line, str], None] = lambda line, problem: None,
    ) -> None:
        self.writer = writer
        self.failed = failed
        self.progress = progress
        self.lines, self.position = start.line, start.offset
        self.saved = start.line  # what the progress file says is done
        self.bad = 0
        self._on_bad_line = on_bad_line
        self._outstanding: dict[int, Line] = {}  # by write number
        self._failures_seen = 0

    def put(self, line: Line) -> None:
        self.lines, self.position = line.number, line.end
        if line.problem is not None:
            self._bad(line, line.problem)
        elif line.item is not None:
            try:
                self._outstanding[self.writer.put(line.item)] = line
            except InvalidItemError as error:
                self._bad(line, str(error))

    def checkpoint(self) -> Checkpoint:
        """Write new failures to the failed file, then save how far every line is done."""
        done = self.writer.completed_through()  # first: every failure up to it is reported
        failed = self.writer.report.failed
        for failure in failed[self._failures_seen :]:
            self.failed.write(self._outstanding[failure.seq], failure.reason)
        self._failures_seen = len(failed)
        for seq in [seq for seq in self._outstanding if seq <= done]:
            del self._outstanding[seq]
        if self._outstanding:
            first = next(iter(self._outstanding.values()))
            checkpoint = Checkpoint(first.number - 1, first.start)
        else:
            checkpoint = Checkpoint(self.lines, self.position)
        self.failed.flush()
        if self.progress is not None:
            self.progress.save(checkpoint)
            self.saved = checkpoint.line
        return checkpoint

    def _bad(self, line: Line, problem: str) -> None:
        self.bad += 1
        self._on_bad_line(line, problem)
        self.failed.write(line, problem)
