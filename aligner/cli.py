"""`aligner` command line: a thin click layer over the API (no analysis logic here).

Exit codes, for every command: 0 pass, 1 alignment failure (a finding of severity error, or a gate
regression), 2 usage or environment error (bad arguments, unreadable files, a framework that cannot
run, nothing compared).
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Mapping, Sequence

import click

from aligner.errors import EXIT_ERROR, EXIT_FAIL, EXIT_INTERRUPTED, EXIT_PASS, AlignerError, UsageError
from aligner.progress import Progress, folded_output
from aligner.runconfig import ISOLATE_MODES

EXIT_HELP = """\b
Exit codes:
  0  pass
  1  alignment failure (an error finding, or a gate regression)
  2  usage or environment error
  130  interrupted (Ctrl-C)"""
LANG = click.Choice(["en", "zh"])
DTYPE = click.Choice(["float32", "float64"])
# Input sizes: one stride-32 cell at least; 2048 px already needs tens of GB for a batch of GOLD-YOLO-L.
MAX_IMG_SIZE = 2048
IMG_SIZE = click.IntRange(32, MAX_IMG_SIZE)
NUM_CLASSES = click.IntRange(1, 100_000)
SEED = click.IntRange(0, 2**32 - 1)  # numpy's seed range
_debug = False  # --debug: tracebacks for every error


def _epilog(example: str) -> str:
    return f"\b\nExample:\n  {example}\n\n{EXIT_HELP}"


def interactive() -> bool:
    """Progress lines only for a person at a terminal; CI logs stay quiet."""
    return sys.stderr.isatty() and not os.environ.get("CI")


class _Progress:
    """Status lines on stderr with elapsed time (terminal only)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            click.echo(f"[{time.perf_counter() - self.t0:6.1f}s] {message}", err=True)


def _report_error(exc: BaseException) -> int:
    """One line on stderr (the traceback too with --debug); the exit code for ``exc``."""
    if _debug:
        traceback.print_exception(exc)
    if isinstance(exc, AlignerError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        click.echo(f"aligner: error [{exc.slug}]: {first}", err=True)
        return exc.exit_code
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    click.echo(f"aligner: error [internal]: {type(exc).__name__}{': ' + detail if detail else ''}"
               + ("" if _debug else " (run with --debug for the traceback)"), err=True)
    return EXIT_ERROR


class _Group(click.Group):
    """Maps every error to its exit code with a one-line message, for every command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except OSError as exc:  # a file the user named: unreadable, unwritable, gone
            click.echo(f"aligner: error [io]: {exc.strerror or exc}"
                       + (f": {exc.filename}" if exc.filename else ""), err=True)
            if _debug:
                traceback.print_exception(exc)
            ctx.exit(EXIT_ERROR)
        except Exception as exc:  # noqa: BLE001 - the one error path: one line, exit 2 (1 means "not aligned")
            ctx.exit(_report_error(exc))


def _results_dict(obj: Any) -> dict[str, Any]:
    """The API returns results as a dict, or an object with ``to_dict()``."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise AlignerError(f"the analysis API returned {type(obj).__name__}, not results")


def _finish_run(results: Mapping[str, Any], out: Path, lang: str, fixlog_path: str | None,
                progress: _Progress) -> int:
    """Sync the fix log (optional), write the run directory, print a summary; exit code by verdict."""
    from aligner import fixlog
    from aligner.report import write_outputs
    from aligner.report.i18n import translator
    from aligner.results_io import fmt_num

    t = translator(lang)
    entries: Sequence[Any] = ()
    if fixlog_path:
        rep = fixlog.sync_with_results(results, fixlog_path)
        pair = (results.get("run") or {}).get("pair")
        # the report shows the pair's whole log (the project's manual entries too), not only this run's changes
        entries = [e for e in fixlog.load(fixlog_path) if e.pair in (None, pair)]
        click.echo(f"fixlog: {len(rep.opened)} opened, {len(rep.closed)} closed, {len(rep.partial)} partial, "
                   f"{len(rep.still_open)} still open ({fixlog.entries_path(fixlog_path)})")
    progress("writing report")
    paths = write_outputs(results, out, lang=lang, fixlog_entries=entries)
    verdict = results.get("verdict")
    counts = results.get("counts") or {}
    click.echo(f"{t('cli_verdict')}: {t('verdict_pass') if verdict == 'pass' else t('verdict_fail')} · "
               + t("counts_line", errors=counts.get("error", 0), warnings=counts.get("warning", 0),
                   infos=counts.get("info", 0)))
    fd = results.get("first_divergence")
    if fd:
        click.echo(t("sentence_fail_fd", location=fd.get("location", ""), direction=t(str(fd.get("direction"))),
                     state=fd.get("state", ""), metric=fd.get("metric", ""), value=fmt_num(fd.get("value")),
                     tol=fmt_num(fd.get("tol"))))
    click.echo(f"{t('cli_written')}: {paths.index_html}")
    return EXIT_PASS if verdict == "pass" else EXIT_FAIL


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=_epilog("aligner run --model gold_yolo-n --num-classes 20 --img-size 500 --out reports/run1"))
@click.version_option(package_name="aligner", prog_name="aligner")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(debug: bool) -> None:
    """Layer-by-layer PyTorch <-> Jittor alignment debugger (GOLD-YOLO and any model pair)."""
    global _debug  # noqa: PLW0603 - read by main(), which runs outside the click context
    _debug = debug or bool(os.environ.get("ALIGNER_DEBUG"))


