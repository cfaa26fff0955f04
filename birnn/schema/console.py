"""What the command lines print around their work: one-line errors, help, program names, closed pipes.

``birnn-train`` runs under Hydra, which wraps every error in its own report ("Error executing job with
overrides: [...]", a sanitized traceback, "Set the environment variable HYDRA_FULL_ERROR=1 ...") and
advises ``+key=value`` for a misspelled key. :func:`one_line_errors` has Hydra re-raise instead and prints
one ``error:`` line per bad input; an unexpected exception (a bug) keeps its traceback. Setting
``HYDRA_FULL_ERROR=1`` yourself brings Hydra's own reporting back.
"""

from __future__ import annotations

import difflib
import functools
import io
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from birnn.schema.errors import BirnnError

INTERNAL_GROUPS = "schema/"  # structured-config schemas: composed by the YAMLs, never chosen by a user
SWEEP_TYPE = re.compile(r"\b(Choice|Range|Interval)Sweep\b")  # a sweep where a value belongs (Hydra's error text)
# an unquoted sweep call, with one level of nesting: choice(16,32), tag(log,interval(1e-4,3e-2))
SWEEP_CALL = re.compile(r"(?<!')\b((?:choice|range|interval|tag|glob)\((?:[^()]|\([^()]*\))*\))")


class JobFailed(Exception):
    """A Hydra job ended with an error; carries the job's record (overrides, dirs) beside the error."""

    def __init__(self, job: JobReturn):
        super().__init__(str(job._return_value))
        self.job = job


