#!/bin/bash
# A device-like environment on this machine, for the CPU dry run of scripts/device/acdc_gpu.sh:
#   bash scripts/device/dryrun_env.sh DIR && source DIR/env.sh
# As ../shared/device/stage.sh does on the device: a Python with no site-packages of its own (a venv made
# without them), the dependencies on PYTHONPATH (DIR/site: links to this Python's site-packages entries,
# without this project, .pth files and old backports that would shadow the standard library), the project
# from the working tree on PYTHONPATH, and nnU-Net's console scripts as shims in DIR/bin; no
# nnUNetv2_mona_* commands anywhere on PATH.
# DIR/env.sh sets PATH, PYTHONPATH and nnUNet_raw / nnUNet_preprocessed / nnUNet_results (under DIR/nn).
set -eu
D=$(mkdir -p "${1:?usage: dryrun_env.sh DIR}" && cd "$1" && pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$D/site" "$D/bin" "$D/nn/raw" "$D/nn/pre" "$D/nn/res"
[ -x "$D/venv/bin/python3" ] || "$PY" -m venv --without-pip "$D/venv"
"$PY" - "$D" <<'PY'
import configparser, glob, os, sys
d = sys.argv[1]
for sp in [p for p in sys.path if os.path.basename(p.rstrip("/")) in ("site-packages", "dist-packages")]:
    for name in sorted(os.listdir(sp)) if os.path.isdir(sp) else []:
        link = os.path.join(d, "site", name)
        shadows_stdlib = name.split(".")[0] in sys.stdlib_module_names  # e.g. an old argparse.py backport
        if name.endswith(".pth") or "nnunet_mona" in name or name.startswith("__") or shadows_stdlib \
                or os.path.lexists(link):
            continue
        os.symlink(os.path.join(sp, name), link)
cp = configparser.ConfigParser()
cp.optionxform = str
cp.read(glob.glob(os.path.join(d, "site", "nnunetv2-*.dist-info", "entry_points.txt")))
for name, target in cp["console_scripts"].items():  # the shims stage.sh writes
    mod, fn = target.split(":")
    path = os.path.join(d, "bin", name)
    with open(path, "w") as f:
        f.write(f'#!/usr/bin/env python3\nimport sys\nfrom {mod} import {fn}\n'
                f'if __name__ == "__main__":\n    sys.exit({fn}())\n')
    os.chmod(path, 0o755)
PY
cat > "$D/env.sh" <<ENV
export PYTHONPATH=$D/site:$ROOT PATH=$D/bin:$D/venv/bin:/usr/bin:/bin PYTHONUNBUFFERED=1
export nnUNet_raw=$D/nn/raw nnUNet_preprocessed=$D/nn/pre nnUNet_results=$D/nn/res
unset nnUNet_extTrainer
ENV
echo "device-like environment in $D: source $D/env.sh"