def _python_sigint() -> None:
    """Import Jittor now, keeping Ctrl-C with Python.

    Jittor's core library installs a SIGINT handler that exits at once with status 1 (the "not aligned"
    code), skipping every cleanup. With Python's handler, Ctrl-C raises KeyboardInterrupt: staging
    folders are removed on the way out and the command exits 130.
    """
    import aligner.env  # noqa: F401 - Jittor settings before the import

    if "jittor" not in sys.modules:
        # Jittor leaves SIGINT alone under Jupyter (log.cc reads JPY_PARENT_PID at load): the whole import,
        # first kernel compiles included, then keeps Python's handler. The variable is removed afterwards.
        added = "JPY_PARENT_PID" not in os.environ
        os.environ.setdefault("JPY_PARENT_PID", str(os.getppid()))
        try:
            import jittor  # noqa: F401
        finally:
            if added:
                os.environ.pop("JPY_PARENT_PID", None)
    signal.signal(signal.SIGINT, signal.default_int_handler)


SET_OPTION = click.option(
    "--set", "settings", multiple=True, metavar="KEY=VALUE",
    help="Override a pair option (repeatable, or comma-separated), e.g. --set use_dfl=true --set "
         "reg_max=16,iou_type=giou,batch=1.")


def _pair_options(model: str, settings: Sequence[str], **named: Any) -> dict[str, Any]:
    """The dedicated options (--img-size, ...) and the --set ones; a key given both ways is a usage error."""
    from aligner.pairs import parse_settings

    extra = parse_settings(model, settings)
    both = sorted(k for k, v in named.items() if k in extra and v is not None and k not in ("seed", "dtype"))
    if both:
        raise UsageError(f"--set {both[0]} repeats --{both[0].replace('_', '-')}; give it once")
    return {k: v for k, v in {**named, **extra}.items() if v is not None}


def _port(spec: str, args_text: str | None) -> Any:
    """The ``Port`` of ``--port``/``--port-args``: the factory is imported now (a bad spec fails before any
    capture), the model is built inside the run, seeded like the pair's own port."""
    import functools

    from aligner.port_loader import build_port, load_factory, parse_port_args
    from aligner.runconfig import Port

    load_factory(spec)  # after _python_sigint(): Jittor is set up before the user's module imports it
    return Port(factory=functools.partial(build_port, spec, parse_port_args(args_text)))


def _port_loss(spec: str, args_text: str | None) -> Any:
    """The loss factory of ``--port-loss``/``--port-loss-args`` (imported now, so a bad spec fails before any
    capture; the loss object is built inside the run)."""
    import functools

    from aligner.port_loader import build_port_loss, load_factory, parse_port_args

    load_factory(spec, "--port-loss")
    return functools.partial(build_port_loss, spec, parse_port_args(args_text, "--port-loss-args"))


def _config_line(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def _check_states(pair: str, states: Sequence[str], **options: Any) -> None:
    """Unknown --state names are a usage error before anything is built."""
    from aligner.pairs import get_pair

    known = get_pair(pair, **options).states
    unknown = [s for s in states if s not in known]
    if unknown:
        raise UsageError(f"{pair}: unknown state(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")


@cli.command(short_help="Capture both, compare, write the report.",
             epilog=_epilog("aligner run --model gold_yolo-n --num-classes 20 --img-size 500 --seed 0 "
                            "--out reports/n500 --lang zh --fixlog reports/fixlog"))
@click.option("--model", "model", required=True, help="Registered pair: gold_yolo-n|s|m|l, or small.")
@click.option("--num-classes", type=NUM_CLASSES, default=None, help="Number of classes (default: the pair's).")
@click.option("--img-size", type=IMG_SIZE, default=None,
              help=f"Square input size in pixels, 32 to {MAX_IMG_SIZE} (default: the pair's).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--dtype", type=DTYPE, default="float32", show_default=True)
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory (new, or written by the aligner before): index.html, results.json, layers.csv, "
                   "summary.md.")
