#!/usr/bin/env bash
# Seed 001, optimizer study: net2 on CIFAR-10 trained with Adam, Adadelta and Adagrad (each at its Keras
# default learning rate, 0.001), batch 128, 16 epochs.
#
# Command:     cnn compare --arch net2 --dataset cifar10 --vary optimizer=adam,adadelta,adagrad
# Reproduces:  seed 001 (Lagos Valtierra 2023), Figs. 12-14 and section V.
# Seed result: Adam best; with Adadelta and Adagrad accuracy "converges to values near and below 0.5".
# Our result:  not yet measured (3 x 16 epochs of 45,000 CIFAR-10 images on a 2-core CPU).
# Runtime:     not yet measured.
#
# Writes runs/examples/optimizers/{comparison.png,csv,json} and one run directory per optimizer.
# CNN_EXAMPLE_SMOKE=1 shrinks it to 200 images and 1 epoch; CNN_OUT sets the output folder.
set -euo pipefail

DATA_DIR="${CNN_DATA_DIR:-$HOME/.cache/cnn/data}"
OUT="${CNN_OUT:-runs/examples}"
EPOCHS=16
SMOKE_ARGS=""
if [[ "${CNN_EXAMPLE_SMOKE:-0}" == 1 ]]; then
    EPOCHS=1
    SMOKE_ARGS="--limit 200"
fi

# shellcheck disable=SC2086
cnn compare --arch net2 --dataset cifar10 --vary optimizer=adam,adadelta,adagrad --epochs "$EPOCHS" \
    --data-dir "$DATA_DIR" --out "$OUT" --name optimizers $SMOKE_ARGS
