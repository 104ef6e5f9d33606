"""The ranking app: annotators rank sampled answers in the browser."""