@click.option("--lang", type=LANG, default="en", show_default=True, help="Language of the report and summary.")
@click.option("--fixlog", "fixlog_path", type=click.Path(path_type=str), default=None,
              help="Fix-log directory to open/verify entries in (e.g. reports/fixlog).")
@click.option("--stats-only", is_flag=True, help="Keep statistics only, not tensors (bounded memory).")
@click.option("--steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also run N optimizer steps and record the drift.")
@click.option("--state", "states", multiple=True, help="Model state(s) to check (default: all of the pair's).")
@click.option("--no-noise-floor", is_flag=True, help="Skip the float64 reference run (faster, cruder tolerances).")
@click.option("--no-cache", is_flag=True,
              help="Capture the torch reference again instead of reusing it from the reference cache "
                   "($ALIGNER_CACHE_DIR, default ~/.cache/aligner/reference).")
@click.option("--isolate", "isolate", type=click.Choice(ISOLATE_MODES), default="auto",
              show_default=True,
              help="Module isolation (replaying each module on the reference's own inputs, which finds every "
                   "module's own deviation, not only the first divergence): auto = in the states whose end-to-end "
                   "comparison finds a difference, always, or never.")
@click.option("--no-isolate", is_flag=True, help="Same as --isolate never.")
@SET_OPTION
@click.option("--port", "port_spec", default=None, metavar="PATH.py:FACTORY",
              help="Your own Jittor port instead of the pair's: a factory in a file or module "
                   "(package.module:FACTORY) returning the model; its directory is put on the path.")
@click.option("--port-args", default=None, metavar="JSON", help="Keyword arguments of the port factory (a JSON object).")
@click.option("--map", "map_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Name map {torch name: port name} (`aligner map` proposes one); used for the weight transfer "
                   "and the comparison.")
@click.option("--port-loss", "port_loss_spec", default=None, metavar="PATH.py:FACTORY",
              help="Your port's own loss: a factory returning L with L(head, targets) -> (total, items) (head in the "
                   "reference layout; optional L.head(outputs), L.assignment). The port trains on it, and it is also "
                   "checked alone on the reference's head outputs and a stress input (README, 'Your own port').")
@click.option("--port-loss-args", default=None, metavar="JSON",
              help="Keyword arguments of the port loss factory (a JSON object).")
@click.option("--verbose", is_flag=True, help="Show the frameworks' own output (kernel compiles, warnings).")
def run(model: str, num_classes: int | None, img_size: int | None, seed: int, dtype: str, out: Path, lang: str,
        fixlog_path: str | None, stats_only: bool, steps: int, states: Sequence[str], no_noise_floor: bool,
        no_cache: bool, isolate: str, no_isolate: bool, settings: Sequence[str], port_spec: str | None,
        port_args: str | None, map_path: Path | None, port_loss_spec: str | None, port_loss_args: str | None,
        verbose: bool) -> None:
    """Capture both frameworks, compare them, and write the report.

    GOLD-YOLO sizes run their official configuration (N: no DFL, SIoU; S/M/L: DFL 16, GIoU) unless
    --set overrides it; the configuration in use is printed and recorded in the report."""
    from aligner import api
    from aligner.fsio import check_output_dir
    from aligner.pairs import get_pair
    from aligner.report.outputs import OUTPUT_FILES

    check_output_dir(out, OUTPUT_FILES)  # before minutes of capture, not after
    options = _pair_options(model, settings, num_classes=num_classes, img_size=img_size, seed=seed, dtype=dtype)
    _check_states(model, states, **options)
    _python_sigint()
    progress = Progress()  # one line per stage, on a terminal or in a CI log
    pair = get_pair(model, **options)
    extra: dict[str, Any] = {}
    if port_spec is not None:
        extra["port"] = _port(port_spec, port_args)
    elif port_args is not None:
        raise UsageError("--port-args needs --port")
    if port_loss_spec is not None:
        from dataclasses import replace

        from aligner.runconfig import Port

        extra["port"] = replace(extra.get("port") or Port(), loss=_port_loss(port_loss_spec, port_loss_args))
    elif port_loss_args is not None:
        raise UsageError("--port-loss-args needs --port-loss")
    if map_path is not None:
        from aligner.match import load_mapping

        load_mapping(map_path)  # a broken map file is a usage error before minutes of capture
        extra["mapping"] = map_path
    progress(f"aligning {model} ({dtype}) with {_config_line(pair.config())}"
             + (f", port {port_spec}" if port_spec else "")
             + (f", port loss {port_loss_spec}" if port_loss_spec else "")
             + "; the first Jittor run compiles kernels and can take minutes")
    with folded_output(progress, verbose=verbose):
        results = _results_dict(api.run_pair(
            model, stats_only=stats_only, steps=steps, states=list(states) or None,
            noise_floor=not no_noise_floor, cache=not no_cache, progress=progress,
            isolate="never" if no_isolate else isolate, **options, **extra))
    click.get_current_context().exit(_finish_run(results, out, lang, fixlog_path, progress))


