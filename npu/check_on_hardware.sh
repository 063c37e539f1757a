#!/usr/bin/env bash
# Verify and benchmark the Amanuensis NPU encoder backend on a machine with an AMD XDNA NPU.
#
#   npu/check_on_hardware.sh [--kernel-dir DIR] [--corpus DIR] [--speech WAV] [--clips N]
#
# 1. the platform: kernel, amdxdna driver, /dev/accel node, XRT and pyxrt, xrt-smi's view of the NPU;
# 2. the kernel build (runs `make` here if build/ is empty and the toolchain is present);
# 3. the instruction-count convention: the self-test with npu_instr_units=words, then bytes;
# 4. check_on_hardware.py with the convention that passed: GEMM accuracy per precision, launch
#    latency, encoder agreement with the CPU at 0.3/1/5/10/30 s for base and tiny.en and the
#    timings, and (with --corpus) transcript equality with the CPU backend.
# Exit status 0 only if everything passed. The JSON report lands in ./npu_check_report.json.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
kernel_dir="$here/build"
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel-dir) kernel_dir="$2"; shift 2 ;;
        --corpus|--speech|--clips|--models|--precisions|--repeat) extra+=("$1" "$2"); shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python=python3
[ -f /opt/xilinx/xrt/setup.sh ] && source /opt/xilinx/xrt/setup.sh >/dev/null 2>&1

echo "== platform"
echo "kernel: $(uname -r)  (the amdxdna driver is in mainline from 6.14; older kernels need the out-of-tree xdna-driver)"
if lsmod 2>/dev/null | grep -q '^amdxdna'; then echo "amdxdna: loaded"; else echo "amdxdna: NOT loaded (sudo modprobe amdxdna)"; fi
ls -l /dev/accel/ 2>/dev/null || echo "no /dev/accel: no NPU device node"
if command -v xrt-smi >/dev/null 2>&1; then
    xrt-smi --version 2>/dev/null | head -20
    xrt-smi examine 2>/dev/null | sed -n '/Device(s) Present/,$p' | head -10
else
    echo "xrt-smi not found: XRT is not installed or /opt/xilinx/xrt/setup.sh was not sourced"
fi
"$python" - <<'PY' || { echo "pyxrt does not import: install XRT (with the amdxdna plugin) for this Python"; exit 1; }
import pyxrt, sys
print("pyxrt:", pyxrt.__file__, "python", sys.version.split()[0])
PY

echo "== kernel files in $kernel_dir"
if [ ! -f "$kernel_dir/final.xclbin" ] && [ "$kernel_dir" = "$here/build" ]; then
    echo "not built yet: running make"
    make -C "$here" || { echo "kernel build failed: see npu/README.md"; exit 1; }
fi
ls -l "$kernel_dir"/final.xclbin "$kernel_dir"/insts.* "$kernel_dir"/kernel.json 2>&1
[ -f "$kernel_dir/kernel.json" ] && cat "$kernel_dir/kernel.json"

echo "== instruction count convention (npu_instr_units)"
units=""
for u in words bytes; do
    echo "-- self-test with npu_instr_units=$u"
    if (cd "$repo" && timeout 120 "$python" "$here/check_on_hardware.py" --kernel-dir "$kernel_dir" \
            --instr-units "$u" --self-test-only --out /tmp/npu_selftest_$u.json); then
        units="$u"; break
    fi
done
if [ -z "$units" ]; then
    echo "the self-test failed with both conventions: the kernel build, the driver or the firmware is at fault"
    echo "(if a run hung, reset the NPU: sudo modprobe -r amdxdna && sudo modprobe amdxdna)"
    exit 1
fi
echo "npu_instr_units=$units works: set WYO_AMANUENSIS_NPU_INSTR_UNITS=$units (or --npu-instr-units $units)"

echo "== accuracy and speed"
cd "$repo" && "$python" "$here/check_on_hardware.py" --kernel-dir "$kernel_dir" --instr-units "$units" "${extra[@]}"
