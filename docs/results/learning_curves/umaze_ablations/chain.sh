#!/bin/bash
# umaze time-to-score ablations of the cpu_umaze preset, norm=group, one thread, beside one other training
cd /work/run
PY=/work/main/.venv/bin/python
run() { name=$1; shift
  echo "== $name $(date -u +%T)"
  OMP_NUM_THREADS=1 $PY scripts/train_diffuser.py env=maze2d_umaze norm=group experiment=cpu_umaze \
    train.steps=6000 train.snapshot_every=1000 "$@" hydra.run.dir=outputs/ablations/umaze_$name > outputs/ablations/umaze_$name.log 2>&1
  echo "   done $(date -u +%T) rc=$?"
}
run dim32 model.dim=32
run compile train.compile=true
run batch64 train.batch_size=64
run data1m env.dataset_steps=1000000
run ema_default train.ema_decay=0.995 train.ema_every=10 train.ema_start=2000
echo "== all done $(date -u +%T)"
