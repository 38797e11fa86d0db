#!/usr/bin/env bash
# Seed 004, the two MNIST nets of the CNN lecture: the workshop net (conv 32 / pool / conv 64 / pool,
# Dense 64, dropout 0.3, RMSprop, 10% validation) and LeNet-5 (tanh, average pooling, 61,706 parameters).
# Each keeps its own training options (workshop: RMSprop, LeNet-5: Adam; both batch 32, 10 epochs);
# the comparison prints what differs besides the architecture.
#
# Command:     cnn compare --dataset mnist --vary arch=workshop,lenet5
# Reproduces:  seed 004 (Diaz Cely, "CNNs" lecture): "Taller MNIST con CNN en Keras" and its LeNet-5 slide.
# Seed result: none given (the lecture states architectures, not accuracies; the epoch count is ours).
# Our result:  not yet measured (2 x 10 epochs of 54,000 images on a 2-core CPU).
# Runtime:     not yet measured.
#
# CNN_EXAMPLE_SMOKE=1 shrinks it to 200 images and 1 epoch; CNN_OUT sets the output folder.
set -euo pipefail

DATA_DIR="${CNN_DATA_DIR:-$HOME/.cache/cnn/data}"
OUT="${CNN_OUT:-runs/examples}"
EPOCHS=10
SMOKE_ARGS=""
if [[ "${CNN_EXAMPLE_SMOKE:-0}" == 1 ]]; then
    EPOCHS=1
    SMOKE_ARGS="--limit 200"
fi

# shellcheck disable=SC2086
cnn compare --dataset mnist --vary arch=workshop,lenet5 --epochs "$EPOCHS" \
    --data-dir "$DATA_DIR" --out "$OUT" --name workshop-lenet5 $SMOKE_ARGS
