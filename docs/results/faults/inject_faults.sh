#!/usr/bin/env bash
# Injects every fault of docs/results/faults.md and prints what the user sees (stderr, exit code).
#   bash docs/results/faults/inject_faults.sh > docs/results/faults/outputs.txt 2>&1     (~7 min on 2 loaded cores)
#   bash docs/results/faults/inject_faults.sh 5          # one section only
# Tiny sizes: a 3000-step umaze dataset, an 8-wide U-Net, horizon 32.
set -u
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
W=$(mktemp -d /tmp/faults.XXXX)
export MPLBACKEND=Agg HYDRA_FULL_ERROR=0
TINY="model.dim=8 model.dim_mults=[1,2,2] env.horizon=32 env.n_diffusion_steps=8 env.dataset_steps=3000
      train.batch_size=4 train.steps=2 train.num_threads=1 train.progress=false train.sample_every=0 data_dir=$W/data"

show() {  # show <title> <command...>: the command, its stderr minus warnings, its last stdout line, exit code
  echo "### $1"; shift
  echo "\$ ${*//$W/\$W}"
  "$@" > "$W/out" 2> "$W/err"; rc=$?
  grep -v -e "UserWarning" -e "is validated against ConfigStore" -e "This behavior is deprecated" \
    -e "automatic_schema_matching" -e "^  self._target" -e "^  _run_hydra" -e "^  run_and_report" \
    -e "^sys:1:" -e "^$" "$W/err" | sed "s#$W#\$W#g"
  echo "[stdout, last line] $(tail -n 1 "$W/out" | sed "s#$W#\$W#g")"
  echo "[exit code] $rc"; echo
}
train() { $PY scripts/train_diffuser.py $TINY "$@"; }
SECTIONS=${1:-1 2 3 4 5}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

if want 1; then
echo "## 1. Config validation"
show "wrong type" train train.steps=abc
show "float for an int" train seed=1.5
show "unknown key added with +" train +train.stpes=5
show "unknown key without + (Hydra refuses it before the job starts)" train train.stpes=5
show "key removed" train '~train.lr'
show "setting the norm does not have" train +norm.momentum=0.1
show "horizon not a multiple of the U-Net's length multiple" train env.horizon=30
show "horizon longer than the maze's episodes" train env.horizon=512
show "GroupNorm groups not dividing the widths" train norm.groups=3
show "batch statistics with batch size 1" train norm=batch train.batch_size=1
show "unknown sampler" train diffusion.sampler=euler
show "unknown maze" train env.name=maze2d-tiny
show "plan_maze: unknown mode" $PY scripts/plan_maze.py mode=both
show "make_maze_dataset: bool that is not one" $PY scripts/make_maze_dataset.py force=maybe
show "leak_probe: unknown nested key" $PY scripts/leak_probe.py +probe.layers=3
show "study: wrong type in a list" $PY scripts/stitching_study.py 'seeds=[0,x]'

fi
if want 2; then
echo "## 2. Data faults (train_diffuser dataset=<file>)"
$PY - "$W" <<'PY'
import sys, h5py, numpy as np
from pathlib import Path
from diffnorm.data.d4rl_format import D4RL_LAYOUT, write_d4rl_hdf5
w = Path(sys.argv[1]); rng = np.random.default_rng(0); n = 400
def arrays():
    a = {k: rng.normal(size=(n, *s)).astype(np.float32) for k, s in D4RL_LAYOUT.items()}
    a["terminals"] = np.zeros(n, bool); a["timeouts"] = np.zeros(n, bool); return a
