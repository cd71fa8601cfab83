"""LSTM-Attention with a linear autoregressive skip path, seed averaging and output shrinkage.

Normalization → LSTM(return_sequences) → additive attention → Dense is the card's model. Beside
it, as in LSTNet, a linear "highway" maps the last ``ar_lags`` log returns straight to the
output: a linear signal in returns needs no LSTM to be found, and the skip path starts from its
weighted least-squares solution, so training begins at the linear model and only keeps what the
LSTM adds on validation. Members trained from several seeds are averaged, and the average is
multiplied by a shrinkage factor λ∈[0, 1] fitted on the validation slice (λ = 0 is exactly
persistence). Input normalisation, target scale and λ live inside the exported model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

log = logging.getLogger(__name__)
RET_1 = 0  # column of the 1-minute log return in the feature matrix (features.FEATURES)
# bump whenever build_member changes what a member's weights mean: every older champion then cold-starts
ARCHITECTURE = 1


def architecture(
    *, window: int, horizon: int, units: int, ar_lags: int, seeds: int, features: Sequence[str]
) -> dict[str, object]:
    """What a member's weights depend on: two models with the same one can start from each other's weights."""
    return {
        "architecture": ARCHITECTURE,
        "window": window,
        "horizon": horizon,
        "units": units,
        "ar_lags": min(ar_lags, window),  # what fit builds: a longer AR path is cut to the window
        "seeds": max(seeds, 1),
        "features": list(features),
    }


def fingerprint(spec: dict[str, object]) -> str:
    """A short, stable hash of an :func:`architecture` (a version tag compared before a warm start)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


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


