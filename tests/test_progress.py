"""Progress bars are a context, not a parameter: on by default, off inside quiet() and under a bar."""

from scrutiny import progress, registry
from scrutiny.attacks import PGD
from scrutiny.cli import _quiet_option


def test_quiet_turns_bars_off_for_the_block_only():
    assert progress.enabled()
    with progress.quiet():
        assert not progress.enabled()
        with progress.progress_bar(3, "x") as bar:
            assert bar._p is None  # no bar drawn
    assert progress.enabled()
    with progress.quiet(False):
        assert progress.enabled()


def test_one_bar_at_a_time_and_an_explicit_choice_wins():
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
