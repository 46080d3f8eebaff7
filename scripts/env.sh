# Sourced by the scripts: point MEDMNIST_ROOT at the bundled MedMNIST files when they exist
# (the repository's CI layout keeps them in ../shared/data/medmnist).
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${MEDMNIST_ROOT:-}" ] && [ -d "$_here/../shared/data/medmnist" ]; then
  export MEDMNIST_ROOT="$(cd "$_here/../shared/data/medmnist" && pwd)"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc 2>/dev/null || echo 2)}"
