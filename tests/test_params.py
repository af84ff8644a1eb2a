"""Declared hyperparameters: the constructor, checks, signature and help come from one statement."""

import inspect

import pytest

from scrutiny.base import Method
from scrutiny.errors import InputError
from scrutiny.params import Param, docstring_params, param


class Walk(Method):
    """A toy method.

    Parameters
    ----------
    steps : int
        How many steps. More words.
    loss : {"ce", "margin"}
        The objective.
    frac : float
        A fraction.
    size : tuple of int, optional
        A shape.
    """

    steps: int = param(10, integer=True, positive=True)
    loss: str = param("ce", choices=("ce", "margin"))
    frac: float = param(0.5, between=(0, 1), interval="[)")
    size: tuple | None = param(None, kind=tuple)

    def _post_init(self) -> None:
        if self.loss == "margin" and self.steps < 2:
            raise InputError("margin needs steps >= 2")


class Short(Walk):
    steps: int = param(3, integer=True, positive=True)


def test_declarations_make_the_constructor_signature_and_repr():
    assert list(inspect.signature(Walk.__init__).parameters) == ["self", "steps", "loss", "frac",
                                                                "size"]
    w = Walk(steps=4, size=[2, 3])
    assert w.size == (2, 3) and repr(w) == "Walk(steps=4, loss='ce', frac=0.5, size=(2, 3))"
    assert type(w)(**w.get_params()) == w
    assert Short().steps == 3 and Short().loss == "ce"  # a preset changes a default only


@pytest.mark.parametrize("bad, message", [
    ({"steps": 0}, "steps must be > 0"), ({"steps": 1.5}, "steps must be an integer"),
    ({"steps": True}, "steps must be an integer"), ({"loss": "l2"}, "loss must be one of"),
    ({"frac": 1.0}, r"frac must be in \[0, 1\)"), ({"frac": float("nan")}, "must be a number"),
    ({"size": 3}, "size must be a tuple"), ({"stepz": 1}, "does not accept 'stepz'"),
    ({"loss": "margin", "steps": 1}, "margin needs steps >= 2")])
def test_bad_values_are_refused_naming_the_parameter(bad, message):
    with pytest.raises(InputError, match=message):
        Walk(**bad)


def test_positional_arguments_are_refused():
    with pytest.raises(TypeError):
        Walk(3)


def test_constraints_and_docstring_text_for_the_help():
    hp = Walk.hyperparameters
    assert hp["steps"].constraint() == "int > 0"
    assert hp["loss"].constraint() == "one of 'ce', 'margin'"
    assert hp["frac"].constraint() == "float in [0, 1)"
    assert hp["size"].constraint() == "None or tuple"
    assert docstring_params(Walk.__doc__) == {"steps": "How many steps.", "loss": "The objective.",
                                              "frac": "A fraction.", "size": "A shape."}


def test_every_declared_parameter_is_documented_once_in_its_class_docstring():
    """Every registered method (and the unregistered BlackBoxReprogramming) declares its
    hyperparameters (no hand-written ``__init__``), and the help and docs read each one's text
    from the class docstring: none missing, none stale, none without text."""
    from scrutiny import registry
    from scrutiny.attacks.blackbox import BlackBoxReprogramming

    classes = {spec: registry.get(spec).cls for spec in registry.list_methods()}
    classes["BlackBoxReprogramming"] = BlackBoxReprogramming
    hand_written = [spec for spec, cls in classes.items()
                    if not getattr(cls.__init__, "declared", False)]
    assert not hand_written, hand_written
    for spec, cls in classes.items():
        doc = docstring_params(cls.__doc__)
        assert set(doc) == set(cls.hyperparameters), (spec, set(doc) ^ set(cls.hyperparameters))
        assert all(doc.values()), (spec, [k for k, v in doc.items() if not v])


def test_a_preset_only_redeclares_defaults():
    from scrutiny.attacks import APGD, APGDT, BIM, PGD
    from scrutiny.attacks.blackbox import OPT, SignOPT

    def own(cls):
        return {k for k, v in vars(cls).items() if isinstance(v, Param)}

    assert own(BIM) == {"steps", "random_start"} and own(APGDT) == {"loss", "targets"}
    assert BIM.__init__.declared and APGDT.__init__.declared  # built, not written
    assert list(BIM.hyperparameters) == list(PGD.hyperparameters)
    assert list(APGDT.hyperparameters) == list(APGD.hyperparameters)
    assert (BIM().steps, BIM().random_start, PGD().random_start) == (None, False, True)
    assert (APGDT().loss, APGDT().targets) == ("dlr", 9)
    assert own(OPT) == set() and own(SignOPT) == {"n_samples"} and SignOPT.__init__.declared
    assert list(SignOPT.hyperparameters) == list(OPT.hyperparameters)
    assert (OPT().n_samples, SignOPT().n_samples, SignOPT().estimator) == (10, 200, "sign")
    with pytest.raises(InputError, match="step_size"):
        PGD(step_size=0.01, rel_step_size=0.1)
