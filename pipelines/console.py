"""What the terminal shows: sslpipe's own progress, warnings and errors; everything else goes to a log file.

One channel per kind of output: sslpipe's progress lines go through ``say`` (driver and workers alike);
diagnostics through ``logging`` (the run log in quiet mode; warnings of sslpipe's loggers also reach the
terminal); ``print`` is left to the CLI's results and errors (``cli.py``) and to the standalone export loader.

``say`` writes progress lines, also from inside Ray Train workers. Ray Train V2 replaces ``print`` in its
workers with a version that logs the message through the root logger (to the worker's stderr) *and*,
whenever ``sys.stdout`` is not ``sys.__stdout__``, also prints it. Ray's workers always wrap
``sys.stdout`` (``ray._private.utils.Unbuffered``), so every ``print`` in a train function reaches the
driver twice (Ray 2.60). Writing to the stream directly bypasses the patch: the line goes to the
worker's stdout once, and Ray's log monitor forwards it to the driver. Outside Ray (in-process runs,
tests) it is an ordinary print.

``quiet_console`` (what the CLI does unless ``--verbose``) splits the output. Without it a run's terminal
is mostly Ray: every worker's "Reporting training result ... TrainingReport(...)" block and "Checkpoint
successfully created" each epoch, Ray Data's INFO lines and one progress bar per operator (a worker's
bars keep redrawing after the run is done), faiss's loader lines, Ray's own warnings. In quiet mode:

* the driver's loggers (``ray``, ``ray.data``, ``ray.train``, ``ray.tune``, every library) write to the
  run log; the terminal gets sslpipe's own warnings (``[warning] ...``) and anything at ERROR or above;
* Ray Data keeps one progress bar per dataset on the driver (no per-operator bars), its logger config
  (``RAY_DATA_LOGGING_CONFIG``, which Ray Data re-applies whenever a dataset context changes) sends its
  records to the root logger instead of the console;
* worker output that Ray forwards to the driver is routed line by line: sslpipe's lines (``[pretrain]
  epoch ...``, tagged warnings) to the terminal, everything to the run log, workers' progress bars
  nowhere. Notices of the raylet and autoscaler (a task killed for memory, a node added) still print.
  The router replaces Ray's own "ray_print_logs" handler of the driver's log dispatcher
  (``ray._private.ray_logging``, a private hook; without it Ray prints as before);
* a ``worker_process_setup_hook`` (Ray's documented way to configure worker loggers) tags the WARNING+
  records of sslpipe's loggers in workers, so the router can tell them from Ray's bare lines;
* everything printed to stdout is copied to the run log as well, so the log reads in order.

The log file is ``RUN_DIR/run.log`` (``attach_run_log``, once the run directory exists; lines from
before are kept and written first); its path is printed once. A run that fails prints its cause (for a
Ray Train failure, the worker's error snippet) and where the full traceback is (``report_failure``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Optional, TextIO

#: the tags that start sslpipe's own lines; such a line from a worker goes to the terminal
OWN_TAGS = ("run", "pool", "shard", "curate", "pretrain", "evaluate", "eval", "sweep", "report", "monitor",
            "warning", "error")
OWN_LINE = re.compile(r"^\[(?:" + "|".join(OWN_TAGS) + r")\] ")
#: sslpipe's logger names: their warnings are for the user, other libraries' go to the log
OWN_LOGGERS = ("pipelines", "curation", "ssl_models", "sslpipe")
#: loggers that Ray gives their own console handlers (and propagate=False)
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air")
LOG_NAME = "run.log"
#: lines kept in memory until the run directory (and so the log file) exists
MAX_PENDING = 20000
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Ray Data's logger config in quiet mode: its session file as usual, records on to the root logger
RAY_DATA_LOGGING = """version: 1
disable_existing_loggers: false
formatters:
  ray: {format: "%(asctime)s\\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"}
handlers:
  file: {class: ray.data._internal.logging.SessionFileHandler, formatter: ray, filename: ray-data.log}
loggers:
  ray.data: {level: DEBUG, handlers: [file], propagate: true}
