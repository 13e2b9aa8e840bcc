"""OpenAI-compatible servers on 127.0.0.1 that `actstore interpret` is tested and measured
against: a scripted one in this process (`scripted`), and `transformers serve` running a local
model (`transformers_serve`)."""
