#!/usr/bin/env bash
# Create benchmarks/.venv-peers: scrutiny (editable) next to the libraries it is
# compared with (torchattacks, Captum), all on one CPU build of torch.
#
# The peers are NOT project dependencies: they live only in this git-ignored venv.
#
# Usage, from anywhere:
#   bash benchmarks/setup_peers.sh
# Environment:
#   VENV          where to create it (default: benchmarks/.venv-peers, git-ignored)
#   PYTHON        interpreter for the venv (default: python3)
#   TORCH_VERSION torch to pin (default: 2.13.0, the version the project .venv uses)
#   TORCH_SPEC    what to give pip for torch (default: torch==$TORCH_VERSION); point it
#                 at a CPU wheel file if your pip would otherwise fetch a CUDA build
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="${VENV:-$here/.venv-peers}"
python="${PYTHON:-python3}"
torch_version="${TORCH_VERSION:-2.13.0}"
torch_spec="${TORCH_SPEC:-torch==$torch_version}"

# Pinned peers (the versions the published numbers used).
torchattacks_version="3.5.1"
captum_version="0.9.0"
art_version="1.20.1"
foolbox_version="3.3.4"
zennit_version="0.5.1"
quantus_version="0.6.0"
lime_version="0.2.0.1"
shap_version="0.51.0"
lucent_version="0.1.8"        # torch-lucent (bench_learned.py)
kornia_version="0.4.1"        # the newest kornia torch-lucent 0.1.8 accepts
kronfluence_version="1.0.1"   # bench_learned.py

"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)

# Every later install is constrained to this exact torch, so no peer can swap it.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_version" >"$constraints"

# 1. torch first.
"${pip[@]}" install "$torch_spec"

# 2. The peers. torchattacks declares torchvision but its attacks never import it; a
#    torchvision from the registry is a CUDA build that fails to load next to a CPU
#    torch, so torchattacks goes in without dependencies and its real ones by hand.
"${pip[@]}" install -c "$constraints" --no-deps "torchattacks==$torchattacks_version"
"${pip[@]}" install -c "$constraints" "scipy>=0.14.0" "tqdm>=4.56.1" "requests~=2.25.1" \
    "numpy>=1.19.4"
"${pip[@]}" install -c "$constraints" "captum==$captum_version"
"${pip[@]}" install -c "$constraints" "adversarial-robustness-toolbox==$art_version" \
    "foolbox==$foolbox_version" "zennit==$zennit_version" "quantus==$quantus_version" \
    "lime==$lime_version" "shap==$shap_version"
# Lucent and kronfluence (benchmarks/bench_learned.py) declare torchvision too: both go in
# without dependencies. Lucent imports only torchvision.transforms.Normalize, which
# bench_learned.py adds to peers.py's stand-in; its real run-time needs are kornia (<= 0.4.1,
# imports beside torch 2.13), decorator and IPython (pytest, coverage, future: not needed).
# accelerate pulls huggingface_hub, whose httpx2 wants idna >= 3.18; requests 2.25.1
# (torchattacks) wants idna < 3, and kronfluence imports with the older idna, so it stays.
"${pip[@]}" install -c "$constraints" --no-deps "torch-lucent==$lucent_version" \
    "kornia==$kornia_version" "kronfluence==$kronfluence_version"
"${pip[@]}" install -c "$constraints" "decorator==5.3.2" "ipython==9.19.1" \
    "accelerate==1.16.0" "einops==0.8.2" "einconv==0.1.0" "opt-einsum==3.4.0"
"${pip[@]}" install -c "$constraints" "idna>=2.8,<3"
# Zennit and Quantus pull torchvision from the registry: a CUDA build that cannot load
# next to a CPU torch. Remove it; benchmarks/peers.py stands in for the two torchvision
# names Zennit imports (its canonizers for torchvision's ResNet blocks, unused here).
"${pip[@]}" uninstall -y torchvision

# 3. scrutiny itself, editable, with its own dependencies (torch held by the constraint).
"${pip[@]}" install -c "$constraints" -e "$root"

# Check: the right torch, CPU only, and everything imports.
"$venv/bin/python" - <<'EOF'
import importlib.metadata as md

import torch

import sys

sys.path.insert(0, "benchmarks")
import peers  # noqa: F401,E402  (torchvision stand-in for zennit/quantus)
import art  # noqa: F401
import captum.attr  # noqa: F401
import foolbox  # noqa: F401
import lime  # noqa: F401
import quantus  # noqa: F401
import scrutiny  # noqa: F401
import shap  # noqa: F401
import torchattacks  # noqa: F401
import zennit  # noqa: F401
import kronfluence.analyzer  # noqa: F401
import bench_learned  # noqa: F401,E402  (imports Lucent with its Normalize stand-in)

assert bench_learned.lucent is not None, "torch-lucent does not import"

print("torch", torch.__version__, "| cuda build:", torch.version.cuda)
for dist in ("torchattacks", "captum", "adversarial-robustness-toolbox", "foolbox", "zennit",
             "quantus", "lime", "shap", "torch-lucent", "kornia", "kronfluence"):
    print(f"  {dist} {md.version(dist)}")
if torch.version.cuda is not None:
    print("warning: this torch is a CUDA build; set TORCH_SPEC to a CPU wheel for CPU numbers")
EOF
echo "peers venv ready: $venv"
echo "run: $venv/bin/python $here/run.py"
