#!/bin/bash
# after the large channel preset run: its curve, then the leak probe of the three large preset planners
cd /work/run
PY=/work/main/.venv/bin/python
while kill -0 $1 2>/dev/null; do sleep 30; done
echo "== large leak probe channel $(date -u +%T)"
OMP_NUM_THREADS=1 $PY scripts/leak_probe.py 'checkpoints=[outputs/curves/large_cpu_channel]' \
    hydra.run.dir=outputs/leak_probe/large_cpu_preset_channel > outputs/leak_probe/large_cpu_preset_channel.log 2>&1
echo "   done $(date -u +%T) rc=$?"
echo "== large channel curve $(date -u +%T)"
OMP_NUM_THREADS=1 $PY scripts/learning_curve.py 'runs=[outputs/curves/large_cpu_channel]' 'steps=[12000,24000,30000,36000]' final_multi_episodes=100 \
    hydra.run.dir=outputs/curves/eval/large_cpu_channel > outputs/curves/eval_large_cpu_channel.log 2>&1
echo "   done $(date -u +%T) rc=$?"
