"""The CPU runtime on ONNX Runtime + numpy, without torch.

The graphs are written once per model from our own model.bin reader (``graphs.py``, the only
module that imports ``onnx``) and kept in the cache directory (``store.py``); a start with a
valid build reads neither model.bin nor onnx (``load.py``). ``network.py`` runs the decoder
for the numpy search (``decoder_net.DecoderNet``), ``encoder.py`` the encoder.
"""
