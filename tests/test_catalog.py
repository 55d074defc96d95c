"""Model catalog arithmetic against the published figures (REFERENCE.md)."""

import pytest

from devprof.catalog import MODELS, BITS_PER_WEIGHT, check_context, get_model, _sum_min
from devprof.errors import UsageError


@pytest.mark.parametrize(
    "name,total,active",
    [
        ("mobilemoe-s", 1.3e9, 272e6),
        ("mobilemoe-m", 2.8e9, 528e6),
        ("mobilemoe-l", 5.3e9, 922e6),
        ("mobilellm-pro", 1.08e9, 1.08e9),
        ("olmoe-1b-7b", 6.92e9, 1.28e9),
    ],
)
def test_parameter_counts_match_published_within_3_percent(name, total, active):
    m = get_model(name)
    assert m.total_params == pytest.approx(total, rel=0.03)
    assert m.active_params == pytest.approx(active, rel=0.03)


@pytest.mark.parametrize("name", ["mobilemoe-s", "mobilemoe-m", "mobilemoe-l"])
def test_int4_weight_memory_matches_published_gib(name):
    m = get_model(name)
    # published "GB" figures are GiB at 4 bits + one fp16 scale per 32 weights
    assert m.weight_bytes("int4") / 2**30 == pytest.approx(m.published["int4_gib"], rel=0.03)


def test_mobilemoe_s_exact_counts():
    m = get_model("mobilemoe-s")
    # attention: 768*768*2 + 768*256*2; experts 60*3*768*384; shared 3*768*1536; router 768*60
    per_layer = 1_572_864 + 53_084_160 + 3_538_944 + 46_080
    assert m.total_params == 20 * per_layer + 128256 * 768
    assert m.active_params == 20 * (1_572_864 + 4 * 884_736 + 3_538_944 + 46_080) + 128256 * 768


def test_minis_keep_proportions_and_match_int4_memory():
    moe, dense = get_model("mobilemoe-s-mini"), get_model("mobilellm-pro-mini")
    assert (moe.n_experts, moe.top_k, moe.n_shared) == (60, 4, 1)
    assert moe.shared_ffn == 4 * moe.expert_ffn
    assert dense.weight_bytes("int4") == pytest.approx(moe.weight_bytes("int4"), rel=0.03)
    # the MoE reads far fewer weight bytes per decoded token: that is the whole comparison
    assert dense.weight_bytes_read_per_token() > 3 * moe.weight_bytes_read_per_token()
    assert dense.n_local_layers == 8 and len(dense.global_layers) == 4


def test_weight_bytes_by_dtype():
    m = get_model("mobilellm-pro")
    assert m.weight_bytes("fp32") == m.total_params * 4
    assert m.weight_bytes("int8") == m.total_params
    assert BITS_PER_WEIGHT["int4"] == 4.5
    with pytest.raises(UsageError):
        m.weight_bytes("int3")


def test_kv_cache_with_local_layers():
    pro = get_model("mobilellm-pro")
    per_tok = 2 * 4 * 64 * 2  # K and V, 4 kv heads x 64, fp16
    assert pro.n_local_layers == 21
    assert pro.kv_cache_bytes(8192, 2) == per_tok * (9 * 8192 + 21 * 512)
    assert pro.kv_cache_bytes(256, 2) == per_tok * 30 * 256  # window not yet reached
    s = get_model("mobilemoe-s")
    assert s.kv_cache_bytes(8192, 4) == 20 * 8192 * 2 * 4 * 64 * 4


def test_flops_grow_with_context_and_windows_cap_them():
    pro, s = get_model("mobilellm-pro"), get_model("mobilemoe-s")
    assert s.decode_flops_per_token(8192) > s.decode_flops_per_token(256)
    # decode at short context is dominated by weights: 2 flops per multiplied weight
    assert s.decode_flops_per_token(1) == pytest.approx(2 * s.matmul_params_per_token, rel=0.01)
    # prefill: exact causal sum, local layers capped at their window
    assert _sum_min(10, None) == 55 and _sum_min(10, 4) == 10 + 6 * 4
    body = pro.matmul_params_per_token - pro.lm_head_params
    attn = 4 * 20 * 64 * (9 * _sum_min(4096, None) + 21 * _sum_min(4096, 512))
    assert pro.prefill_flops(4096) == 2 * body * 4096 + 2 * pro.lm_head_params + attn


def test_get_model_and_context_errors():
    assert get_model("MobileMoE-S").name == "mobilemoe-s"
    with pytest.raises(UsageError, match="unknown model 'gpt5'.*mobilemoe-s"):
        get_model("gpt5")
    with pytest.raises(UsageError, match="larger than MobileMoE-S allows"):
        check_context(get_model("mobilemoe-s"), 16384)
    check_context(get_model("mobilemoe-s"), 8192)


def test_summary_is_json_ready():
    import json

    for m in MODELS.values():
        json.dumps(m.summary())
