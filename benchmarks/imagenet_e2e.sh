#!/bin/sh
# A study on a generated ImageNet-shaped tree of 1,000 classes, end to end on the local
# backend: pre-training on the 500 source classes and fine-tuning at `full` (and 1 per
# class) on the 500 target classes, every set on the streamed path (data_memory_gb 0.001),
# decoded once into the decode cache, to collected results. Tiny on purpose: 2 training
# and 1 validation image per class, the narrow AlexNet at 32 px, so that a 2-core machine
# runs it in minutes. Run by hand; figures in BENCHMARKS.md.
#
#   sh benchmarks/imagenet_e2e.sh [DIR]        (default /tmp/hpcxfer-imagenet-e2e; PYTHON=...)
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DIR=${1:-/tmp/hpcxfer-imagenet-e2e}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HPCXFER_CACHE="$DIR/cache" TMPDIR="$DIR/node"
mkdir -p "$DIR/node"
rm -rf "$DIR/runs" "$DIR/cache"
if [ ! -d "$DIR/tree" ]; then
    "$PY" -m benchmarks.make_imagenet_tree "$DIR/tree" --classes 1000 --train-per-class 2 --val-per-class 1 >/dev/null
fi
cat > "$DIR/grid.yaml" <<EOF
study: imagenet-e2e
root: $DIR/runs
data: {dataset: imagenet, path: $DIR/tree, val_labels: ILSVRC2012_validation_ground_truth.txt,
       class_ids: ILSVRC2012_class_ids.txt, image_size: 32, crop: 32, verify: headers}
arch: alexnet-narrow
pretrain: {epochs: 4, batch_size: 50, decay_every: 3}      # 500 classes x 2 = 1,000 images
finetune:
  split: [0]
  examples_per_class: [1, full]
  epochs: 4
  batch_size: 25
experiments:
  - {name: named, protocol: [scratch, common]}
  - {name: n5 h1, transfer_layers: 5, high_lr_layers: 1}
runtime: {eval_every: 2, data_memory_gb: 0.001, loader_workers: 1, tensorboard: false}
local: {max_parallel: 2}
EOF
"$PY" -m hpcxfer plan "$DIR/grid.yaml" | tail -3
start=$(date +%s.%N)
"$PY" -m hpcxfer submit "$DIR/grid.yaml" --backend local --wait
end=$(date +%s.%N)
"$PY" -m hpcxfer status "$DIR/runs/imagenet-e2e"
"$PY" -m hpcxfer collect "$DIR/runs/imagenet-e2e" --format markdown
"$PY" - "$DIR/runs/imagenet-e2e" <<'EOF'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1], "tasks").glob("*/result.json")):
    r = json.loads(p.read_text())
    log = (p.parent / "log.txt").read_text()
    cached = "complete: later passes read it" in log or "reading" in log
    print(f"{r['task_id']}: data_path {r['data_path']}, decode cache {'used' if cached else 'NOT used'}, "
          f"val_acc {r['val_acc']:.4f}, wall {r['wall_s']:.1f} s")
EOF
echo "submit --wait took $(echo "$end - $start" | bc) s"
ls -A "$DIR/node/hpcxfer-decoded" 2>/dev/null | sed 's/^/left in the node-local folder: /' || true