@cli.command(short_help="Capture one framework's trace.",
             epilog=_epilog("aligner capture --framework torch --pair small --out traces/pt && aligner capture "
                            "--framework jittor --pair small --weights-from traces/pt --out traces/jt"))
@click.option("--framework", type=click.Choice(["torch", "jittor"]), required=True)
@click.option("--pair", required=True, help="Registered pair: gold_yolo-n|s|m|l, or small.")
@click.option("--num-classes", type=int, default=None, help="Number of classes (default: the pair's).")
@click.option("--img-size", type=int, default=None, help="Square input size (default: the pair's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=DTYPE, default="float32", show_default=True)
@click.option("--state", "states", multiple=True, help="Model state(s) to capture (default: all).")
@click.option("--stats-only", is_flag=True, help="Keep statistics only, not tensors.")
@click.option("--weights-from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Jittor side: load the weights stored in this torch trace set.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Trace directory to write.")
@SET_OPTION
def capture(framework: str, pair: str, num_classes: int | None, img_size: int | None, seed: int, dtype: str,
            states: Sequence[str], stats_only: bool, weights_from: Path | None, out: Path,
            settings: Sequence[str]) -> None:
    """Capture one framework's trace set in this process (diff two of them with `aligner diff`)."""
    from aligner.capture import capture_pair

    from aligner.fsio import check_writable

    check_writable(out)  # a user's folder or an unwritable place is refused before the capture, not after
    if framework == "jittor":
        _python_sigint()
    progress = _Progress(interactive())
    progress(f"capturing {pair} in {framework}")
    options = _pair_options(pair, settings, num_classes=num_classes, img_size=img_size, seed=seed, dtype=dtype)
    written = capture_pair(pair, framework, out, states=list(states) or None, full=not stats_only,
                           weights_from=weights_from, **options)
    click.echo(f"trace: {written}")


@cli.command(short_help="Compare two traces and write the report.",
             epilog=_epilog("aligner diff traces/pt traces/jt --out reports/diff1"))
@click.argument("trace_a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("trace_b", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--reference64", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A float64 torch trace set: judge each tensor against the reference's own float32 error.")
@click.option("--port64", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The Jittor side captured in float64: tensors that leave the noise floor only through the port's "
                   "own float32 rounding pass.")
@click.option("--lang", type=LANG, default="en", show_default=True)
@click.option("--fixlog", "fixlog_path", type=click.Path(path_type=str), default=None)
@click.option("--verbose", is_flag=True, help="Show the frameworks' own output.")
def diff(trace_a: Path, trace_b: Path, out: Path, reference64: Path | None, port64: Path | None, lang: str,
         fixlog_path: str | None, verbose: bool) -> None:
    """Compare two captured trace sets (the torch one is the reference) and write the report."""
    from aligner import api
    from aligner.fsio import check_output_dir
    from aligner.report.outputs import OUTPUT_FILES

    check_output_dir(out, OUTPUT_FILES)
    progress = Progress()
    progress(f"comparing {trace_a} with {trace_b}")
    with folded_output(progress, verbose=verbose):
        results = _results_dict(api.diff(trace_a, trace_b, reference64=reference64, port64=port64,
                                         progress=progress))
    click.get_current_context().exit(_finish_run(results, out, lang, fixlog_path, progress))


@cli.command(short_help='Re-render a report from results.json.',
             epilog=_epilog("aligner report reports/n500/results.json --lang zh --out reports/n500-zh"))
@click.argument("results_path", metavar="RESULTS", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write (default: the directory of RESULTS).")
@click.option("--lang", type=LANG, default="en", show_default=True)
@click.option("--fixlog", "fixlog_path", type=click.Path(path_type=str), default=None,
              help="Show this fix log's entries for the run's pair in the report (read only).")
def report(results_path: Path, out: Path | None, lang: str, fixlog_path: str | None) -> None:
    """Re-render index.html, layers.csv and summary.md from a results.json.

    Exits 0 when the report was written, whatever the verdict (2 on unreadable input).
    """
    from aligner import fixlog
    from aligner.report import write_outputs
    from aligner.results_io import RESULTS_FILE, load_results

    results = load_results(results_path)
    source = results_path / RESULTS_FILE if results_path.is_dir() else results_path
    target = out or source.parent
    pair = (results.get("run") or {}).get("pair")
    entries = ([e for e in fixlog.load(fixlog_path, must_exist=True) if e.pair in (None, pair)]
               if fixlog_path else [])
    same = source.name == RESULTS_FILE and source.parent.resolve() == Path(target).resolve()
    paths = write_outputs(results, target, lang=lang, fixlog_entries=entries,
                          may_replace=(RESULTS_FILE,) if same else ())
    click.echo(f"written: {paths.index_html}")


def _parse_budgets(values: Sequence[str], default: float) -> dict[str, float]:
    budgets = {"": default}
    for v in values:
        kind, sep, factor = v.partition("=")
        try:
            budgets[kind.strip()] = float(factor)
        except ValueError:
            raise UsageError(f"--budget expects KIND=FACTOR (e.g. backward=20), got {v!r}") from None
        if not sep or not kind.strip():
            raise UsageError(f"--budget expects KIND=FACTOR (e.g. backward=20), got {v!r}")
    return budgets


@cli.command(short_help='CI gate: error findings and regressions.',
             epilog=_epilog("aligner gate reports/n320/results.json --baseline tests/baselines/n320.json "
                            "--junit reports/gate.xml"))
@click.argument("results_path", metavar="RESULTS", type=click.Path(exists=True, path_type=Path))
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Accepted baseline (written by --update-baseline). Without it only error findings fail.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a JUnit XML file for CI.")
@click.option("--update-baseline", is_flag=True, help="Accept RESULTS as the new baseline and exit.")
@click.option("--force", is_flag=True, help="With --update-baseline: accept even a failing run.")
@click.option("--growth-factor", type=float, default=10.0, show_default=True,
              help="Allowed growth of a layer's error versus the baseline.")
@click.option("--budget", "budgets", multiple=True, metavar="KIND=FACTOR",
              help="Per-kind growth factor (forward, backward, param_grad); repeatable.")
@click.option("--allow-param-change", is_flag=True, help="Do not fail on parameter-count changes.")
@click.option("--lang", type=LANG, default="en", show_default=True)
def gate(results_path: Path, baseline_path: Path | None, junit_path: Path | None, update_baseline: bool,
         force: bool, growth_factor: float, budgets: Sequence[str], allow_param_change: bool, lang: str) -> None:
    """Fail on error findings and on regressions against a baseline; print what changed."""
    from aligner import gate as gate_mod
    from aligner.results_io import load_baseline, load_results

    ctx = click.get_current_context()
    results = load_results(results_path)
    if update_baseline:
        if baseline_path is None:
            raise UsageError("--update-baseline needs --baseline PATH")
        if results.get("verdict") != "pass" and not force:
            click.echo("gate: refusing to accept a failing run as baseline (use --force)", err=True)
            ctx.exit(EXIT_FAIL)
        gate_mod.write_baseline(results, baseline_path)
        click.echo(f"baseline updated: {baseline_path}")
        ctx.exit(EXIT_PASS)
    baseline = load_baseline(baseline_path) if baseline_path else None
    policy = gate_mod.GatePolicy(growth_factor=_parse_budgets(budgets, growth_factor),
                                 fail_on_param_change=not allow_param_change)
    result = gate_mod.evaluate(results, baseline, policy)
    click.echo(gate_mod.format_table(result, lang=lang))
    if junit_path:
        gate_mod.write_junit(result, junit_path)
    ctx.exit(EXIT_PASS if result.passed else EXIT_FAIL)


# ---- fix log ---------------------------------------------------------------------------------------

_FIXLOG_DIR = click.option("--dir", "store", type=click.Path(path_type=str), default=None,
                           help="Fix-log directory (default reports/fixlog).")
_STATUS = click.Choice(["open", "partial", "done"])


@cli.group(short_help='The dated fix log (日期/问题/分析/修复/验证/状态).',
           cls=_Group, epilog=_epilog("aligner fixlog render --lang zh --out reports/FIXLOG.md"))
def fixlog() -> None:
    """The dated fix log (日期/问题/分析/修复/验证/状态): add, edit, list, show, render."""


@fixlog.command("add", short_help='Add a manual entry.',
                       epilog=_epilog('aligner fixlog add --problem "476/480 params get zero grad" '
                                      '--analysis "loss graph cut" --status open'))
@_FIXLOG_DIR
@click.option("--problem", required=True, help="问题")
@click.option("--analysis", default="", help="分析")
@click.option("--fix", "fix_text", default="", help="修复")
@click.option("--verification", default="", help="验证")
@click.option("--status", type=_STATUS, default="open", show_default=True,
              help="状态: open ❌, partial ⚠️, done ✅")
@click.option("--date", default=None, help="YYYY-MM-DD HH:MM or YYYY-MM-DD (default: now).")
def fixlog_add(store: str | None, problem: str, analysis: str, fix_text: str, verification: str, status: str,
               date: str | None) -> None:
    """Add a manual entry."""
    from aligner import fixlog as fl

    entry = fl.add(store, problem=problem, analysis=analysis, fix=fix_text, verification=verification,
                   status=fl.Status(status), date=date)
    click.echo(entry.id)


@fixlog.command("edit", short_help='Change fields of an entry.',
                        epilog=_epilog('aligner fixlog edit FX0003 --fix "use jt.nn.AdaptiveAvgPool2d with '
                                       'the torch formula" --status done'))
@_FIXLOG_DIR
@click.argument("entry_id")
@click.option("--problem", default=None)
@click.option("--analysis", default=None)
@click.option("--fix", "fix_text", default=None)
@click.option("--verification", default=None)
@click.option("--status", type=_STATUS, default=None)
@click.option("--date", default=None)
def fixlog_edit(store: str | None, entry_id: str, problem: str | None, analysis: str | None, fix_text: str | None,
                verification: str | None, status: str | None, date: str | None) -> None:
    """Change fields of an entry (修复 is usually written here by a person)."""
    from aligner import fixlog as fl

    entry = fl.edit(store, entry_id, problem=problem, analysis=analysis, fix=fix_text, verification=verification,
                    status=status, date=date)
    click.echo(fl.render_entry(entry, "zh"))


@fixlog.command("list", short_help='One line per entry.', epilog=_epilog("aligner fixlog list --status open"))
@_FIXLOG_DIR
@click.option("--status", type=_STATUS, default=None, help="Only entries with this status.")
@click.option("--lang", type=LANG, default="zh", show_default=True)
def fixlog_list(store: str | None, status: str | None, lang: str) -> None:
    """One line per entry: id, date, status, problem."""
    from aligner import fixlog as fl

    for e in fl.load(store, must_exist=True):
        if status and e.status.value != status:
            continue
        fields = e.fields(lang)
        problem = fields[1][1].replace("\n", " ")
        click.echo(f"{e.id}  {e.date}  {e.status.label(lang)}  {problem[:100]}")


@fixlog.command("show", short_help='Print one entry in the template.',
                        epilog=_epilog("aligner fixlog show FX0001 --lang en"))
@_FIXLOG_DIR
@click.argument("entry_id")
@click.option("--lang", type=LANG, default="zh", show_default=True)
def fixlog_show(store: str | None, entry_id: str, lang: str) -> None:
    """Print one entry in the template."""
    from aligner import fixlog as fl

    click.echo(fl.render_entry(fl.get(store, entry_id), lang))


@fixlog.command("render", short_help='Render the log to Markdown.',
                          epilog=_epilog("aligner fixlog render --out reports/FIXLOG.md"))
@_FIXLOG_DIR
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown file to write (default: stdout).")
@click.option("--lang", type=LANG, default="zh", show_default=True)
@click.option("--title", default=None, help="Heading of the document.")
def fixlog_render(store: str | None, out: Path | None, lang: str, title: str | None) -> None:
    """Render every entry to Markdown in the template."""
    from aligner import fixlog as fl
    from aligner.fsio import atomic_write

    text = fl.render_markdown(fl.load(store, must_exist=True), lang, title)
    if out is None:
        click.echo(text, nl=False)
    else:
        atomic_write(out, text)
        click.echo(f"written: {out}")


# ---- model inspection -----------------------------------------------------------------------------

@cli.command(short_help='Parameter inventory table of a model.',
             epilog=_epilog("aligner params gold_yolo-n --num-classes 20 --depth 2"))
@click.argument("model")
@click.option("--num-classes", type=NUM_CLASSES, default=None, help="Number of classes (default: the pair's).")
@click.option("--use-dfl/--no-dfl", default=None, help="Override the config's DFL setting.")
@click.option("--reg-max", type=click.IntRange(0, 64), default=None,
              help="DFL bins (default 16 with --use-dfl, as the official trainer).")
@click.option("--depth", type=click.IntRange(min=0), default=2, show_default=True, help="Deepest module level shown.")
@SET_OPTION
@click.option("--lang", type=LANG, default="en", show_default=True)
def params(model: str, num_classes: int | None, use_dfl: bool | None, reg_max: int | None, depth: int,
           settings: Sequence[str], lang: str) -> None:
    """Parameter inventory of the PyTorch reference model (trainable / frozen / buffers per module), built
    with the same defaults as `aligner run --model MODEL` (official configuration unless overridden)."""
    from aligner.pairs import get_pair
    from aligner.report.params_table import format_table, module_rows, totals

    if use_dfl is False and reg_max:
        raise UsageError("--no-dfl takes no --reg-max (DFL bins exist only with DFL)")
    named: dict[str, Any] = {"num_classes": num_classes, "use_dfl": use_dfl, "reg_max": reg_max}
    if model == "small":
        named = {"num_classes": num_classes}
    pair = get_pair(model, **_pair_options(model, settings, **named))
    click.echo(f"configuration: {_config_line(pair.config())}")
    net = pair.build_torch()
    click.echo(format_table(module_rows(net, depth), totals(net), lang=lang))


def _tensor_shapes(framework: str, model: Any) -> dict[str, tuple[int, ...]]:
    """Name -> shape of a model's transferable tensors, read through the framework's adapter."""
    from aligner.adapters import get_adapter
    from aligner.mapping import shapes_of

    return shapes_of(get_adapter(framework).inventory(model)[0])


@cli.command("map", short_help="Propose a torch -> Jittor name map for a port.",
             epilog=_epilog("aligner map --model gold_yolo-n --port myport/model.py:build --port-args "
                            "'{\"num_classes\": 80}' --out map.json"))
@click.option("--model", "model", required=True, help="Registered pair whose PyTorch model is the reference.")
@click.option("--port", "port", default=None, metavar="PATH.py:FACTORY|MODULE:FACTORY",
              help="Your Jittor model: a factory in a file or an importable module (default: the pair's own port).")
@click.option("--port-args", "port_args", default=None, metavar="JSON",
              help="Keyword arguments of the factory, as a JSON object.")
@click.option("--num-classes", type=NUM_CLASSES, default=None, help="Number of classes (default: the pair's).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Map file to write (JSON; edit it, then pass it to the run).")
@click.option("--force", is_flag=True, help="Overwrite an existing map file.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Names shown per list.")
def map_names(model: str, port: str | None, port_args: str | None, num_classes: int | None, out: Path,
              force: bool, limit: int) -> None:
    """Propose a map from the reference's tensor names to your port's: exact names, then known renames
    (an extra wrapper level, bn/norm, conv/cv, ...), then order and shape within a parent module. Writes
    an editable JSON file (unmapped torch names as null to fill in) and prints what is mapped, unmapped on
    each side, and mapped with different shapes."""
    from aligner.mapping import format_summary, propose_map, write_mapping
    from aligner.pairs import get_pair
    from aligner.port_loader import build_port, parse_port_args

    if out.exists() and not force:  # before building anything
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    kwargs = parse_port_args(port_args)
    if kwargs and port is None:
        raise UsageError("--port-args needs --port")
    pair = get_pair(model, num_classes=num_classes)
    _python_sigint()
    torch_shapes = _tensor_shapes("torch", pair.build_torch())
    jittor_model = build_port(port, kwargs) if port else pair.build_jittor()
    proposal = propose_map(torch_shapes, _tensor_shapes("jittor", jittor_model))
    click.echo(format_summary(proposal, limit))
    written = write_mapping(proposal, out, force=force)
    click.echo(f"written: {written}")


@cli.command(short_help='Anchor count per level for an input size.', epilog=_epilog("aligner anchors --img-size 500"))
@click.option("--img-size", type=click.IntRange(1, MAX_IMG_SIZE), required=True,
              help=f"Square input size S in pixels (at most {MAX_IMG_SIZE}).")
@click.option("--strides", default="8,16,32", show_default=True, help="Comma-separated level strides.")
@click.option("--lang", type=LANG, default="en", show_default=True)
def anchors(img_size: int, strides: str, lang: str) -> None:
    """Per-level feature sizes and the anchor count a GOLD-YOLO head produces for an input size."""
    from aligner.pairs.gold_yolo_rules import expected_anchors
    from aligner.report.i18n import translator

    t = translator(lang)
    try:
        stride_list = [int(s) for s in strides.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--strides expects integers like 8,16,32, got {strides!r}") from None
    if not stride_list or any(s < 1 or s > MAX_IMG_SIZE for s in stride_list):
        raise UsageError(f"--strides expects positive integers like 8,16,32, got {strides!r}")
    levels = expected_anchors(img_size, stride_list)
    click.echo(f"{t('anchors_img')} {img_size}")
    click.echo(f"{t('anchors_cli_level'):<6}{t('stride'):>8}{t('hxw'):>12}{t('count'):>10}")
    for i, lv in enumerate(levels):
        hw = f"{lv['h']} x {lv['w']}"
        click.echo(f"{'P' + str(i + 3):<6}{lv['stride']:>8}{hw:>12}{lv['expected']:>10}")
    total = sum(lv["expected"] for lv in levels)
    click.echo(f"{t('anchors_cli_total')}: {' + '.join(str(lv['expected']) for lv in levels)} = {total}")
    click.echo(t("anchors_formula"))


@cli.command(short_help='Check the environment (frameworks, oneDNN).', epilog=_epilog("aligner doctor"))
def doctor() -> None:
    """Check that this machine can run both frameworks (oneDNN, kernel cache, a 1 s smoke test)."""
    from aligner import doctor as doctor_mod

    # doctor returns non-zero when a check failed: that is an environment problem (exit 2)
    click.get_current_context().exit(EXIT_PASS if doctor_mod.main() == 0 else EXIT_ERROR)


# ---- fault catalogue ------------------------------------------------------------------------------
# The options are those of aligner.faults.run.run_faults (tests/test_cli.py checks the defaults against
# its constants); `python -m aligner.faults.run` runs this command.

@cli.command(short_help='Run the fault catalogue: detection and false alarms.',
             epilog=_epilog("aligner faults --subset fast --img-size 100 --out benchmarks/results"))
@click.option("--subset", type=click.Choice(["all", "fast"]), default="all", show_default=True)
@click.option("--only", "only", multiple=True, metavar="NAME",
              help="fault names to run (default: the subset); repeat the option or separate names by commas")
@click.option("--img-size", type=int, default=100,
              help="input size of the fault runs (default 100: small, and not a multiple of 32)")
@click.option("--dtype", type=DTYPE, default="float32", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out", default="benchmarks/results", help="output folder (default benchmarks/results)")
@click.option("--no-faults", is_flag=True, help="skip the catalogue (clean runs only)")
@click.option("--no-clean", is_flag=True, help="skip the clean runs on the correct port")
@click.option("--clean-sizes", default="320,500,640", show_default=True)
@click.option("--no-cache", is_flag=True, help="recapture the torch side for every fault")
def faults(subset: str, only: Sequence[str], img_size: int, dtype: str, seed: int, out: str, no_faults: bool,
           no_clean: bool, clean_sizes: str, no_cache: bool) -> None:
    """Plant each catalogued porting fault in the correct Jittor port, align GOLD-YOLO-N, and score
    detection and localisation; also count false alarms on the unmodified port. Writes faults.md and
    faults.json (same as `python -m aligner.faults.run`)."""
    # the runner module imports no framework: names are checked before any framework loads
    from aligner.faults import run as runner

    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    runner.select(subset, names)  # raises UsageError naming the valid faults
    try:
        sizes = [int(s) for s in clean_sizes.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--clean-sizes expects integers like 320,500,640, got {clean_sizes!r}") from None
    runner.run_faults(subset=subset, only=names, img_size=img_size, dtype=dtype, seed=seed, out=out,
                      faults=not no_faults, clean=not no_clean, clean_sizes=sizes, cache=not no_cache,
                      progress=lambda m: click.echo(m))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `aligner` script and `python -m aligner`; returns the exit code."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="aligner", standalone_mode=False)
        return rv if isinstance(rv, int) else EXIT_PASS
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:  # usage errors: bad option, missing file
        exc.show()
        return EXIT_ERROR
    except (click.exceptions.Abort, KeyboardInterrupt):
        # staging folders were removed on the way out (fsio.atomic_dir); earlier outputs are untouched
        click.echo("aligner: interrupted", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - errors outside a command (e.g. while parsing)
        return _report_error(exc)