@keras.saving.register_keras_serializable(package="stockcast")
class RecentReturns(layers.Layer):
    """The last ``lags`` values of one feature column, divided by ``scale``: the AR path's input."""

    def __init__(self, lags: int = 10, column: int = RET_1, scale: float = 1.0, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.lags, self.column, self.scale = lags, column, scale

    def call(self, x: object) -> object:
        """(batch, time, features) → (batch, lags)."""
        return x[:, -self.lags :, self.column] / self.scale

    def get_config(self) -> dict:
        """Serialisable configuration."""
        return {**super().get_config(), "lags": self.lags, "column": self.column, "scale": self.scale}


@dataclass(frozen=True)
class FitResult:
    """A trained model and its per-epoch history (of the first member)."""

    model: keras.Model
    loss: list[float]
    val_loss: list[float]
    best_epoch: int  # 0: no epoch improved on the initial (linear) model
    shrinkage: float
    seeds: int
    best_val_loss: float  # of the first member, the initial point included
    initial_val_loss: float = float("nan")  # of the first member before its first epoch (a warm start: the champion's)
    warm: bool = False  # the members started from a champion's weights


class WarmStartError(ValueError):
    """A champion's weights cannot start this fit: another layout, or no target scale to predict in."""


@dataclass(frozen=True)
class WarmStart:
    """The weights each member starts from (a champion's members, in order) and the target scale they predict in."""

    members: list[list[np.ndarray]]
    y_scale: float


def warm_start_from(model: keras.Model, seeds: int) -> WarmStart:
    """The member weights and target scale of ``model``, a model :func:`fit` exported with ``seeds`` members.

    The members predict in units of the target scale of the fit that trained them; a warm start
    keeps that scale, so the weights mean what they meant. It is read off the AR path's input
    layer, which divides by it; a model without one (``ar_lags=0``) raises :class:`WarmStartError`.
    """
    try:
        members = [model.get_layer(f"lstm_attention_ar_{k}") for k in range(max(seeds, 1))]
        scale = float(members[0].get_layer("recent_returns").get_config()["scale"])
    except (ValueError, KeyError) as exc:  # Keras raises ValueError for a layer it does not have
        raise WarmStartError(f"not a model of {max(seeds, 1)} members with an AR path: {exc}") from None
    if not np.isfinite(scale) or scale <= 0:
        raise WarmStartError(f"target scale {scale} is not a positive number")
    return WarmStart([m.get_weights() for m in members], scale)


def symbol_weights(symbols: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-window weights 1/var(returns of its symbol): every symbol counts the same, whatever its volatility."""
    weights = np.empty(len(y), dtype=np.float64)
    for symbol in np.unique(symbols):
        mask = symbols == symbol
        var = float(np.var(y[mask]))
        weights[mask] = 1.0 / var if var > 0 else 0.0
    mean = weights.mean()
    return weights / mean if mean > 0 else np.ones(len(y))


def ridge_ar(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, lags: int, scale: float = 1.0, alpha: float = 1e-3
) -> tuple[np.ndarray, float]:
    """Weighted ridge regression of ``y`` on the last ``lags`` returns / ``scale``: (coefficients, intercept)."""
    design = x[:, -lags:, RET_1].astype(np.float64) / scale
    mean_x = np.average(design, axis=0, weights=weights)
    mean_y = float(np.average(y, weights=weights))
    centred = design - mean_x
    gram = (centred * weights[:, None]).T @ centred
    penalty = alpha * np.trace(gram) / lags * np.eye(lags)
    coef = np.linalg.solve(gram + penalty, (centred * weights[:, None]).T @ (y - mean_y))
    return coef, mean_y - float(mean_x @ coef)


def build_member(
    window: int,
    n_features: int,
    units: int,
    lags: int,
    learning_rate: float,
    x_train: np.ndarray,
    y_scale: float,
    index: int = 0,
) -> keras.Model:
    """One member predicting the target in units of ``y_scale``: LSTM-Attention head + linear AR path.

    The head starts at zero, so an untrained member is exactly its AR path; ``lags=0`` leaves the
    AR path out (the card's plain LSTM-Attention, used as the benchmarks' reference).
    """
    norm = layers.Normalization(axis=-1, name="normalize")
    norm.adapt(x_train.reshape(-1, n_features))
    inputs = keras.Input(shape=(window, n_features), name="features")
    hidden = layers.LSTM(units, return_sequences=True, name="lstm")(norm(inputs))
    context = AdditiveAttention(units, name="attention")(hidden)
    if lags == 0:
        out = layers.Dense(1, name="head")(context)
    else:
        head = layers.Dense(1, kernel_initializer="zeros", name="head")(context)
        ar = layers.Dense(1, name="ar")(RecentReturns(lags, RET_1, y_scale, name="recent_returns")(inputs))
        out = layers.Add(name="sum")([head, ar])
    model = keras.Model(inputs, out, name=f"lstm_attention_ar_{index}")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", weighted_metrics=[])
    return model


class _KeepBest(keras.callbacks.Callback):
    """Early stopping that also counts the starting point: weights never end worse than before training."""

    def __init__(self, x_val: np.ndarray, y_val: np.ndarray, w_val: np.ndarray, patience: int) -> None:
        super().__init__()
        self.val = (x_val, y_val, w_val)
        self.patience = patience

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Record the initial validation loss and weights."""
        x, y, w = self.val
        self.best = self.initial = float(self.model.evaluate(x, y, sample_weight=w, verbose=0, batch_size=4096))
        self.best_weights = self.model.get_weights()
        self.best_epoch, self.wait = 0, 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Keep the best weights; stop after ``patience`` epochs without improvement."""
        current = float((logs or {})["val_loss"])
        if current < self.best:
            self.best, self.best_weights, self.best_epoch, self.wait = current, self.model.get_weights(), epoch + 1, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        """Restore the best weights seen, the initial ones included."""
        self.model.set_weights(self.best_weights)


def shrinkage(predicted: np.ndarray, actual: np.ndarray) -> float:
    """λ∈[0, 1] minimising Σ(actual − λ·predicted)²: least squares, clipped."""
    denom = float(np.dot(predicted, predicted))
    return 0.0 if denom <= 0 else float(np.clip(np.dot(predicted, actual) / denom, 0.0, 1.0))


def fit(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    symbols_train: np.ndarray,
    symbols_val: np.ndarray,
    units: int,
    ar_lags: int,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    patience: int,
    seed: int,
    seeds: int = 1,
    on_epoch: Callable[[int, dict], None] | None = None,
    warm: WarmStart | None = None,
) -> FitResult:
    """Train ``seeds`` members with early stopping, average them and fit λ on validation.

    The loss is weighted by 1/var of each symbol's returns, so a volatile ticker does not drown
    the others; the exported model outputs log returns. With ``warm``, each member starts from the
    matching member of a champion (its normalisation included) and predicts in the champion's
    target scale; early stopping then counts the champion's own weights as the starting point.
    A ``warm`` whose weights do not fit these members raises :class:`WarmStartError` before any training.
    """
    window, n_features = x_train.shape[1], x_train.shape[2]
    lags = min(ar_lags, window)
    y_scale = warm.y_scale if warm else float(np.std(y_train)) or 1.0
    w_train = symbol_weights(symbols_train, y_train)
    w_val = symbol_weights(symbols_val, y_val)
    if warm is not None and len(warm.members) != max(seeds, 1):
        raise WarmStartError(f"{len(warm.members)} members to start from, {max(seeds, 1)} to train")
    ridge = lags and warm is None  # a warm start keeps the champion's AR path, fitted and tuned
    coef, intercept = ridge_ar(x_train, y_train / y_scale, w_train, lags, y_scale) if ridge else (None, 0.0)
    members, first = [], None
    for k in range(max(seeds, 1)):
        keras.utils.set_random_seed(seed + k)
        member = build_member(window, n_features, units, lags, learning_rate, x_train, y_scale, k)
        if warm is not None:
            _set_member_weights(member, warm.members[k])
        elif lags:
            weights = [coef.reshape(-1, 1).astype(np.float32), np.array([intercept], np.float32)]
            member.get_layer("ar").set_weights(weights)
        keep = _KeepBest(x_val, y_val / y_scale, w_val, patience)
        callbacks: list[keras.callbacks.Callback] = [keep]
        if on_epoch is not None and k == 0:
            callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=on_epoch))
        history = member.fit(
            x_train,
            y_train / y_scale,
            sample_weight=w_train,
            validation_data=(x_val, y_val / y_scale, w_val),
            epochs=epochs,
            batch_size=batch_size,
            shuffle=True,
            verbose=0,
            callbacks=callbacks,
        )
        if first is None:
            first = (history.history["loss"], history.history["val_loss"], keep.best_epoch, keep.best, keep.initial)
        members.append(member)
    inputs = keras.Input(shape=(window, n_features), name="features")
    outs = [m(inputs) for m in members]
    mean = outs[0] if len(outs) == 1 else layers.Average(name="seed_average")(outs)
    averaged = keras.Model(inputs, mean, name="lstm_attention_ar_scaled")
    predicted_val = averaged.predict(x_val, batch_size=4096, verbose=0).reshape(-1).astype(np.float64)
    lam = shrinkage(predicted_val, y_val.astype(np.float64) / y_scale)
    exported = keras.Model(
        inputs, layers.Rescaling(y_scale * lam, name="shrunk_log_return")(mean), name="lstm_attention"
    )
    loss, val_loss, best_epoch, best_val, initial = first
    log.info("members=%d warm=%s best_epoch=%d shrinkage=%.3f", len(members), warm is not None, best_epoch, lam)
    return FitResult(
        exported,
        [float(v) for v in loss],
        [float(v) for v in val_loss],
        best_epoch,
        lam,
        len(members),
        best_val,
        initial,
        warm is not None,
    )


def _set_member_weights(member: keras.Model, weights: list[np.ndarray]) -> None:
    """Give ``member`` a champion member's weights; :class:`WarmStartError` if their shapes differ."""
    own = [w.shape for w in member.get_weights()]
    theirs = [np.shape(w) for w in weights]
    if own != theirs:
        raise WarmStartError(f"the champion's member weights have shapes {theirs}, this member's {own}")
    member.set_weights(weights)


def _all_layers(layer: layers.Layer) -> Iterator[layers.Layer]:
    """``layer`` and every layer nested inside it (the members of an averaged model)."""
    yield layer
    for sub in getattr(layer, "layers", ()):
        yield from _all_layers(sub)


def single_window_tflite(model: keras.Model, window: int, n_features: int) -> bytes:
    """``model`` for exactly one window (batch 1) as a TensorFlow Lite flatbuffer, for serving.

    Its recurrent layers are traced unrolled (the model itself is left as it was): the graph
    becomes straight-line LSTM steps that TensorFlow Lite runs as XNNPACK kernels, ~0.1 ms for three
    members on a CPU core against ~0.5 ms XLA-compiled (converted with its loops, ~0.7 ms). The
    variables are frozen into constants first. Raises whatever the trace or the converter raises.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    rnns = [layer for layer in _all_layers(model) if isinstance(layer, layers.RNN) and not layer.unroll]
    spec = tf.TensorSpec([1, window, n_features], tf.float32)
    for layer in rnns:
        layer.unroll = True  # read when the layer is traced, so only this trace unrolls
    try:
        traced = tf.function(lambda x: model(x, training=False), input_signature=[spec]).get_concrete_function()
    finally:
        for layer in rnns:
            layer.unroll = False
    frozen = convert_variables_to_constants_v2(traced)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], model)
    # converted from the frozen graph, not written out as a SavedModel and read back first: outputs
    # equal to 1e-7, calls as fast, for a third less CPU (3.6 s instead of 5.2 s)
    converter.experimental_lower_to_saved_model = False
    return converter.convert()