good = write_d4rl_hdf5(w / "good.hdf5", arrays())
raw = good.read_bytes()
(w / "truncated.hdf5").write_bytes(raw[: len(raw) // 2])
flipped = bytearray(raw); flipped[len(raw) * 7 // 10] ^= 0xFF; (w / "corrupt.hdf5").write_bytes(bytes(flipped))
(w / "not_hdf5.hdf5").write_text("observations,actions\n1,2\n")
def raw_file(name, edit):
    a = arrays(); edit(a)
    with h5py.File(w / name, "w") as f:
        for k, v in a.items():
            if v is None: f.create_group(k)
            else: f[k] = v
def nan_row(a): a["observations"][123, 1] = np.nan
def inf_reward(a): a["rewards"][77] = np.inf
def str_actions(a): a["actions"] = np.array([[b"up", b"dn"]] * n)
def half_flag(a): a["timeouts"] = np.zeros(n); a["timeouts"][250] = 0.5
def empty(a): a.update({k: v[:0] for k, v in a.items()})
def short(a): a["infos/qpos"] = a["infos/qpos"][:390]
def group(a): a["infos/goal"] = None
def missing(a): del a["timeouts"]
for name, edit in [("nan_row", nan_row), ("inf_reward", inf_reward), ("string_actions", str_actions),
                   ("flag_half", half_flag), ("empty", empty), ("short_key", short), ("group", group),
                   ("missing_key", missing)]:
    raw_file(name + ".hdf5", edit)
PY
for f in truncated corrupt not_hdf5 nan_row inf_reward string_actions flag_half empty short_key group missing_key; do
  show "$f" train "dataset=$W/$f.hdf5"
done
show "missing file" train dataset=$W/nowhere.hdf5
show "horizon longer than every episode of the file" train "dataset=$W/good.hdf5" env.horizon=512 env.max_episode_steps=800

fi
if want 3; then
echo "## 3. Interruptions"
show "NaN loss (learning rate 1e12), checkpoint every step" train train.steps=40 train.lr=1e12 train.checkpoint_every=1 \
  train.log_every=5 hydra.run.dir=$W/nan
show "... the kept checkpoint loads" $PY -c "from diffnorm.training.checkpoint import load_checkpoint; \
import torch; m = load_checkpoint('$W/nan'); print('step', m.step, 'finite', all(torch.isfinite(p).all().item() for p in m.diffusion.parameters()))"
echo "### SIGINT (Ctrl-C) during training"
echo "\$ python scripts/train_diffuser.py \$TINY train.steps=100000 train.checkpoint_every=50 hydra.run.dir=\$W/int & (wait for checkpoint) ; kill -INT"
# python itself in the background (not a shell function, whose subshell would get the signal instead)
$PY scripts/train_diffuser.py $TINY train.steps=100000 train.checkpoint_every=50 train.log_every=50 hydra.run.dir=$W/int \
  > $W/int.out 2> $W/int.err &
pid=$!
while [ ! -f $W/int/checkpoint.safetensors ]; do sleep 0.2; done
sleep 1; kill -INT $pid; wait $pid; rc=$?
grep -v -e Warning -e "^$" $W/int.err | sed "s#$W#\$W#g"; echo "[stdout, last line] $(tail -n 1 $W/int.out | sed "s#$W#\$W#g")"; echo "[exit code] $rc"; echo
step=$(sed -n 's/.*SIGINT at step \([0-9]*\).*/\1/p' $W/int.err)
show "... resume" train train.steps=$((step + 10)) train.checkpoint_every=50 train.log_every=50 train.resume=true hydra.run.dir=$W/int
show "resume with another norm" train train.steps=$((step + 20)) train.resume=true norm=none hydra.run.dir=$W/int
show "checkpoint file truncated" bash -c "head -c 1000 $W/int/ema.safetensors > $W/int/ema.cut && mv $W/int/ema.cut $W/int/ema.safetensors \
  && $PY scripts/plan_maze.py checkpoint=$W/int/ema.safetensors episodes=1 max_steps=5"

fi
if want 4; then
echo "## 4. Provenance recorded in results.json"
$PY -c "import json; print(json.dumps(json.load(open('$W/int/results.json'))['provenance'], indent=1))"
echo

fi
if want 5; then
echo "## 5. Multirun: one bad job of two"
show "basic launcher" $PY scripts/train_diffuser.py -m norm.groups=3,4 $TINY hydra.sweep.dir=$W/sweep
echo "\$ ls \$W/sweep/0 \$W/sweep/1"; ls $W/sweep/0 $W/sweep/1 2>&1 | sed "s#$W#\$W#g"; echo
echo "\$ cat \$W/sweep/0/error.json"; sed "s#$W#\$W#g" $W/sweep/0/error.json; echo
show "joblib launcher (2 processes)" $PY scripts/train_diffuser.py -m hydra/launcher=joblib norm.groups=3,4 $TINY \
  hydra.sweep.dir=$W/sweepj
echo "\$ ls \$W/sweepj/0 \$W/sweepj/1"; ls $W/sweepj/0 $W/sweepj/1 2>&1 | sed "s#$W#\$W#g"
fi
rm -rf "$W"