def _job_result(job: JobReturn) -> Any:
    """``JobReturn.return_value`` without Hydra's "Error executing job with overrides" line."""
    assert job.status != JobStatus.UNKNOWN, "return_value not yet available"
    if job.status == JobStatus.COMPLETED:
        return job._return_value
    raise JobFailed(job) from job._return_value


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Run a Hydra entry point; report a bad input as one ``error:`` line on stderr and exit 1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        yield  # the user asked for Hydra's full reports
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its report
    try:
        with mock.patch.object(JobReturn, "return_value", property(_job_result, JobReturn.return_value.fset)):
            yield
    except JobFailed as failed:
        message = describe(failed.__cause__)
        if message is None:
            raise failed.__cause__ from None  # a bug: its own traceback
        note = _sweep_note(failed.job)
        if note:  # one full stop between the message and the note, whether or not the message ends with one
            message = f"{message.removesuffix('.')}. {note}"
        print(f"error: {_job_name(failed.job)}{message}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as e:
        message = describe(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        del os.environ["HYDRA_FULL_ERROR"]


def describe(error: BaseException | None) -> str | None:
    """The message for a bad input (birnn's own, or a config Hydra could not compose); None for a bug."""
    if isinstance(error, BirnnError):
        first, *rest = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
        return " ".join([first, "; ".join(rest)]) if rest else first
    cause = error.__cause__ if error is not None else None
    if isinstance(error, ConfigCompositionException) and isinstance(cause, ConfigKeyError | ConfigAttributeError):
        return unknown_key(cause)
    if isinstance(error, ValueError) and str(error).startswith("Unable to configure handler"):
        error, cause = cause, None  # Hydra could not open the job's log file (train.log) for appending
    if isinstance(error, OSError) and error.filename is not None:  # Hydra writing its record or log into the dir
        return (
            f"Cannot write {error.filename}: {error.strerror or error}. The run dir must be writable (a resume "
            "writes its log and a .hydra/resume-N record there): make it writable or copy it elsewhere"
        )
    if isinstance(error, MissingConfigException):
        return missing_option(str(error))
    if isinstance(error, OverrideParseException):
        return f"Cannot parse the override {error.override}: {str(error).splitlines()[0]}"
    if isinstance(error, ConfigCompositionException):
        lines = [str(error).splitlines()[0]]
        if SWEEP_TYPE.search(str(cause)):
            return unquoted_sweep(lines[0].removeprefix("Error merging override "))
        if isinstance(cause, OmegaConfBaseException):
            lines.append(str(cause).splitlines()[0])
        return ": ".join(lines)
    return None


def unquoted_sweep(override: str) -> str:
    """Hydra reads ``choice(...)`` inside ``{...}`` or ``[...]`` as a sweep, which no value can hold: the override
    again with each such call quoted (``search.params={model.hidden_size:'choice(16,32)'}``)."""
    quoted = SWEEP_CALL.sub(r"'\1'", override)
    return (
        f"{override}: a choice/range/interval inside {{...}} or [...] must be quoted, and the whole override "
        f'too for the shell: "{quoted}"'
    )


def unknown_key(error: ConfigKeyError | ConfigAttributeError) -> str:
    """``model.hiden_size is not a config key. Did you mean model.hidden_size?`` (difflib's close matches)."""
    full_key = error.full_key or str(error.key)
    prefix = full_key.rpartition(".")[0]
    node = error.parent_node
    keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    matches = difflib.get_close_matches(full_key.rpartition(".")[2], keys, n=3)
    named = [f"{prefix}.{m}" if prefix else m for m in matches]
    if named:
        return f"{full_key} is not a config key. Did you mean {' or '.join(named)}?"
    where = f"{prefix} takes" if prefix else "the top-level keys are"
    if full_key.startswith("model.char_"):  # a model other than birnn's RNNClassifier
        where = "character features belong to birnn's recurrent classifier, model=bilstm or bigru; this model takes"
    return f"{full_key} is not a config key ({where} {', '.join(keys)})"


def missing_option(message: str) -> str:
    """Hydra's "Could not find 'data/nope'" with its option list, on one line and without the search path."""
    head, _, rest = message.partition("\n\nAvailable options in ")
    options = [line.strip() for line in rest.split("Config search path:")[0].splitlines()[1:] if line.strip()]
    head = head.removeprefix("In 'config': ")
    return f"{head} (options: {', '.join(options)})" if options else head


def _multirun(job: JobReturn) -> DictConfig | None:
    """The job's ``hydra`` config when it ran in a multirun, else None."""
    hydra = job.hydra_cfg.hydra if job.hydra_cfg is not None else None
    return hydra if hydra is not None and hydra.mode == RunMode.MULTIRUN else None


def _job_name(job: JobReturn) -> str:
    """``job 3 (optimizer.lr=0): `` for a multirun job; nothing for a single run."""
    hydra = _multirun(job)
    return f"job {hydra.job.num} ({' '.join(job.overrides or [])}): " if hydra is not None else ""


def _sweep_note(job: JobReturn) -> str:
    """Where a failed multirun job's sweep keeps its summary (the other jobs still ran); a search worker's
    sweep has none (its study dir has the study's summaries)."""
    hydra = _multirun(job)
    if hydra is None or (job.cfg is not None and job.cfg.get("search") is not None):
        return ""
    sweep_dir = Path(hydra.runtime.output_dir).parents[len(Path(str(hydra.sweep.subdir)).parts) - 1]
    return f"Sweep dir {sweep_dir}; its summary: {sweep_dir / 'summary.md'}"


def run_hydra(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function; its ``--help`` lists the config groups without the internal ``schema/*``."""
    if not {"--help", "-h"} & set(sys.argv[1:]):
        main()
        return
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            main()  # Hydra prints the help and exits
    finally:
        print("".join(line for line in out.getvalue().splitlines(True) if not line.startswith(INTERNAL_GROUPS)), end="")


def prog(module: str) -> str:
    """The name a command was started by: its console script (``birnn-predict``) or ``python -m birnn.predict``."""
    name = Path(sys.argv[0]).name
    return name if name.startswith("birnn-") else f"python -m {module}"


def closed_pipe_ok(main: Callable[..., Any]) -> Callable[..., Any]:
    """Let a command's output go into a pipe that closes early (``| head``) without a BrokenPipeError traceback."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> Any:
        try:
            try:
                return main(argv)
            finally:
                sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
        except BrokenPipeError:
            # Python's documented recipe: point stdout at devnull so the interpreter's final flush stays quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None

    return wrapper
