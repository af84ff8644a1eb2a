"""The small trained networks the tests use beyond the zoo, shipped as safetensors.

Weights trained on one CPU differ from another's (AVX2 and AVX-512 kernels sum in
other orders), so every trained fixture is loaded from ``tests/fixture_weights/``:
the same numbers on every machine. With ``$SCRUTINY_RETRAIN_SEED`` set, each one is
trained here with that seed instead (as the zoo models are), which is how the
suite's margins are checked against other weights::

    SCRUTINY_RETRAIN_SEED=1 make test

``python -m tests.fixture_models`` (``make weights``) retrains them with seed 0 and
rewrites the files; run it when a recipe below changes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from scrutiny.base import seeded
from scrutiny.models import MLP, TorchModel, load_weights, save_weights
from scrutiny.models.training import train
from scrutiny.models.zoo import retrain_seed

WEIGHTS = Path(__file__).parent / "fixture_weights"


def _digits(split: str = "train"):
    from scrutiny.data import load_digits

    return load_digits(split=split)


# ---- recipes: build(seed) -> untrained net, fit(net, seed) trains it in place ----

def _certify_mlp(seed: int) -> nn.Module:
    from tests.certify.helpers import seeded_init

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 10))
    return seeded_init(net, seed)


def _fit_certify_mlp(net: nn.Module, seed: int) -> None:
    train(net, _digits(), epochs=15, lr=3e-3, seed=seed, progress=False)


def _small_mlp(hidden: int) -> Callable[[int], nn.Module]:
    def build(seed: int) -> nn.Module:
        with seeded(seed):
            return MLP(in_features=64, num_classes=10, hidden=(hidden,))
    return build


def _fit_decision_mlp(net: nn.Module, seed: int) -> None:
    train(net, _digits(), epochs=5, seed=seed, progress=False)


def _fit_randomization_mlp(net: nn.Module, seed: int) -> None:
    train(net, _digits(), epochs=8, lr=1e-2, batch_size=256, seed=seed, progress=False)


def _fit_resize_pad_mlp(net: nn.Module, seed: int) -> None:
    """Trained under the random resize-pad (resized back to 8x8), so the defense is usable."""
    from scrutiny.defenses import RandomResizePad

    tf = RandomResizePad(scale=(1.0, 1.5), resize_back=True).transform()

    def augmented(module, xb, yb):
        out = module(tf(xb))
        return nn.functional.cross_entropy(out, yb), out

    train(net, _digits(), epochs=8, lr=1e-2, objective=augmented, seed=seed, progress=False)


def _dropout_mlp(heteroscedastic: bool, p: float) -> Callable[[int], nn.Module]:
    def build(seed: int) -> nn.Module:
        from scrutiny.testing.models import dropout_mlp

        return dropout_mlp(seed, p=p, heteroscedastic=heteroscedastic).module
    return build


def _fit_full_batch(net: nn.Module, seed: int, steps: int = 100) -> None:
    """Full-batch Adam on the digits train split; a heteroscedastic head (20 outputs) is
    trained with Kendall & Gal's corrupted logits."""
    data = _digits()
    x, y = data.x, data.y
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    with seeded(seed):
        for _ in range(steps):
            opt.zero_grad()
            out = net(x)
            loss = nn.functional.cross_entropy(out[:, :10], y)
            if out.shape[1] == 20:  # logits corrupted by N(0, exp(logvar))
                noise = torch.randn(out[:, :10].shape, generator=g)
                loss = nn.functional.cross_entropy(out[:, :10] + torch.exp(0.5 * out[:, 10:]) * noise, y)
            loss.backward()
            opt.step()
    net.eval()


#: name -> (build, fit, seed the shipped weights were trained with)
FIXTURES: dict[str, tuple[Callable[[int], nn.Module], Callable[[nn.Module, int], None], int]] = {
    "certify-mlp": (_certify_mlp, _fit_certify_mlp, 0),
    "decision-mlp": (_small_mlp(32), _fit_decision_mlp, 0),
    "randomization-mlp": (_small_mlp(64), _fit_randomization_mlp, 0),
    "resize-pad-mlp": (_small_mlp(128), _fit_resize_pad_mlp, 0),
    "dropout-mlp": (_dropout_mlp(False, 0.5), _fit_full_batch, 0),
    "dropout-mlp-heteroscedastic": (_dropout_mlp(True, 0.2), _fit_full_batch, 1),
}


def fixture_model(name: str, *, retrain: bool = False) -> TorchModel:
    """The trained fixture ``name``: shipped weights, or trained here (see the module doc)."""
    build, fit, seed = FIXTURES[name]
    override = retrain_seed()
    if override is not None:
        seed, retrain = override, True
    net = build(seed)
    path = WEIGHTS / f"{name}.safetensors"
    if retrain or not path.is_file():
        with torch.random.fork_rng():
            fit(net, seed)
    else:
        load_weights(net, path)
    return TorchModel(net.eval(), name=name)


def regenerate() -> None:
    """Retrain every fixture with its recipe's seed and rewrite the shipped files."""
    for name, (build, fit, seed) in FIXTURES.items():
        net = build(seed)
        with torch.random.fork_rng():
            fit(net, seed)
        save_weights(net, WEIGHTS / f"{name}.safetensors", metadata={"name": name, "seed": str(seed)})
        print(f"wrote {name}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    regenerate()
