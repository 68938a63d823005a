"""RoPE Triton kernel (interpreted on CPU) against the float64 reference and Hugging Face Llama."""
import sys

import pytest
import torch
from kernel_checks import TOLERANCE, check_against_float64, rel_error

from hamner import kernels
from hamner.kernels import dispatch, reference

pytestmark = pytest.mark.triton

rope_module = sys.modules["hamner.kernels.rope"]

DTYPES = [torch.float32, torch.bfloat16]
BATCH, SEQ = 2, 5


def _randn(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(dtype).requires_grad_()


def _with_tables(ops, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False):
    """apply_rope with fixed tables; the reference side gets them in float64."""
    if ops is reference:
        cos, sin = cos.double(), sin.double()
    return lambda q, k: ops.apply_rope(q, k, cos, sin, interleaved=interleaved)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strided", [False, True])
def test_interleaved_rope_matches_float64_reference(strided: bool, dtype: torch.dtype) -> None:
    """Pairs (2i, 2i + 1); on contiguous q, k and on views of one fused projection."""
    n_q_heads, n_kv_heads, head_dim = 4, 2, 32
    cos, sin = kernels.rope_cache(SEQ + 3, head_dim)

    def run(ops):
        rope = _with_tables(ops, cos, sin, interleaved=True)
        if not strided:
            return rope

        def on_views(qkv: torch.Tensor):
            q, k, _ = qkv.split([n_q_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim], dim=-1)
            return rope(q.view(BATCH, SEQ, n_q_heads, head_dim), k.view(BATCH, SEQ, n_kv_heads, head_dim))

        return on_views

    if strided:
        leaves = [_randn((BATCH, SEQ, (n_q_heads + 2 * n_kv_heads) * head_dim), dtype)]
    else:
        leaves = [_randn((BATCH, SEQ, n_q_heads, head_dim), dtype, 0),
                  _randn((BATCH, SEQ, n_kv_heads, head_dim), dtype, 1)]
    check_against_float64("rope_interleaved", run(kernels), run(reference), leaves, ["rope"])


def test_interleaved_pairs_are_the_rotate_half_pairs_reordered() -> None:
    """Interleaved RoPE on x with its halves zipped equals rotate-half RoPE on x, zipped the same way."""
    cos, sin = kernels.rope_cache(SEQ, 8)
    q, k = _randn((BATCH, SEQ, 3, 8), torch.float32, 0), _randn((BATCH, SEQ, 1, 8), torch.float32, 1)
    order = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])
    for interleaved, plain in zip(kernels.apply_rope(q[..., order], k[..., order], cos, sin, interleaved=True),
                                  kernels.apply_rope(q, k, cos, sin)):
        torch.testing.assert_close(interleaved, plain[..., order])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 32])
