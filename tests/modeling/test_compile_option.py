"""``compile_static_parts`` is off by default and, when on, compiles exactly the static parts in place.

Compiling even the tiny model takes about a minute on 2 cores, too slow for the suite: these tests check the wiring
(which modules, state dict unchanged, weights still shared); the parity deviation of the compiled model is measured
with ``tools/check_parity.py ... model.compile_static_parts=True`` and reported in the README."""
from conftest import build_tiny_model


def _compiled(model):
    return {name for name, module in model.named_modules() if module._compiled_call_impl is not None}


def test_compile_static_parts_is_off_by_default():
    assert _compiled(build_tiny_model()) == set()


def test_compile_static_parts_compiles_backbone_neck_decoder_layers_and_encoder_ffns_only():
    plain = build_tiny_model()
    compiled = build_tiny_model(**{"model.compile_static_parts": True})
    num_decoder = len(compiled.transformer.decoder.layers)
    num_encoder = len(compiled.transformer.encoder.layers)
    expected = {"backbone", "neck"}
    expected |= {f"transformer.decoder.layers.{i}" for i in range(num_decoder)}
    expected |= {f"transformer.encoder.layers.{i}.ffn" for i in range(num_encoder)}
    assert _compiled(compiled) == expected
    # compiled in place: same module tree and checkpoint keys, so checkpoints load either way
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert type(compiled.backbone) is type(plain.backbone)
