"""`pneumotune status RESULTS_DIR --watch`: the trial table, refreshed while a search runs.

Reads the search folder the way `status` does (:func:`search.results.summarise`, no
Ray), every ``interval`` seconds, until every trial has finished. On a terminal the
table is redrawn in place (``rich.live.Live``); otherwise (a pipe, a log file) the
plain :meth:`SearchSummary.describe` text is printed again only when it changed, so a
log holds one copy per change, not one per interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from pneumotune.errors import UsageError
from pneumotune.search.results import (
    PAUSED,
    SEARCH_ENDED,
    SearchSummary,
    TrialRecord,
    failure_lines,
    memory_cell,
    summarise,
)
from pneumotune.text import short

OUTCOME_STYLES = {
    "completed": "blue",
    "stopped by ASHA": "yellow",
    "running": "green",
    PAUSED: "cyan",
    "pending": "dim",
    SEARCH_ENDED: "yellow",
}
FAILED_STYLE = "bold red"  # every failure outcome: failed, killed: out of memory, ...
FIXED_COLUMNS_WIDTH = 58  # trial, outcome, epochs and best columns, with their padding
MEMORY_COLUMN_WIDTH = 12  # "memory MB" and its padding, when a trial reported memory


def is_finished(summary: SearchSummary) -> bool:
    """True when no trial runs or waits and no more will come.

    More trials come while fewer than ``num_samples`` exist, unless the search wrote
    ``search.json`` (it does at its end, also when a stopper ended it early).
    """
    if any(t.outcome in ("running", PAUSED, "pending") for t in summary.trials):
        return False
    if (summary.path / "search.json").is_file():
        return True
    return len(summary.trials) >= summary.num_samples  # pneumotune.json's, checked


def _best(t: TrialRecord, summary: SearchSummary) -> str:
    value, epoch = t.best(summary.metric, summary.mode)
    return "-" if value is None else f"{value:.4f} @{epoch}"


def fitting_params(summary: SearchSummary, width: int) -> list[str]:
    """The searched parameters whose columns fit in ``width`` characters, in order."""
    params = [p for p in summary.searched if any(p in t.config for t in summary.trials)]
    room, shown = width - FIXED_COLUMNS_WIDTH - MEMORY_COLUMN_WIDTH * _has_memory(summary), []
    for p in params:
        need = max([len(p), *(len(short(t.config.get(p, ""))) for t in summary.trials)]) + 3
        if need > room:
            break
        shown.append(p)
        room -= need
    return shown


def _has_memory(summary: SearchSummary) -> bool:
    return any(t.memory_mb is not None for t in summary.trials)


def _style(t: TrialRecord) -> str:
    return FAILED_STYLE if t.failed else OUTCOME_STYLES.get(t.outcome, "")


def trial_table(summary: SearchSummary, width: int = 200) -> Table:
    """A rich table of every trial: outcome, epochs, best metric @ epoch, searched values."""
    params = fitting_params(summary, width)
    hidden = len([p for p in summary.searched if any(p in t.config for t in summary.trials)])
    hidden -= len(params)
    best = summary.best
    counts = ", ".join(f"{n} {k}" for k, n in sorted(summary.counts().items()))
    caption = f"{len(summary.trials)} trials ({counts}); {summary.trial_epochs} trial-epochs"
    gain = summary.gain_over_tutorial()
    if gain is not None:
        caption += f"; gain over the tutorial {gain:+.4f}"
    if hidden:
        caption += f"; {hidden} more parameters do not fit this terminal"
    table = Table(
        title=f"Search {summary.name}: {summary.metric} ({summary.mode})",
        caption=caption + "  (* best, T tutorial)",
        header_style="bold",
    )
    table.add_column("trial", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("epochs", justify="right", no_wrap=True)
    table.add_column(f"best {summary.metric}", justify="right", no_wrap=True)
    memory = _has_memory(summary)
    if memory:  # the private memory of the trial's process at its latest report
        table.add_column("memory MB", justify="right", no_wrap=True)
    for p in params:
        table.add_column(p, justify="right", no_wrap=True)
    for t in summary.trials:
        mark = " *" if t is best else (" T" if t.is_tutorial else "")
        table.add_row(
            t.trial_id + mark,
            Text(t.outcome, style=_style(t)),
            f"{t.epochs}/{summary.max_t}",
            _best(t, summary),
            *([memory_cell(t)] * memory),
            *(short(t.config[p]) if p in t.config else "n/a" for p in params),
            style="bold" if t is best else None,
        )
    return table


def render(summary: SearchSummary, width: int = 200) -> RenderableType:
    """The table, then each failed trial's reason (for a memory failure also the memory
    it held and what to change) and the time of this reading."""
    lines = [
        Text(line, style="red") for t in summary.trials if t.failed for line in failure_lines(t)
    ]
    lines += [Text(f"Not read: {note}", style="yellow") for note in summary.notes]
    state = "finished" if is_finished(summary) else "running"
    lines.append(Text(f"{state}; read at {time.strftime('%H:%M:%S')}", style="dim"))
    return Group(trial_table(summary, width), *lines)


def watch(
    results_dir: Path,
    interval: float = 5.0,
    *,
    console: Console | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SearchSummary:
    """Show the trial table every ``interval`` seconds until the search has finished.

    Returns the last :class:`SearchSummary` read. Ctrl-C ends it early
    (``KeyboardInterrupt`` propagates; the search itself is not touched).
    """
    if interval <= 0:
        raise UsageError(f"interval must be > 0 seconds, got {interval}")
    console = console or Console()
    if not console.is_terminal:
        return _watch_plain(Path(results_dir), interval, console, sleep)
    from rich.live import Live

    summary = summarise(Path(results_dir))
    # auto_refresh off: the table only changes when the folder is read again.
    with Live(render(summary, console.width), console=console, auto_refresh=False) as live:
        while not is_finished(summary):
            sleep(interval)
            summary = summarise(Path(results_dir))
            live.update(render(summary, console.width), refresh=True)
    return summary


def _watch_plain(
    path: Path, interval: float, console: Console, sleep: Callable[[float], None]
) -> SearchSummary:
    last = None
    while True:
        summary = summarise(path)
        text = summary.describe()
        if text != last:
            console.out(text, highlight=False)
            last = text
        if is_finished(summary):
            return summary
        sleep(interval)
