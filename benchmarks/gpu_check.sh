#!/usr/bin/env bash
# The GPU check, run from the repository root on a machine with CUDA torch (no MLflow needed: tracking=none).
#   0. the CUDA tests (tests/test_cuda_graphs.py: graphed training steps equal eager ones bit for bit);
#   1. a job with trainer.device=cuda trains and reports (torch's fused cuDNN path);
#   2. a trainer.seeds=4 job (peephole LSTM: the stacked kernel, replayed as CUDA graphs) killed inside its
#      second checkpoint round resumes on CUDA with every final metric equal to an uninterrupted one
#      (trainer.deterministic=true);
#   3. cells without a cuDNN path (sLSTM, the orthogonal RNN) train on CUDA, and four seeds of S6 and of the
#      peephole LSTM train side by side on the stacked kernel path;
#   4. seed-parallel speed on CUDA: K seeds batched against one seed, GRU and peephole LSTM, hidden 64 and 256,
#      and the peephole LSTM with trainer.cuda_graphs=false;
#   5. with KERNELS=1: benchmarks/gpu_kernels.py: every cell's whole-sequence paths equal to its step loop in
#      float64 on CUDA, their speed against cuDNN, eager and in a CUDA graph.
# Python packages that the machine lacks (hydra-core, omegaconf, antlr4) are expected as wheels in .whl/.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
for name in plugins tasks conf; do [ -e rnnbench/$name ] || ln -s ../$name rnnbench/$name; done
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
(cd tests && python3 -m pytest -p no:cacheprovider -q -rs test_cuda_graphs.py 2>&1) | tee "$OUT/tests.txt"
python3 - <<'EOF' 2>&1 | tee "$OUT/check.txt"
import os, signal, subprocess, sys, tempfile, time, json
from pathlib import Path
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "cudnn", torch.backends.cudnn.version())
from hydra import compose, initialize_config_module
from rnnbench.config import register_configs
from rnnbench.manager import get_registry
register_configs(get_registry())

def cfg(*o):
    with initialize_config_module(config_module="rnnbench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=["tracking=none", "trainer.progress=none", *o])

from rnnbench.runner import run_job
tmp = Path(tempfile.mkdtemp())
t0 = time.perf_counter()
(r,) = run_job(cfg("task=adding", "cell=gru", "trainer.device=cuda", "trainer.steps=2000",
                   "task.dependency_length=50", "diagnostics.every=500"), tmp / "a", tmp / "a")
print(f"1. gru adding T=50 on cuda: {r.outcome} at step {r.step}, final accuracy {r.metrics.get('accuracy')}, "
      f"{r.metrics['time/steps_per_second']:.0f} steps/s, {time.perf_counter() - t0:.1f} s")

args = ["task=adding", "cell=peephole_lstm", "task.dependency_length=20", "trainer.device=cuda", "trainer.seeds=4",
        "trainer.steps=200", "trainer.checkpoint_every=40", "trainer.early_stop=false",
        "trainer.deterministic=true", "trainer.final_eval_sequences=2000", "diagnostics.every=100"]
code = ("import sys; from hydra import compose, initialize_config_module; from pathlib import Path;"
        "from rnnbench.config import register_configs; from rnnbench.manager import get_registry;"
        "register_configs(get_registry());"
        "from rnnbench.runner import run_job\n"
        "with initialize_config_module(config_module='rnnbench.conf', version_base='1.3'):\n"
        "    c = compose(config_name='config', overrides=['tracking=none','trainer.progress=none']+sys.argv[2:])\n"
        "rs = run_job(c, Path(sys.argv[1]), Path(sys.argv[1]))\n"
        "print('RESULTS', [(r.seed, r.outcome, r.metrics.get('loss'), r.metrics.get('accuracy')) for r in rs])")
def job(folder, fault=None):
    env = dict(os.environ, **({"RNNBENCH_FAULT": fault} if fault else {}))
    p = subprocess.run([sys.executable, "-c", code, str(folder), *args], env=env, capture_output=True, text=True)
    lines = [l for l in p.stdout.splitlines() if l.startswith("RESULTS")]
    return p.returncode, lines[-1] if lines else p.stderr[-1500:]
print("2. uninterrupted:", job(tmp / "u"))
print("   killed:       ", job(tmp / "k", "checkpoint.write@6"))
print("   resumed:      ", job(tmp / "k"))
for cell, extra in (("slstm", ()), ("orthogonal_rnn", ()), ("s6", ("trainer.seeds=4",)),
                    ("peephole_lstm", ("trainer.seeds=4",))):
    t0 = time.perf_counter()
    rs = run_job(cfg("task=adding", f"cell={cell}", "trainer.device=cuda", "trainer.steps=300",
                     "task.dependency_length=20", "diagnostics.every=100", *extra), tmp / cell, tmp / cell)
    print(f"3. {cell} {' '.join(extra)} on cuda: " + "; ".join(
        f"seed {r.seed} {r.outcome} at step {r.step}, loss {r.metrics.get('loss'):.4f}" for r in rs)
        + f"; {time.perf_counter() - t0:.1f} s")
EOF
for run in "gru 64" "gru 256" "peephole_lstm 64" "peephole_lstm 256" "peephole_lstm 64 trainer.cuda_graphs=false"; do
  set -- $run
  python3 benchmarks/seed_parallel.py --device cuda --cell $1 --hidden $2 --seeds 8 --steps 100 \
    --repeats 3 --no-sequential "${@:3}" 2>&1 | tee -a "$OUT/seed_parallel.txt"
done
if [ "${KERNELS:-0}" = 1 ]; then
  python3 benchmarks/gpu_kernels.py --hidden 128 --length 1000 --repeats 3 2>&1 | tee "$OUT/kernels.txt"
fi