@pytest.mark.parametrize("n_q_heads, n_kv_heads", [(8, 2), (12, 4)])
def test_rope_matches_float64_reference(
    n_q_heads: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype
) -> None:
    # The tables have more rows than tokens: token t must use row t.
    cos, sin = kernels.rope_cache(SEQ + 7, head_dim)
    q = _randn((BATCH, SEQ, n_q_heads, head_dim), dtype, 0)
    k = _randn((BATCH, SEQ, n_kv_heads, head_dim), dtype, 1)
    check_against_float64(
        "rope", _with_tables(kernels, cos, sin), _with_tables(reference, cos, sin), [q, k], ["rope"]
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_on_views_of_a_fused_qkv_projection(dtype: torch.dtype) -> None:
    n_q_heads, n_kv_heads, head_dim = 8, 2, 32
    # cos/sin are column slices of full-width tables (row stride head_dim, not head_dim / 2).
    cos_full, sin_full = (torch.cat([t, t], dim=-1) for t in kernels.rope_cache(SEQ, head_dim))
    cos, sin = cos_full[:, : head_dim // 2], sin_full[:, : head_dim // 2]

    def split(ops):
        rope = _with_tables(ops, cos, sin)

        def run(qkv: torch.Tensor):
            q, k, _ = qkv.split([n_q_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim], dim=-1)
            q = q.view(BATCH, SEQ, n_q_heads, head_dim)
            k = k.view(BATCH, SEQ, n_kv_heads, head_dim)
            assert not q.is_contiguous() and not k.is_contiguous()
            return rope(q, k)

        return run

    qkv = _randn((BATCH, SEQ, (n_q_heads + 2 * n_kv_heads) * head_dim), dtype)
    check_against_float64("rope_fused_qkv", split(kernels), split(reference), [qkv], ["rope"])


def test_rope_matches_hugging_face_llama() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    n_q_heads, n_kv_heads, head_dim, offset = 12, 4, 64, 3
    cos, sin = kernels.rope_cache(SEQ + offset, head_dim)
    cos, sin = cos[offset:], sin[offset:]  # cached decoding: tokens at positions offset..offset+T-1
    q = torch.randn(BATCH, SEQ, n_q_heads, head_dim)
    k = torch.randn(BATCH, SEQ, n_kv_heads, head_dim)
    q_rot, k_rot = kernels.apply_rope(q, k, cos, sin)
    # Hugging Face: [B, H, T, D] layout and full-width tables cat(cos, cos).
    hf_q, hf_k = apply_rotary_pos_emb(
        q.transpose(1, 2), k.transpose(1, 2), torch.cat([cos, cos], -1)[None], torch.cat([sin, sin], -1)[None]
    )
    assert rel_error(q_rot, hf_q.transpose(1, 2)) <= TOLERANCE[torch.float32]
    assert rel_error(k_rot, hf_k.transpose(1, 2)) <= TOLERANCE[torch.float32]


def test_rope_rejects_tables_of_the_wrong_shape() -> None:
    q, k = torch.randn(1, SEQ, 4, 16), torch.randn(1, SEQ, 2, 16)
    cos, sin = kernels.rope_cache(SEQ - 1, 16)
    with pytest.raises(ValueError, match="cos/sin"):
        kernels.apply_rope(q, k, cos, sin)


def test_custom_op_passes_opcheck() -> None:
    cos, sin = kernels.rope_cache(SEQ + 2, 8)
    q, k = _randn((1, SEQ, 4, 8), torch.float32, 0), _randn((1, SEQ, 2, 8), torch.float32, 1)
    torch.library.opcheck(rope_module._rope, (q, k, cos, sin, False, False))
    torch.library.opcheck(rope_module._rope, (q, k, cos, sin, False, True))


def test_compiles_without_graph_breaks() -> None:
    cos, sin = kernels.rope_cache(SEQ, 16)
    q, k = _randn((1, SEQ, 4, 16), torch.float32, 0), _randn((1, SEQ, 2, 16), torch.float32, 1)

    def loss(q, k):
        q_rot, k_rot = kernels.apply_rope(q, k, cos, sin)
        return (q_rot @ k_rot.repeat_interleave(2, dim=2).transpose(-1, -2)).square().sum()

    before = dispatch.launches.copy()
    torch.compile(loss, fullgraph=True, backend="aot_eager")(q, k).backward()
    assert dispatch.launches - before == {"rope": 2}  # forward, and the inverse rotation backward
    compiled_grads, q.grad, k.grad = (q.grad, k.grad), None, None
    loss(q, k).backward()
    torch.testing.assert_close(compiled_grads, (q.grad, k.grad))


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_mode_gives_the_same_answer(dtype: torch.dtype) -> None:
    cos, sin = kernels.rope_cache(SEQ, 32)
    q, k = _randn((BATCH, SEQ, 8, 32), dtype, 0), _randn((BATCH, SEQ, 2, 32), dtype, 1)
    kernel_out = kernels.apply_rope(q, k, cos, sin)
    before = dispatch.launches.copy()
    with dispatch.cpu_kernels(False):
        reference_out = kernels.apply_rope(q, k, cos, sin)
    assert dispatch.launches == before
    for out, ref in zip(kernel_out, reference_out):
        assert out.dtype == ref.dtype and rel_error(out, ref) <= TOLERANCE[dtype]
