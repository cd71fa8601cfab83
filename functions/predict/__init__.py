"""HTTP predictions: validate, fetch bars, call the scoring endpoint, shape the answer."""
