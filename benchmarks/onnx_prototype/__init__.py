"""A torch-free ONNX Runtime prototype of our Whisper pipeline: a MEASUREMENT, not product code.

It answers one question: would a CPU runtime without torch (onnxruntime + numpy) be as exact as
our torch engine, as fast, and lighter to start? Nothing in ``wyoming_amanuensis`` uses it.

    .venv/bin/python -m benchmarks.onnx_prototype [--workdir DIR] [--rounds 3] [--steps build,compare,timing,floor]
    .venv/bin/python -m benchmarks.onnx_prototype --steps transcripts,batch,kvcache,shapes [--workdir DIR]

Modules, one job each:
  graphs    Whisper base as ONNX graphs written with onnx.helper from our own model.bin reader
            (weights as external data files), plus the prepared silence context/tail (build step), and the
            decoder step's variants (padded / Loop-batched cross-attention, in-place KV cache)
  runtime   torch-free pieces: numpy log-mel, ORT sessions, silence tails read by pread, greedy loop
  numerics  the graphs against our torch engine on 12 English corpus clips (compare step)
  timing    ORT against torch at 1 thread, interleaved (timing step)
  floor     memory / start-up floor, each system in its own fresh process (floor step)
  decode    numpy port of wyoming_amanuensis.decoding's greedy and beam search (mirrors it, to seed a product port)
  transcripts  every corpus and corpus_ml clip, engine vs ORT, and where the differences come from (transcripts step)
  batching  batched rows of different audio lengths bitwise against each alone (batch step)
  kvcache   an in-place KV cache (GroupQueryAttention + IOBinding) against the Concat step and torch (kvcache step)
  shapes    the graphs for every CTranslate2 Whisper shape (random weights) against our torch modules (shapes step)

See README.md in this folder for what each figure means.
"""
