#!/usr/bin/env bash
# Put auto_LiRPA's source (the reference of benchmarks/bench_certify.py --lirpa) in
# benchmarks/.venv-peers/src/auto_LiRPA (git-ignored), at a pinned commit, and its small
# pure-python dependencies into the peers venv (benchmarks/setup_peers.sh makes the venv).
#
# Its PyPI releases do not install beside torch 2.13 (setup.py pins torch < 2.9 and a
# torchvision), so the package directory is copied from a clone instead of installed;
# bench_certify.py puts benchmarks/.venv-peers/src on sys.path. The network is used here
# only (the library and the benchmark run offline).
#
# Usage, from anywhere:
#   bash benchmarks/fetch_lirpa.sh                # clone from GitHub
#   LIRPA_REPO=/path/to/auto_LiRPA.git bash benchmarks/fetch_lirpa.sh   # a local clone/mirror
# Environment:
#   LIRPA_REPO    a git URL or a local repository (default: the GitHub repository)
#   LIRPA_COMMIT  the commit to copy (default: the one the published numbers used)
#   VENV          the peers venv (default: benchmarks/.venv-peers)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${VENV:-$here/.venv-peers}"
repo="${LIRPA_REPO:-https://github.com/Verified-Intelligence/auto_LiRPA.git}"
# "May 2026 release", auto_LiRPA 0.7.1
commit="${LIRPA_COMMIT:-a050a3d61f4cb68b108fa7f07dcb3e4d7ef304df}"
dest="$venv/src"

if [ -d "$repo" ]; then
    git_dir="$repo"
else
    git_dir="$(mktemp -d)"
    trap 'rm -rf "$git_dir"' EXIT
    git clone --bare --filter=blob:none "$repo" "$git_dir"
fi
rm -rf "$dest/auto_LiRPA"
mkdir -p "$dest"
git -C "$git_dir" archive --format=tar "$commit" auto_LiRPA | tar -x -C "$dest"

# What its import needs besides torch and numpy (its setup.py lists more: test and
# tooling packages that the bounds never import; its CUDA extensions are not built).
"$venv/bin/python" -m pip install "appdirs==1.4.4" "graphviz==0.21" "packaging" "pyyaml" "tqdm"

"$venv/bin/python" - "$dest" <<'EOF'
import sys

sys.path.insert(0, sys.argv[1])
import warnings

warnings.filterwarnings("ignore")
import auto_LiRPA

print("auto_LiRPA", auto_LiRPA.__version__, "from", auto_LiRPA.__file__)
EOF
echo "run: $venv/bin/python $here/bench_certify.py --lirpa --save"
