cd /work/main
PY=/work/main/.venv/bin/python
run() { name=$1; shift
  echo "== $name $(date -u +%T)"
  OMP_NUM_THREADS=1 $PY scripts/train_diffuser.py env=maze2d_umaze norm=group experiment=cpu_umaze \
    train.steps=6000 train.snapshot_every=1000 train.num_threads=1 "$@" hydra.run.dir=outputs/ablations/umaze_$name > outputs/ablations/umaze_$name.log 2>&1
  echo "   done $(date -u +%T) rc=$?"
}
run data1m env.dataset_steps=1000000
run ema_default train.ema_decay=0.995 train.ema_every=10 train.ema_start=2000
echo "== eval $(date -u +%T)"
OMP_NUM_THREADS=1 $PY scripts/learning_curve.py 'runs=[outputs/ablations/umaze_data1m,outputs/ablations/umaze_ema_default]' final_multi_episodes=100 hydra.run.dir=outputs/ablations/eval_rest > outputs/ablations/eval_rest.log 2>&1
echo "   done $(date -u +%T) rc=$?"
