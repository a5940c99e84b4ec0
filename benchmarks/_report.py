"""Writes a benchmark's markdown tables to a file, under a header that states the conditions of the run.

Every benchmark script prints its tables and, given ``--out PATH``, also writes them to ``PATH``
(``benchmarks/results/<name>.md`` by convention; ``benchmarks/README.md`` lists the commands).  The file
starts with the command that produced it and one line of conditions: CPU model, cores, torch threads, torch
and lovasz versions, the allocator settings that the run inherited, the date.  A script adds what only it
knows (labels, allocator per table, GPU) with ``extra``.

    from _report import Tee, add_out_argument, write

    parser = argparse.ArgumentParser(...)
    add_out_argument(parser, "sampler")          # --out PATH
    args = parser.parse_args()
    tee = Tee().start()                          # print as usual; the printed text is kept
    print(...)
    tee.stop()
    if args.out:
        write(args.out, "Rare classes per batch", tee.text)
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import shlex
import sys
from pathlib import Path

_MALLOC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def allocator() -> str:
    """The glibc allocator settings this process inherited (they decide whether large buffers are reused)."""
    set_vars = [f"{k}={os.environ[k]}" for k in _MALLOC_VARS if k in os.environ]
    return ", ".join(set_vars) if set_vars else "glibc default"


def conditions(extra: str = "", alloc: str | None = None) -> str:
    """One line: machine, threads, versions, allocator (``alloc`` where the script sets its own), date
    (UTC), and ``extra``."""
    import torch

    try:
        import lovasz

        version = lovasz.__version__
    except ImportError:
        version = "not importable"
    parts = [
        f"CPU: {cpu_model()} ({os.cpu_count()} cores visible)",
        f"{torch.get_num_threads()} torch threads",
        f"torch {torch.__version__}",
        f"lovasz {version}",
        f"python {platform.python_version()}",
        f"allocator: {alloc or allocator()}",
    ]
    if torch.cuda.is_available():
        parts.insert(1, f"GPU: {torch.cuda.get_device_name()}")
    if extra:
        parts.append(extra)
    parts.append(datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return "; ".join(parts)


def command() -> str:
    """The command line that started this process, as one would type it from the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def add_out_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out PATH``: also write the printed tables there (suggested: ``benchmarks/results/<name>.md``)."""
    parser.add_argument(
        "--out",
        metavar="PATH",
        help=f"also write the tables, under a header of the run's conditions, to this markdown file "
        f"(the results file is benchmarks/results/{name}.md)",
    )


def write(path: str | os.PathLike, title: str, body: str, extra: str = "", alloc: str | None = None) -> Path:
    """Writes ``# title``, the command, the conditions line and ``body`` to ``path`` (folders made)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\nCommand: `{command()}`\n\nConditions: {conditions(extra, alloc)}\n\n{body.strip()}\n"
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return out


class Tee(io.TextIOBase):
    """While active, what is printed to stdout still goes there and is also kept in :attr:`text`."""

    def __init__(self) -> None:
        self._kept = io.StringIO()
        self._stdout = sys.stdout

    def write(self, s: str) -> int:
        self._kept.write(s)
        return self._stdout.write(s)

    def flush(self) -> None:
        self._stdout.flush()

    @property
    def text(self) -> str:
        return self._kept.getvalue()

    def start(self) -> Tee:
        self._stdout = sys.stdout
        sys.stdout = self
        return self

    def stop(self) -> str:
        """Restores stdout; returns the text kept."""
        if sys.stdout is self:
            sys.stdout = self._stdout
        return self.text

    def __enter__(self) -> Tee:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
