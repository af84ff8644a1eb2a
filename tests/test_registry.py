import pytest

from scrutiny import registry
from scrutiny.errors import InputError


def test_listing_and_creation():
    specs = registry.list_methods()
    for s in ("attack:fgsm", "attack:pgd", "explainer:saliency",
              "explainer:integrated_gradients", "explainer:grad_cam"):
        assert s in specs
    assert all(s.startswith("attack:") for s in registry.list_methods("attack"))
    pgd = registry.create("pgd", kind="attack", steps=7)
    assert pgd.steps == 7 and registry.get("attack:pgd").paper.startswith("Madry")


def test_unknown_names_and_params_are_rejected_with_choices():
    with pytest.raises(InputError, match="registered: .*attack:fgsm"):
        registry.create("attack:nope")
    with pytest.raises(InputError, match="accepted: steps, rel_step_size"):
        registry.create("attack:pgd", step=3)
    with pytest.raises(InputError, match="steps must be > 0"):
        registry.create("attack:pgd", steps=0)
    with pytest.raises(InputError, match="unknown kind"):
        registry.list_methods("defense-ish")


def test_register_rejects_a_second_class_under_a_taken_name():
    with pytest.raises(InputError, match="already registered"):
        @registry.register("attack", "pgd", paper="x")
        class Other:
            pass
