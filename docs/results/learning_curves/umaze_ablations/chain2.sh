#!/bin/bash
# after the umaze ablations: medium group preset run resumed into a late decay, then the OGBench-medium study
cd /work/run
PY=/work/main/.venv/bin/python
while kill -0 $1 2>/dev/null; do sleep 20; done
echo "== large leak probe group none $(date -u +%T)"
OMP_NUM_THREADS=1 $PY scripts/leak_probe.py 'checkpoints=[outputs/curves/large_cpu_group,outputs/curves/large_cpu_none]' \
    hydra.run.dir=outputs/leak_probe/large_cpu_preset > outputs/leak_probe/large_cpu_preset.log 2>&1
echo "   done $(date -u +%T) rc=$?"
echo "== medium group wsd $(date -u +%T)"
cp -r outputs/curves/medium_cpu_group outputs/curves/medium_cpu_group_wsd
OMP_NUM_THREADS=1 $PY scripts/train_diffuser.py train.resume=true hydra.run.dir=outputs/curves/medium_cpu_group_wsd \
    train.steps=26000 train.lr_schedule=wsd train.decay_steps=6000 train.num_threads=1 > outputs/curves/medium_cpu_group_wsd.log 2>&1
echo "   done $(date -u +%T) rc=$?"
OMP_NUM_THREADS=1 $PY scripts/learning_curve.py 'runs=[outputs/curves/medium_cpu_group_wsd]' final_multi_episodes=100 \
    hydra.run.dir=outputs/curves/eval/medium_cpu_group_wsd > outputs/curves/eval_medium_cpu_group_wsd.log 2>&1
echo "   eval done $(date -u +%T) rc=$?"
echo "== ogbench study $(date -u +%T)"
OMP_NUM_THREADS=1 $PY scripts/stitching_study.py env=ogbench_pointmaze_medium 'seeds=[0,1,2]' workers=1 'train_overrides=["train.num_threads=1"]' hydra.run.dir=outputs/stitching_study/ogbench_medium >> outputs/stitching_study/ogbench_medium_s8.log 2>&1
echo "   done $(date -u +%T) rc=$?"
