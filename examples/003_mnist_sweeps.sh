#!/usr/bin/env bash
# Seed 003, MNIST sweeps: the perceptron's activation, dropout and optimizer, then perceptron vs CNN.
# Every run: Adam unless varied, batch 32, 30 epochs, 10% of train held out for validation
# (the seed held out 15,000 of the 60,000 for its sweeps).
#
# Commands:
#   cnn compare --arch mlp --dataset mnist --vary activation=relu,sigmoid,tanh \
#                                          --vary optimizer=adam,rmsprop,sgd             (Figs. 13 and 15)
#   cnn compare --arch mlp --dataset mnist --vary dropout=0,0.2                          (Fig. 14)
#   cnn compare --dataset mnist --vary arch=mlp,cnn003                                   (sections 7.1.2, 7.2.2)
# The seed's Fig. 13 (activations) and Fig. 15 (relu/sigmoid x three optimizers) are one 3 x 3 grid here.
# Reproduces:  seed 003 (Martín Valera 2019).
# Seed result: relu best in the first epochs, sigmoid and tanh nearly equal later; dropout slightly
#              better; all optimizers similar except sigmoid + SGD; perceptron 98.17% test (1.83% error),
#              CNN 99.35% test (0.65% error), 480 s of training each on an i5-8250U + MX150.
# Our result:  not yet measured (13 runs x 30 epochs of 54,000 images on a 2-core CPU).
# Runtime:     not yet measured.
#
# CNN_EXAMPLE_SMOKE=1 shrinks every run to 200 images and 1 epoch; CNN_OUT sets the output folder.
set -euo pipefail

DATA_DIR="${CNN_DATA_DIR:-$HOME/.cache/cnn/data}"
OUT="${CNN_OUT:-runs/examples}"
EPOCHS=30
SMOKE_ARGS=""
if [[ "${CNN_EXAMPLE_SMOKE:-0}" == 1 ]]; then
    EPOCHS=1
    SMOKE_ARGS="--limit 200"
fi

run() {  # one comparison on MNIST with the settings above
    # shellcheck disable=SC2086
    cnn compare --dataset mnist --epochs "$EPOCHS" --data-dir "$DATA_DIR" --out "$OUT" $SMOKE_ARGS "$@"
}

run --name mlp-activation-optimizer --arch mlp --vary activation=relu,sigmoid,tanh --vary optimizer=adam,rmsprop,sgd
run --name mlp-dropout --arch mlp --vary dropout=0,0.2
run --name mlp-vs-cnn --vary arch=mlp,cnn003