"""


def say(message: str) -> None:
    """Write one line to stdout and flush it, without going through ``builtins.print``."""
    stream = sys.stdout
    stream.write(message + "\n")
    stream.flush()


def add_verbose_option(parser: Any) -> None:
    """``--verbose``: Ray's and the libraries' logs on the terminal, as Ray prints them."""
    parser.add_argument("--verbose", action="store_true",
                        help="print Ray's and the libraries' logs here too (default: only in RUN_DIR/run.log)")


class _RunLog:
    """The run log: lines wait in memory until the file is known, then go to it (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list[str] = []
        self.file: Optional[TextIO] = None
        self.path: Optional[Path] = None

    def write(self, line: str) -> None:
        with self.lock:
            if self.file is not None:
                self.file.write(line if line.endswith("\n") else line + "\n")
                self.file.flush()
            elif len(self.pending) < MAX_PENDING:
                self.pending.append(line)

    def open(self, path: Path) -> None:
        with self.lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.file is not None:
                self.file.close()
            self.file = path.open("a", encoding="utf-8", errors="replace")
            self.path = path
            self.file.write(f"===== sslpipe {' '.join(sys.argv[1:])} | {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
            for line in self.pending:
                self.file.write(line if line.endswith("\n") else line + "\n")
            self.pending.clear()
            self.file.flush()


class _LogFileHandler(logging.Handler):
    """Every record at INFO and above, formatted, to the run log."""

    def __init__(self, log: _RunLog) -> None:
        super().__init__(logging.INFO)
        self.log = log
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def _is_own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class _TerminalHandler(logging.Handler):
    """sslpipe's warnings and everyone's errors, one line each, on stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "log_only", False):
            return False
        return record.levelno >= logging.ERROR or _is_own(record.name)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tag = "[warning]" if record.levelno < logging.ERROR else "[error]"
            source = "" if _is_own(record.name) else f"{record.name}: "
            sys.stderr.write(f"{tag} {source}{record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            self.handleError(record)


class _TeeStdout:
    """sys.stdout that also copies what is printed to the run log (isatty, fileno ... are the terminal's)."""

    def __init__(self, stream: TextIO, log: _RunLog) -> None:
        self._stream, self._log, self._partial = stream, log, ""

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if line.strip():
                self._log.write(line)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Console:
    """Process-wide state of the quiet console."""

    def __init__(self) -> None:
        self.quiet = False
        self.log = _RunLog()
        self.routed = False


_console = _Console()


def is_quiet() -> bool:
    return _console.quiet


def log_path() -> Optional[Path]:
    """The run log's path once attached (None before, or when the console is not quiet)."""
    return _console.log.path


def quiet_console() -> None:
    """Route libraries' logs to the run log; the terminal keeps sslpipe's progress, warnings and errors.

    Called once by the CLI before Ray starts (Ray logs its first warnings during ``ray.init``).
    """
    if _console.quiet:
        return
    _console.quiet = True
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(_LogFileHandler(_console.log))
    root.addHandler(_TerminalHandler())
    logging.captureWarnings(True)  # Python warnings (deprecations of libraries) to the log as well
    sys.stdout = _TeeStdout(sys.stdout, _console.log)
    import ray.data  # noqa: F401 - configures the ray.data logger, which we then take over

    _take_over_ray_loggers()


def _take_over_ray_loggers() -> None:
    """Drop the console handlers Ray gives its loggers and let their records reach ours."""
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True


def ray_init_options() -> dict[str, Any]:
    """Extra ``ray.init`` arguments in quiet mode: the worker hook and the driver's Ray log level."""
    if not _console.quiet:
        return {}
    return {"runtime_env": {"worker_process_setup_hook": "pipelines.console.setup_worker_logging"},
            "logging_level": logging.INFO}  # Ray's own INFO lines go to the run log, not the terminal


def route_ray_output() -> None:
    """After ``ray.init`` in quiet mode: route forwarded worker output, one Ray Data bar per dataset."""
    if not _console.quiet or _console.routed:
        return
    import ray

    path = Path(tempfile.mkdtemp(prefix="sslpipe-")) / "ray_data_logging.yaml"
    path.write_text(RAY_DATA_LOGGING)
    # set after ray.init, so only this process reads it (a worker node may not have this file)
    os.environ["RAY_DATA_LOGGING_CONFIG"] = str(path)
    from ray.data._internal.logging import configure_logging

    configure_logging()
    _take_over_ray_loggers()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_operator_progress_bars = False
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # a Ray without this hook: its own printing stays
        logging.getLogger("sslpipe.console").info("Ray's worker log dispatcher not found; worker output unfiltered")
        return
    terminal = sys.stdout._stream if isinstance(sys.stdout, _TeeStdout) else sys.stdout  # the router logs itself
    router = WorkerOutputRouter(_console.log, terminal, ray_worker.print_to_stdstream)
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", router)  # same name: ray.shutdown removes it
    _console.routed = True


class WorkerOutputRouter:
    """Ray's driver hands each batch of forwarded worker lines to this: all of them to the run log,
    sslpipe's own lines to the terminal, workers' progress bars nowhere. Batches of the raylet and the
    autoscaler (a task killed for memory, a node added) go to Ray's own printer, as before."""

    def __init__(self, log: _RunLog, terminal: TextIO, ray_printer: Any) -> None:
        self.log, self.terminal, self.ray_printer = log, terminal, ray_printer

    def __call__(self, data: dict[str, Any]) -> None:
        pid = data.get("pid")
        if pid in ("raylet", "autoscaler"):
            self.ray_printer(data, ignore_prefix=False)
            return
        source = data.get("actor_name") or data.get("task_name") or ""
        ip = data.get("ip")
        where = f"({source + ' ' if source else ''}pid={pid}{'' if ip == data.get('localhost') else f', ip={ip}'})"
        shown = []
        for line in data.get("lines", []):
            if "__ray_tqdm_magic_token__" in line or not line.strip():  # a worker's progress bar: not drawn
                continue
            self.log.write(f"{where} {line}")
            if OWN_LINE.match(line):
                shown.append(line)
        if shown:
            self.terminal.write("".join(line + "\n" for line in shown))
            self.terminal.flush()


def attach_run_log(run_dir: str | Path, name: str = LOG_NAME) -> Optional[Path]:
    """In quiet mode, open ``run_dir/name`` (appending) and say once where it is; None otherwise."""
    if not _console.quiet:
        return None
    if "://" in str(run_dir):  # a bucket run directory: the log stays local (objects cannot be appended to)
        path = Path(tempfile.gettempdir()) / "sslpipe-logs" / f"{int(time.time())}-{name}"
    else:
        path = Path(run_dir).resolve() / name
    if _console.log.path == path:
        return path
    _console.log.open(path)
    say(f"[run] Ray's and the libraries' logs: {path} (--verbose prints them here)")
    return path


def setup_worker_logging() -> None:
    """``worker_process_setup_hook`` in quiet mode: sslpipe's warnings in a worker become tagged lines.

    A Ray Train worker prints log records bare (no level), so the driver could not tell sslpipe's warning
    from Ray's chatter; tagged, it reaches the terminal. Other records of sslpipe's loggers print bare
    (the run log keeps them), once: these loggers stop propagating to the worker's root handlers.
    """
    handler = _WorkerTagHandler()
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False


class _WorkerTagHandler(logging.Handler):
    """sslpipe's records in a worker: WARNING and up as ``[warning]``/``[error]`` lines, others bare."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.ERROR:
                say(f"[error] {record.getMessage()}")
            elif record.levelno >= logging.WARNING:
                say(f"[warning] {record.getMessage()}")
            else:
                say(record.getMessage())
        except Exception:  # noqa: BLE001
            self.handleError(record)


#: at most this many lines of a failure's message on the terminal (a worker's error snippet fits)
MAX_FAILURE_LINES = 40
#: the line of a traceback that names the error: "ValueError: ...", "ray.exceptions.RayTaskError(...): ..."
ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b[^:]*:")
OUR_CODE = tuple(f"{os.sep}{package}{os.sep}" for package in ("pipelines", "curation", "ssl_models"))


def _cause(exc: BaseException, text: str) -> str:
    """The one line that says what went wrong: the last error line of a worker's traceback inside the
    message (Ray Train and Ray Data failures carry one), else the exception itself and where our code
    raised it."""
    errors = [line.strip() for line in text.splitlines() if ERROR_LINE.match(line.strip())]
    if "Traceback (most recent call last)" in text and errors:
        return errors[-1]
    ours = [f for f in traceback.extract_tb(exc.__traceback__) if any(part in f.filename for part in OUR_CODE)]
    where = f" (at {Path(ours[-1].filename).name}:{ours[-1].lineno} in {ours[-1].name})" if ours else ""
    return f"{type(exc).__name__}{where}: {text.splitlines()[0] if text else ''}"


def report_failure(exc: BaseException) -> None:
    """A run that failed: its cause on the terminal, the full traceback in the run log (quiet mode).

    The first line names the error; for a Ray failure the message follows, which holds the failing
    worker's error snippet (its traceback's last frames), so the cause is on the terminal, not only in a file.
    """
    from storage import redact  # a message or traceback that quotes a uri must not print its keys

    full = redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    logging.getLogger("sslpipe").error("the run failed:\n%s", full, extra={"log_only": True})
    text = redact(str(exc).strip() or repr(exc))
    lines = text.splitlines()
    if len(lines) > MAX_FAILURE_LINES:
        lines = lines[:MAX_FAILURE_LINES] + [f"... ({len(lines) - MAX_FAILURE_LINES} more lines in the log)"]
    err = sys.stderr
    err.write(f"sslpipe: error: {_cause(exc, text)}\n")
    if log_path() is None:  # failed before the run directory existed: no log to point to
        err.write(full)
    else:
        if len(lines) > 1:
            err.write("".join(f"  {line}\n" for line in lines))
        err.write(f"sslpipe: the full traceback is in {log_path()} (--verbose prints it here)\n")
    err.flush()
