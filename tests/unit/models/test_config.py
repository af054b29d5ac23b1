"""Model and layout config: vocab padding, the layer implementation, and the FP8 switch.

Transformer Engine cannot be installed on the CPU machines: FP8 and the TE spec are checked up
to megatron-core's ``TransformerConfig`` (its own fp8 validation runs), with TE's presence
faked where a test says so; the TE layers themselves are not built here.
"""

from __future__ import annotations

import pytest

from nemo_gift.utils.convert import ConfigError, from_dict
from nemo_gift.models.policy import builder, te_extra
from nemo_gift.models.policy.config import Fp8Config, ModelConfig, ParallelConfig

MODEL = ModelConfig(arch="qwen3", num_layers=4, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4,
                    num_query_groups=2, vocab_size=256, qk_layernorm=True)


@pytest.mark.parametrize(
    "vocab, unit, tp, rows",
    [(256, 128, 2, 256), (255, 128, 2, 256), (255, 128, 1, 255), (1000, 128, 3, 1152), (1000, 1, 3, 1002),
     (151936, 128, 8, 151936), (152064, 128, 16, 152064)],
)
def test_padded_vocab_size(vocab, unit, tp, rows):
    cfg = ModelConfig(vocab_size=vocab, make_vocab_size_divisible_by=unit)
    assert cfg.padded_vocab_size(tp) == rows
    assert rows % tp == 0 and rows >= vocab


@pytest.fixture
def no_te(monkeypatch):
    monkeypatch.setattr(te_extra, "transformer_engine_available", lambda: False)


@pytest.fixture
def fake_te(monkeypatch):
    monkeypatch.setattr(te_extra, "transformer_engine_available", lambda: True)


@pytest.mark.parametrize(
    "kwargs, what",
    [({"fp8": Fp8Config()}, "parallel.fp8"), ({"transformer_impl": "transformer_engine"}, "transformer_impl")],
)
def test_fp8_without_transformer_engine_names_the_extra(no_te, kwargs, what):
    with pytest.raises(te_extra.MissingExtraError, match=r"pip install nemo_gift\[gpu\]") as err:
        ParallelConfig(**kwargs)
    assert what in str(err.value)


def test_fp8_from_a_recipe_fails_at_config_load(no_te):
    with pytest.raises(ConfigError, match=r"parallel.*pip install nemo_gift\[gpu\]"):
        from_dict(ParallelConfig, {"fp8": {"format": "hybrid", "recipe": "tensorwise"}}, "parallel")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"format": "e5m2"}, "parallel.fp8.format"),
        ({"recipe": "nvfp4"}, "parallel.fp8.recipe"),
        ({"recipe": "delayed", "high_precision_layers_at_end": 1}, "recipe=delayed"),
        ({"amax_history_len": 0}, "amax_history_len"),
        ({"high_precision_layers_at_start": -1}, "high_precision_layers_at_start"),
    ],
)
def test_fp8_block_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Fp8Config(**kwargs)


def test_fp8_maps_onto_megatron_transformer_config(fake_te):
    fp8 = Fp8Config(format="hybrid", recipe="tensorwise", high_precision_layers_at_start=1,
                    high_precision_layers_at_end=2, margin=1, fp8_wgrad=False)
    layout = ParallelConfig(params_dtype="bfloat16", fp8=fp8)
    layout.validate_for(MODEL, cuda=True)
    with pytest.raises(ValueError, match="need CUDA"):
        layout.validate_for(MODEL, cuda=False)
    tc = builder.transformer_config(MODEL, layout)  # megatron-core's own fp8 checks run here
    assert (tc.fp8, tc.fp8_recipe, tc.fp8_margin, tc.fp8_wgrad, tc.fp8_param) == ("hybrid", "tensorwise", 1, False, False)
    assert (tc.first_last_layers_bf16, tc.num_layers_at_start_in_bf16, tc.num_layers_at_end_in_bf16) == (True, 1, 2)
    assert builder.transformer_config(MODEL, ParallelConfig()).fp8 is None


def test_fp8_high_precision_layers_are_checked_per_stage(fake_te):
    layout = ParallelConfig(pipeline_model_parallel_size=2, fp8=Fp8Config(high_precision_layers_at_start=3))
    with pytest.raises(ValueError, match="high_precision_layers_at_start=3 exceeds the 2 layers"):
        layout.validate_for(MODEL, cuda=True)


def test_fp8_refuses_the_local_layers(fake_te):
    with pytest.raises(ValueError, match="transformer_impl"):
        ParallelConfig(fp8=Fp8Config(), transformer_impl="local")


def test_auto_picks_the_local_spec_without_cuda():
    from megatron.core.tensor_parallel import ColumnParallelLinear

    assert not builder.use_transformer_engine(ParallelConfig())
    spec = builder.layer_spec(MODEL, ParallelConfig())
    assert spec.submodules.self_attention.submodules.linear_qkv is ColumnParallelLinear


def test_transformer_engine_is_imported_by_one_module_only():
    """House rule: only te_spec.py names transformer_engine in an import."""
    from pathlib import Path

    import nemo_gift

    root = Path(nemo_gift.__file__).parent
    importers = sorted(
        str(p.relative_to(root)) for p in root.rglob("*.py")
        if any(line.lstrip().startswith(("import transformer_engine", "from transformer_engine"))
               for line in p.read_text().splitlines())
    )
    assert importers == ["models/policy/te_spec.py"]


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise", "mxfp8", "blockwise"])
@pytest.mark.parametrize("tp, sp", [(1, False), (4, False), (4, True)])
def test_fp8_pad_multiple_follows_megatron_cores_alignment(fake_te, recipe, tp, sp):
    from megatron.core.enums import Fp8Recipe
    from megatron.core.fp8_utils import get_fp8_align_size

    layout = ParallelConfig(tensor_model_parallel_size=tp, sequence_parallel=sp, fp8=Fp8Config(recipe=recipe))
    assert layout.sequence_pad_multiple == (tp if sp else 1) * get_fp8_align_size(Fp8Recipe(recipe))
