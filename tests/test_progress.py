"""Progress bars are a context, not a parameter: on by default, off inside quiet() and under a bar.
A bar names the step that runs (with its detail and what bars under it report) and estimates
the time left."""

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from scrutiny import progress, registry
from scrutiny.attacks import PGD
from scrutiny.attacks.base import Attack
from scrutiny.cli import _quiet_option, app


@pytest.fixture
def terminal(monkeypatch):
    """Bars drawn on a terminal of the test's own; yields what was written to it."""
    buf = io.StringIO()
    monkeypatch.setattr(progress, "_console",
                        lambda: Console(file=buf, force_terminal=True, width=200))
    return buf


@pytest.fixture
def shown(monkeypatch):
    """(attack, what the outermost bar shows) for every attack call, recorded inside it."""
    seen: list[tuple[str, str | None]] = []
    call = Attack.__call__

    def recording(self, *args, **kwargs):
        bar = progress.current()
        seen.append((self.name, None if bar is None else bar.status))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(Attack, "__call__", recording)
    return seen


def test_quiet_turns_bars_off_for_the_block_only():
    assert progress.enabled()
    with progress.quiet():
        assert not progress.enabled()
        with progress.progress_bar(3, "x") as bar:
            assert bar._p is None  # no bar drawn
    assert progress.enabled()
    with progress.quiet(False):
        assert progress.enabled()


def test_one_bar_at_a_time_and_an_explicit_choice_wins(terminal):
    with progress.progress_bar(2, "outer") as outer:
        assert outer._p is not None and not progress.enabled()
        with progress.progress_bar(2, "inner") as inner:
            assert inner._p is None
    assert progress.enabled()
    with progress.progress_bar(2, "off", enabled=False) as bar:
        assert bar._p is None


def test_the_cli_quiet_flag_wraps_the_command_and_no_constructor_takes_progress():
    seen = []

    @_quiet_option
    def command(*, quiet: bool = False) -> None:
        seen.append(progress.enabled())

    command(quiet=True)
    command(quiet=False)
    assert seen == [False, True]
    declared = [registry.get(s).cls for s in registry.list_methods()]
    declared = [c for c in declared if getattr(c.__init__, "declared", False)]
    assert PGD in declared and not [c for c in declared if "progress" in c.hyperparameters]



def test_the_bar_shows_the_step_that_runs_with_elapsed_and_remaining_time(terminal):
    with progress.progress_bar(4, "audit") as bar:
        bar.step("pgd eps=0.1")
        bar._p.refresh()
        running = terminal.getvalue()
        bar.advance()
        assert bar.status == "pgd eps=0.1" and bar.completed == 1
        bar.step("pgd [eps]=0.3")  # no rich markup: shown as given
        bar._p.refresh()
    text = terminal.getvalue()
    assert "audit" in running and "0/4" in running and "pgd eps=0.1" in running
    assert "0:00:00" in running and "-:--:--" in running  # elapsed; no estimate before a step ends
    assert "1/4" in text and "pgd [eps]=0.3" in text


def test_detail_shows_after_the_running_step_and_is_a_no_op_without_a_bar(terminal):
    progress.detail("nobody shows this")
    assert progress.current() is None and terminal.getvalue() == ""
    with progress.progress_bar(2, "audit") as bar:
        bar.step("headline")
        progress.detail("chunk 1/3")
        assert bar.status == "headline \u00b7 chunk 1/3"
        with progress.progress_bar(4, "worst case") as inner:  # not drawn: reported
            assert inner._p is None and progress.current() is inner
            inner.step("apgd")
            assert bar.status == "headline \u00b7 chunk 1/3 \u203a worst case 1/4 apgd"
            progress.detail("restart 2")
            assert bar.status.endswith("worst case 1/4 apgd \u00b7 restart 2")
            inner.advance()
            inner.step("fmn")
            assert bar.status.endswith("worst case 2/4 fmn")
        assert bar.status == "headline \u00b7 chunk 1/3"  # the inner bar closed
        bar.step("checks")  # a new step clears the detail
        assert bar.status == "checks"


def test_quiet_shows_nothing_and_reports_nothing(terminal):
    with progress.quiet(), progress.progress_bar(3, "audit") as bar:
        bar.step("pgd")
        assert progress.current() is None
        progress.detail("stage 1/4")
        bar.advance()
    assert terminal.getvalue() == ""


def test_a_bar_handed_over_is_replaced_by_the_bar_opened_inside_it(terminal):
    with progress.progress_bar(1, "attack", hand_over=True) as outer:
        outer.step("square")
        with progress.progress_bar(50, "square") as inner:  # the method's own bar
            assert inner._p is outer._p and progress.current() is inner
            inner.advance("40 left")
            inner._p.refresh()
            assert not outer._p.tasks[0].visible
        assert outer._p.tasks[0].visible and len(outer._p.tasks) == 1
    assert "1/50" in terminal.getvalue() and "40 left" in terminal.getvalue()


def test_the_audit_names_the_running_attack_and_worst_case_stage(shown):
    from scrutiny.audit import AuditConfig, run_audit
    from scrutiny.data import load_digits
    from scrutiny.models import pretrained

    cfg = AuditConfig(n_samples=16, eps=(0.1,), attacks=("fgsm",), sections=("headline",),
                      headline_attack="worst_case",
                      params={"worst_case": {"attacks": ("fgsm", ("pgd", {"steps": 2}))}})
    run_audit(pretrained("digits-cnn", progress=False), load_digits(split="test"), cfg)
    assert shown[0] == ("fgsm", "fgsm eps=0.1")  # the curve's attack, named while it runs
    stages = [s for _, s in shown if "worst case" in s]
    assert stages and stages[0].startswith("worst_case ")  # the headline's chunk
    assert stages[0].endswith("\u203a worst case 1/2 fgsm")
    assert stages[-1].endswith("\u203a worst case 2/2 pgd(steps=2)")


@pytest.mark.parametrize("args", [
    ["attack", "worst_case", "--n", "8", "-p", "attacks=('fgsm', ('pgd', {'steps': 2}))"],
    ["certify", "ibp", "--n", "8", "--eps", "0.01,0.02"],
    ["trust", "deletion", "--n", "4", "-p", "steps=4"]])
def test_attack_certify_trust_show_a_bar_that_quiet_silences(args, terminal, shown):
    def table(out: str) -> list[str]:
        return [line for line in out.splitlines() if "seconds" not in line]

    runner = CliRunner()
    loud = runner.invoke(app, args)
    assert loud.exit_code == 0, loud.output
    drawn = terminal.getvalue()
    assert drawn.count(f"{args[0]} ") >= 1 and "0:00:0" in drawn, drawn  # a bar was drawn
    terminal.truncate(0)
    quiet = runner.invoke(app, [*args, "-q"])
    assert quiet.exit_code == 0 and terminal.getvalue() == ""
    assert table(quiet.output) == table(loud.output)  # the same numbers with and without a bar
    if args[0] == "attack":  # the ensemble's own bar, handed the command's place, names stages
        assert [s for _, s in shown[1:3]] == ["fgsm", "pgd(steps=2)"]
        assert all(s is None for _, s in shown[4:])  # -q: nothing reports


def test_the_commands_run_on_a_non_terminal_and_print_no_bar():
    out = CliRunner().invoke(app, ["certify", "ibp", "--n", "4", "--eps", "0.01"])
    assert out.exit_code == 0 and out.output.startswith("IBP(")  # not even a blank line first
