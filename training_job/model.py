"""The LSTM-Attention forecaster: Normalization → LSTM(return_sequences) → attention → Dense.

Input normalisation is adapted on the training windows only and lives inside the model, and so
does the target scale, so the saved ``.keras`` file is the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops


@keras.saving.register_keras_serializable(package="stockcast")
class AdditiveAttention(layers.Layer):
    """Bahdanau-style attention pooling over time: score_t = vᵀ tanh(W h_t); context = Σ softmax(score)_t h_t."""

    def __init__(self, units: int = 32, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Create the projection and scoring weights."""
        self.w = self.add_weight(name="w", shape=(input_shape[-1], self.units), initializer="glorot_uniform")
        self.b = self.add_weight(name="b", shape=(self.units,), initializer="zeros")
        self.v = self.add_weight(name="v", shape=(self.units, 1), initializer="glorot_uniform")

    def call(self, hidden: object) -> object:
        """Pool a (batch, time, features) sequence into (batch, features)."""
        scores = ops.matmul(ops.tanh(ops.matmul(hidden, self.w) + self.b), self.v)
        weights = ops.softmax(scores, axis=1)
        return ops.sum(weights * hidden, axis=1)

    def get_config(self) -> dict:
        """Serialisable configuration."""
        return {**super().get_config(), "units": self.units}


@dataclass(frozen=True)
class FitResult:
    """A trained model and its per-epoch history."""

    model: keras.Model
    loss: list[float]
    val_loss: list[float]
    best_epoch: int


def build(
    window: int, n_features: int, units: int, learning_rate: float, x_train: np.ndarray, y_scale: float
) -> tuple[keras.Model, keras.Model]:
    """Build (trainable, exported) models sharing weights; Normalization is adapted on ``x_train``.

    The trainable one predicts the target in units of its training standard deviation (a loss
    near 1 trains far better than one near 1e-6); the exported one rescales to log returns.
    """
    norm = layers.Normalization(axis=-1, name="normalize")
    norm.adapt(x_train.reshape(-1, n_features))
    inputs = keras.Input(shape=(window, n_features), name="features")
    hidden = layers.LSTM(units, return_sequences=True, name="lstm")(norm(inputs))
    context = AdditiveAttention(units, name="attention")(hidden)
    scaled = layers.Dense(1, name="head")(context)
    trainable = keras.Model(inputs, scaled, name="lstm_attention_scaled")
    trainable.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    exported = keras.Model(inputs, layers.Rescaling(y_scale, name="target_scale")(scaled), name="lstm_attention")
    return trainable, exported


def fit(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    units: int,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    patience: int,
    seed: int,
    on_epoch: object = None,
) -> FitResult:
    """Train with early stopping on the validation slice, seeded for reproducibility."""
    keras.utils.set_random_seed(seed)
    y_scale = float(np.std(y_train)) or 1.0
    model, exported = build(x_train.shape[1], x_train.shape[2], units, learning_rate, x_train, y_scale)
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    ]
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=on_epoch))
    history = model.fit(
        x_train,
        y_train / y_scale,
        validation_data=(x_val, y_val / y_scale),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    val = [float(x) for x in history.history["val_loss"]]
    return FitResult(exported, [float(x) for x in history.history["loss"]], val, int(np.argmin(val)) + 1)
