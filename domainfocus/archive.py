"""An archive restored by restore.py across runs and processes: which texts an output already holds
(for --resume), the parts each process writes beside the output under torchrun, and merging them
into one file in input order. Lines are written whole, so an interrupt leaves complete lines only."""

import json
import os
import sys


class ArchiveError(ValueError):
    """An output that does not belong to the input, or texts missing from it: the user can fix it."""


# A part is a file beside the output, `OUTPUT.part-000001234`, holding complete lines for the texts
# from 1234 (counted from 0) on, one after another; the output itself holds them from text 0.

PART = ".part-"


def part_paths(output):
    """[(first text, path)] of the parts beside `output`, in input order."""
    folder, base = os.path.dirname(os.path.abspath(output)), os.path.basename(output) + PART
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted((int(name[len(base):]), os.path.join(folder, name)) for name in names
                  if name.startswith(base) and name[len(base):].isdigit())


def remove_parts(output):
    for _, path in part_paths(output):
        os.remove(path)


def lines_of(path):
    """(number, line) of each complete line of `path`, read one at a time (an archive's output need
    not fit in memory; a kill can cut the last line short, and it is left out)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if line.endswith("\n"):
                yield number, line


def drop_cut_line(path):
    """Cut off the end of `path` after its last line end (a line a kill left half-written)."""
    with open(path, "rb+") as handle:
        position = handle.seek(0, os.SEEK_END)
        while position > 0:  # read backwards: an archive's output need not fit in memory
            step = min(1 << 16, position)
            handle.seek(position - step)
            found = handle.read(step).rfind(b"\n")
            if found >= 0:
                handle.truncate(position - step + found + 1)
                return
            position -= step
        handle.truncate(0)


def read_records(path):
    """The records of `path`, one complete line at a time (an archive's output need not fit in memory)."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.endswith("\n"):
                yield json.loads(line)


def written_before(output, examples):
    """The texts (indices) whose restoration is a complete line of `output` or of its parts, each line
    checked to be the restoration of that text of the input."""
    done = set()
    for start, path in [(0, output)] + part_paths(output):
        for offset, line in lines_of(path):
            index = start + offset
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if index >= len(examples) or not isinstance(record, dict) or \
                    record.get("inputs") != examples[index].document.text:
                raise ArchiveError(f"--resume: line {offset + 1} of {path} is not the restoration of text {index + 1} "
                                   "of --input; resume with the input (and options) of the interrupted run.")
            done.add(index)
    return done


def merge(output, examples):
    """Append the parts' lines to `output` in input order (after its complete lines), then remove them.
    Line by line: neither the output nor a part is ever held in memory whole."""
    done = written_before(output, examples)
    missing = [index + 1 for index in range(len(examples)) if index not in done]
    if missing:
        raise ArchiveError(f"texts {missing[:5]} of --input are in neither {output} nor its parts; "
                           "run again with --resume.")
    if os.path.exists(output):
        drop_cut_line(output)
    written = sum(1 for _ in lines_of(output))
    with open(output, "a", encoding="utf-8") as handle:
        for start, path in part_paths(output):
            for offset, line in lines_of(path):
                if start + offset == written:  # (a text the output or an earlier part holds is skipped)
                    handle.write(line)
                    written += 1
    remove_parts(output)


def gathered(output):
    """Every process's records from the parts (OCR output under torchrun), which are then removed."""
    records = [json.loads(line) for _, path in part_paths(output) for _, line in lines_of(path)]
    remove_parts(output)
    return records


class DirectWriter:
    """Lines into the output itself, in input order, whole lines only."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, lines):
        self.handle.write("".join(line for _, line in lines))  # whole lines only: an interrupt never halves one
        self.handle.flush()

    def close(self, keep=True):
        if self.handle is not sys.stdout:
            self.handle.close()


class PartWriter:
    """Lines into parts beside `output` (None: nowhere), a new part wherever the texts skip ahead."""

    def __init__(self, output):
        self.output, self.handle, self.next, self.paths = output, None, None, []

    def write(self, lines):
        if self.output is None:
            return
        for index, line in lines:
            if index != self.next:
                self.close()
                self.paths.append(f"{self.output}{PART}{index:09d}")
                self.handle = open(self.paths[-1], "w", encoding="utf-8")
            self.handle.write(line)
            self.next = index + 1
        self.handle.flush()

    def close(self, keep=True):
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if not keep:
            for path in self.paths:
                os.remove(path)
