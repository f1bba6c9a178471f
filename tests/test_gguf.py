"""GGUF files in and out (ternary_ops.gguf): the TQ1_0, TQ2_0 and I2_S byte layouts against
the published ones, written out here from llama.cpp's ggml-quants.c (quantize_row_tq*_ref,
dequantize_row_tq*) and bitnet.cpp's quantize_i2_s independently of the module; round trips
ours -> GGUF -> ours; the Llama / BitNet mapping; the errors. Tiny models, built locally."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf", reason="gguf not installed (pip install 'ternary-ops[gguf]')")
transformers = pytest.importorskip(
    "transformers", reason="transformers not installed (pip install 'ternary-ops[hf]')")

import ternary_ops as tops  # noqa: E402
from ternary_ops import gguf as tg  # noqa: E402
from ternary_ops.fuse import FusedSlice, fold_norms, fuse_projections  # noqa: E402

PROMPT = torch.tensor([[1, 17, 42, 99, 7, 250, 3, 64]])
I2_S_TYPE = 36


# ---- the published layouts, written out from their sources ---------------------------------

def spec_tq2_0(codes, d):
    """quantize_row_tq2_0_ref's bytes: codes int [B, 256] in -1..1, fp16 scales [B]."""
    codes = np.asarray(codes, np.int64)
    out = np.zeros((codes.shape[0], 66), np.uint8)
    for j in (0, 32):  # for (j = 0; j < sizeof(qs); j += 32), x advancing 4 * 32 per j
        for m in range(32):
            q = sum(((codes[:, j * 4 + n * 32 + m] + 1) & 3) << (2 * n) for n in range(4))
            out[:, j + m] = q
    out[:, 64:] = np.asarray(d, np.float16).reshape(-1, 1).view(np.uint8)
    return out


def spec_dequant_tq2_0(blocks):
    """dequantize_row_tq2_0: values in the C loop's order."""
    qs, d = blocks[:, :64].astype(np.int64), blocks[:, 64:].copy().view(np.float16)
    y = [((qs[:, j + np.arange(32)] >> (2 * n)) & 3) - 1 for j in (0, 32) for n in range(4)]
    return np.concatenate(y, axis=1) * d.astype(np.float32)


def _pack5(trits):
    q = 0
    for t in trits:  # q *= 3; q += xi
        q = q * 3 + t
    return (q * 256 + 242) // 243  # ceiling division (243 == pow(3, 5))


def spec_tq1_0(codes, d):
    """quantize_row_tq1_0_ref's bytes."""
    x = np.asarray(codes, np.int64) + 1
    out = np.zeros((x.shape[0], 54), np.uint8)
    for m in range(32):
        out[:, m] = _pack5([x[:, m + n * 32] for n in range(5)])
    for m in range(16):
        out[:, 32 + m] = _pack5([x[:, 160 + m + n * 16] for n in range(5)])
    for j in range(4):  # four elements, then q *= 3: the first is the most significant trit
        out[:, 48 + j] = _pack5([x[:, 240 + j + m * 4] for m in range(4)] + [0])
    out[:, 52:] = np.asarray(d, np.float16).reshape(-1, 1).view(np.uint8)
    return out


def spec_dequant_tq1_0(blocks):
    """dequantize_row_tq1_0: values in the C loop's order."""
    b = blocks.astype(np.int64)
    d = blocks[:, 52:].copy().view(np.float16).astype(np.float32)
    pow3 = (1, 3, 9, 27, 81, 243)
    trit = lambda q, n: ((((q * pow3[n]) & 0xFF) * 3) >> 8) - 1  # noqa: E731
    y = [trit(b[:, :32], n) for n in range(5)] + [trit(b[:, 32:48], n) for n in range(5)]
    y += [trit(b[:, 48:52], n) for n in range(4)]
    return np.concatenate(y, axis=1) * d


def spec_i2_s(codes, scale):
    """bitnet.cpp's x86 quantize_i2_s (and quantize_to_i2_s of its converter): 128-weight
    blocks of the flattened tensor in 32 bytes, q0 << 6 | q1 << 4 | q2 << 2 | q3, then a
    32-byte tail whose first four bytes are the float32 scale."""
    q = (np.asarray(codes, np.int64).reshape(-1, 4, 32) + 1).astype(np.uint8)
    packed = (q[:, 0] << 6) | (q[:, 1] << 4) | (q[:, 2] << 2) | q[:, 3]
    tail = np.zeros(32, np.uint8)
    tail[:4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    return np.concatenate([packed.reshape(-1), tail])


def spec_permute(w, n_head, n_head_kv=None):
    """convert_hf_to_gguf.py's LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_gguf(path, arch, kv, tensors):
    """A GGUF file from ``kv`` ({key: value}) and ``tensors`` [(name, array, raw type,
    shape)]: float arrays without a raw type, bytes of a type gguf knows without a shape, and
    bytes of any other type as int8 with an explicit shape."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in kv.items():
        tg._add_metadata(w, key, value)
    for name, array, raw, shape in tensors:
        if raw is None:
            w.add_tensor(name, array)
        elif shape is None:  # a type gguf knows: the bytes' shape gives the tensor's
            w.add_tensor(name, array, raw_dtype=gguf.GGMLQuantizationType(raw))
        else:
            w.add_tensor(name, array.view(np.int8), raw_shape=shape, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def random_ternary(*shape):
    return torch.randint(-1, 2, shape, dtype=torch.int8)


def fp16_exact(n):
    return torch.rand(n).mul(0.1).add(0.01).half().float()


# ---- the block layouts ----------------------------------------------------------------------

def test_tq2_0_blocks_by_hand():
    zero = torch.zeros(1, 256, dtype=torch.int8)
    got = tg.encode_tq2_0((zero + 1).to(torch.uint8), torch.tensor([1.0])).numpy()
    assert list(got[0, :64]) == [0x55] * 64 and list(got[0, 64:]) == [0x00, 0x3C]  # fp16 1.0
    c = zero.clone()
    c[0, 0], c[0, 32], c[0, 97], c[0, 255] = 1, 1, -1, 1
    # weight 128 g + 32 l + m is bits 2l of qs[32 g + m]; code w + 1
    want = [0x55] * 64
    want[0] = 0b01011010  # weights 0 (+1, bits 0-1) and 32 (+1, bits 2-3)
    want[1] = 0b00010101  # weight 97 = 3 * 32 + 1: -1 in bits 6-7
    want[63] = 0b10010101  # weight 255 = 128 + 3 * 32 + 31: +1 in bits 6-7 of qs[63]
    got = tg.encode_tq2_0((c + 1).to(torch.uint8), torch.tensor([0.5])).numpy()
    assert list(got[0, :64]) == want and list(got[0, 64:]) == [0x00, 0x38]  # fp16 0.5


def test_tq1_0_blocks_by_hand():
    def enc(c):
        return tg.encode_tq1_0((c + 1).to(torch.uint8), torch.tensor([1.0])).numpy()[0]
    # all zero: trits 1,1,1,1,1 = 121 -> ceil(121 * 256 / 243) = 128; qh 1,1,1,1,0 = 120 -> 127
    got = enc(torch.zeros(1, 256, dtype=torch.int8))
    assert list(got[:48]) == [128] * 48 and list(got[48:52]) == [127] * 4
    assert list(enc(torch.full((1, 256), -1, dtype=torch.int8))[:52]) == [0] * 52
    # all +1: 242 -> 255; qh 2,2,2,2,0 = 240 -> 253
    got = enc(torch.ones(1, 256, dtype=torch.int8))
    assert list(got[:48]) == [255] * 48 and list(got[48:52]) == [253] * 4
    c = torch.zeros(1, 256, dtype=torch.int8)
    c[0, 0] = 1  # first trit of qs[0]: 2 * 81 + 40 = 202 -> 213
    c[0, 161] = -1  # weight 160 + 16 * 0 + 1: first trit of qs[33]: 0 * 81 + 40 = 40 -> 43
    c[0, 247] = 1  # weight 240 + 4 * 1 + 3: second trit of qh[3]: 81 + 2 * 27 + 9 + 3 = 147 -> 155
    got = enc(c)
    assert (got[0], got[33], got[51]) == (213, 43, 155)
    assert list(got[1:33]) == [128] * 32 and got[48] == 127


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
def test_tq_blocks_match_llama_cpp(qtype):
    spec, dequant = ((spec_tq2_0, spec_dequant_tq2_0) if qtype == "TQ2_0"
                     else (spec_tq1_0, spec_dequant_tq1_0))
    t = getattr(tg, qtype)
    codes, d = random_ternary(64, 256), fp16_exact(64)
    codes[3] = 0  # an all-zero block
    ours = tg._ENCODERS[t]((codes + 1).to(torch.uint8), d).numpy()
    np.testing.assert_array_equal(ours, spec(codes.numpy(), d.numpy()))
    want = (codes.float() * d[:, None]).numpy()
    np.testing.assert_array_equal(dequant(ours), want)  # llama.cpp's formula on our bytes
    np.testing.assert_array_equal(gguf.quants.dequantize(ours, gguf.GGMLQuantizationType(t)),
                                  want)  # and gguf's numpy port of it
    back, d2 = tg._DECODERS[t](torch.from_numpy(spec(codes.numpy(), d.numpy())))
    assert torch.equal(back.to(torch.int8) - 1, codes) and torch.equal(d2, d)
    # gguf's port of llama.cpp's quantizer writes the same bytes (d = max|x| of a block, so
    # only where a block is not all zero)
    theirs = gguf.quants.quantize(want, gguf.GGMLQuantizationType(t))
    keep = np.arange(64) != 3
    np.testing.assert_array_equal(theirs[keep], ours[keep])


def test_i2_s_bytes_by_hand(tmp_path):
    c = torch.zeros(2, 128, dtype=torch.int8)
    c[0, 0] = 1
    c[1, 127] = -1
    data = spec_i2_s(c.numpy(), 0.75)
    # weight 32 g + m of a block: bits 6 - 2g of byte m
    assert data[0] == 0b10010101 and data[1] == 0x55 and data[32 + 31] == 0b01010100
    assert len(data) == 2 * 128 // 4 + 32
    codes, scale = tg.decode_i2_s(torch.from_numpy(data), 256)
    assert torch.equal(codes.to(torch.int8).reshape(2, 128) - 1, c) and float(scale) == 0.75
    codes = random_ternary(6, 384)  # 2304 weights: 18 blocks running across rows
    path = write_gguf(tmp_path / "i2s.gguf", "llama", {}, [
        ("w", spec_i2_s(codes.numpy(), 0.1), I2_S_TYPE, [6, 384])])
    got, scale = tg.read_ternary(path, "w")
    assert torch.equal(got, codes) and scale.shape == () and float(scale) == np.float32(0.1)


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
@pytest.mark.parametrize("shape", [(1, 256), (5, 512), (3, 768), (6, 256)])
def test_odd_shapes_round_trip(tmp_path, qtype, shape):
    codes, scale = random_ternary(*shape), fp16_exact(shape[0])
    tensors = [("rows", tg.ternary_bytes(codes, scale, qtype), getattr(tg, qtype), None),
               ("one", tg.ternary_bytes(codes, scale[0], qtype), getattr(tg, qtype), None)]
    path = write_gguf(tmp_path / "odd.gguf", "llama", {}, tensors)
    got, s = tg.read_ternary(path, "rows", granularity="channel")
    assert torch.equal(got, codes) and torch.equal(s, scale)
    got, s = tg.read_ternary(path, "one")
    assert torch.equal(got, codes) and s.shape == () and float(s) == float(scale[0])
    f = gguf.GGUFReader(path)
    dequant = spec_dequant_tq2_0 if qtype == "TQ2_0" else spec_dequant_tq1_0
    raw = f.tensors[0].data.reshape(-1, tg.BLOCK_BYTES[getattr(tg, qtype)])
    np.testing.assert_array_equal(dequant(raw).reshape(shape),
                                  (codes.float() * scale[:, None]).numpy())


# ---- models ---------------------------------------------------------------------------------

def tiny_llama(seed=0, hidden=256, vocab=300, **kw):
    kw = dict(dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
              **kw)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=512, num_hidden_layers=2,
        max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=5000.0, bos_token_id=1,
        eos_token_id=2, **kw)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def converted(model, granularity="tensor", act="int8", format="i2", fuse=True, fp16=True):
    """``convert``'s model with each scale made exact in fp16 (before fusing, so that fused
    layers keep them as they are)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tops.convert(model, format=format, act=act, granularity=granularity, fuse=False,
                     fold_norms=False, calibration=False)
    if fp16:
        for m in model.modules():
            if isinstance(m, tops.TernaryLinear):
                m.weight_scale = m.weight_scale.half().float()
    if fuse:
        fuse_projections(model)
        fold_norms(model)
    return model


def parts(model, name):
    """(codes int8 [N, K], scale [N]) of a ternary layer, fused or not."""
    m = model.get_submodule(name)
    layer, rows = (m.fused, slice(m.start, m.stop)) if isinstance(m, FusedSlice) else (
        m, slice(None))
    codes = (tops.unpack_i2(layer.weight, layer.out_features) if layer.format == "i2"
             else layer.weight)
    return codes[rows], layer.weight_scale.expand(layer.out_features)[rows]


LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def logits(model, ids=PROMPT):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("qtype,granularity,act,format,fuse,bias", [
    ("TQ2_0", "tensor", "int8", "i2", True, False),
    ("TQ1_0", "channel", "int8", "i8", False, False),
    ("TQ2_0", "channel", "none", "i2", False, False),
    ("TQ1_0", "tensor", "int8", "i2", True, True),
])
def test_round_trip_is_bit_identical(tmp_path, qtype, granularity, act, format, fuse, bias):
    model = tiny_llama(attention_bias=bias, mlp_bias=bias)
    if bias:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_()
    model = converted(model, granularity, act, format, fuse=fuse)
    path = tmp_path / "m.gguf"
    tops.save_gguf(model, path, type=qtype)
    back = tops.load_gguf(path, format=format, act=act, granularity=granularity, fuse=fuse,
                          fold_norms=fuse)
    for i in range(2):
        for name in LINEARS:
            name = f"model.layers.{i}.{name}"
            (c0, s0), (c1, s1) = parts(model, name), parts(back, name)
            assert torch.equal(c0, c1) and torch.equal(s0, s1), name
    assert type(back.model.layers[0].self_attn.q_proj) is type(
        model.model.layers[0].self_attn.q_proj)
    # the model built from the metadata computes what the original computes, bit for bit
    assert torch.equal(logits(back), logits(model))
    assert back.config.rope_parameters["rope_theta"] == 5000.0
    tops.save_gguf(back, tmp_path / "again.gguf", type=qtype)
    assert (tmp_path / "again.gguf").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("qtype", ["TQ2_0", "TQ1_0"])
def test_saved_file_matches_the_spec(tmp_path, qtype):
    model = converted(tiny_llama(), "channel", fuse=True)
    path = tmp_path / "m.gguf"
    tops.save_gguf(model, path, type=qtype)
    f = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in f.tensors}
    spec = spec_tq2_0 if qtype == "TQ2_0" else spec_tq1_0
    for hf, g, heads in [("self_attn.q_proj", "attn_q", (4,)), ("self_attn.k_proj", "attn_k",
                                                             (4, 2)),
                         ("self_attn.v_proj", "attn_v", None), ("mlp.down_proj", "ffn_down", None)]:
        codes, scale = parts(model, f"model.layers.1.{hf}")
        if heads:  # llama.cpp's rope order of q and k rows
            codes, scale = spec_permute(codes, *heads), spec_permute(scale, *heads)
        t = tensors[f"blk.1.{g}.weight"]
        assert t.tensor_type == getattr(gguf.GGMLQuantizationType, qtype)
        assert list(t.shape) == [codes.shape[1], codes.shape[0]]  # GGUF lists K first
        want = spec(codes.reshape(-1, 256).numpy(),
                    scale.repeat_interleave(codes.shape[1] // 256).numpy())
        np.testing.assert_array_equal(np.asarray(t.data).reshape(-1, want.shape[1]), want)
    np.testing.assert_array_equal(np.asarray(tensors["token_embd.weight"].data),
                                  model.model.embed_tokens.weight.detach().numpy())
    np.testing.assert_array_equal(np.asarray(tensors["blk.0.attn_norm.weight"].data),
                                  model.model.layers[0].input_layernorm.weight.detach().numpy())
    assert "output.weight" in tensors and len(tensors) == 3 + 2 * 9
    meta = tg.GGUFFile(path).metadata
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 2
    assert (meta["llama.embedding_length"], meta["llama.feed_forward_length"]) == (256, 512)
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (4, 2)
    assert meta["llama.rope.freq_base"] == 5000.0 and meta["llama.context_length"] == 128
    assert meta["llama.attention.layer_norm_rms_epsilon"] == np.float32(1e-5)
    assert meta["tokenizer.ggml.model"] == "llama" and len(meta["tokenizer.ggml.tokens"]) == 300
    assert meta["general.file_type"] == (37 if qtype == "TQ2_0" else 36)


def test_load_into_a_given_model(tmp_path):
    model = converted(tiny_llama(), "channel")
    path = tmp_path / "m.gguf"
    tops.save_gguf(model, path)
    want = logits(tops.load_gguf(path))
    dense = tiny_llama(seed=1)  # other weights: every one is replaced
    got = tops.load_gguf(path, model=dense)
    assert got is dense and torch.equal(logits(got), want)
    assert isinstance(got.model.layers[0].self_attn.qkv_proj, tops.TernaryLinear)
    # a model converted without fusing takes the file too (its ternary layers are replaced),
    # and one whose config ties the head gets the file's own head
    plain = converted(tiny_llama(seed=2, tie_word_embeddings=True), fuse=False)
    assert torch.equal(logits(tops.load_gguf(path, model=plain)), want)
    assert plain.lm_head.weight.data_ptr() != plain.model.embed_tokens.weight.data_ptr()
    with pytest.raises(ValueError, match="fused projections or folded norms"):
        tops.load_gguf(path, model=converted(tiny_llama(seed=3)))
    with pytest.raises(ValueError, match="num_attention_heads=2, the file .* 4"):
        tops.load_gguf(path, model=tiny_llama(num_attention_heads=2, num_key_value_heads=2))


def test_tied_head_and_dense_layers(tmp_path):
    # a head tied to the embedding is written once (llama.cpp reuses token_embd); layers left
    # dense are written as F32
    model = tiny_llama(tie_word_embeddings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tops.convert(model, calibration=False, exclude=["lm_head", "*.mlp.*"], fuse=False,
                     fold_norms=False)
    for m in model.modules():
        if isinstance(m, tops.TernaryLinear):
            m.weight_scale = m.weight_scale.half().float()
    path = tmp_path / "m.gguf"
    tops.save_gguf(model, path)
    names = tg.GGUFFile(path).tensors
    assert "output.weight" not in names and names["blk.0.ffn_up.weight"].type == 0  # F32
    back = tops.load_gguf(path, fuse=False, fold_norms=False)
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    assert isinstance(back.model.layers[0].mlp.up_proj, torch.nn.Linear)
    assert torch.equal(logits(back), logits(model))


def test_scales_must_be_exact_in_fp16(tmp_path):
    model = converted(tiny_llama(), fp16=False)
    with pytest.raises(ValueError, match=r"layer 'model.layers.0.self_attn.q_proj'.*expected "
                                         r"scales that fp16 holds exactly.*round_scales=True"):
        tops.save_gguf(model, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
    with pytest.warns(UserWarning, match="scales rounded to fp16"):
        tops.save_gguf(model, tmp_path / "m.gguf", round_scales=True)
    back = tops.load_gguf(tmp_path / "m.gguf")
    c0, s0 = parts(model, "model.layers.0.mlp.down_proj")
    c1, s1 = parts(back, "model.layers.0.mlp.down_proj")
    assert torch.equal(c0, c1) and torch.equal(s1, s0.half().float())
    with pytest.raises(ValueError, match="outside fp16's range"):
        tg.ternary_bytes(random_ternary(2, 256), torch.tensor(1e6), name="w")


def test_in_features_must_be_a_multiple_of_256(tmp_path):
    model = converted(tiny_llama(hidden=320))
    with pytest.raises(ValueError, match=r"layer 'model.layers.0.self_attn.q_proj': "
                                         r"in_features=320; TQ1_0 needs a multiple of 256"):
        tops.save_gguf(model, tmp_path / "m.gguf", type="TQ1_0")
    with pytest.raises(ValueError, match="type must be one of"):
        tops.save_gguf(model, tmp_path / "m.gguf", type="Q4_0")


def test_block_scales_must_agree_within_a_row(tmp_path):
    codes = random_ternary(3, 768)
    codes[1, 256:512] = 0  # an all-zero block: its scale multiplies nothing
    d = torch.full((3, 3), 0.25)
    d[1, 1] = 0.0  # what llama.cpp's quantizer writes for it
    d[2] = 0.5
    blocks = tg.encode_tq2_0((codes + 1).to(torch.uint8).reshape(-1, 256), d.reshape(-1))
    uniform = blocks.reshape(3, -1).numpy()
    d[0, 2] = 0.125
    mixed = tg.encode_tq2_0((codes + 1).to(torch.uint8).reshape(-1, 256),
                            d.reshape(-1)).reshape(3, -1).numpy()
    path = write_gguf(tmp_path / "s.gguf", "llama", {}, [
        ("blk.0.attn_q.weight", mixed, tg.TQ2_0, None), ("ok", uniform, tg.TQ2_0, None)])
    got, s = tg.read_ternary(path, "ok")
    assert torch.equal(got, codes) and torch.equal(s, torch.tensor([0.25, 0.25, 0.5]))
    with pytest.raises(ValueError, match="granularity='tensor' but its rows have different"):
        tg.read_ternary(path, "ok", granularity="tensor")
    with pytest.raises(ValueError, match=r"tensor 'blk.0.attn_q.weight' \(TQ2_0, \[3, 768\]\): "
                                         r"the blocks of a row have different scales \(row 0: "
                                         r"min 0.125, max 0.25; 3 distinct.*per-group scales "
                                         "are not supported"):
        tg.read_ternary(path, "blk.0.attn_q.weight")


def test_errors_name_the_tensor(tmp_path):
    bad = tg.ternary_bytes(random_ternary(4, 256), torch.tensor(0.5))
    bad[2, 7] = 0xFF  # codes 3 for weights 7, 39, 71, 103 of row 2
    path = write_gguf(tmp_path / "bad.gguf", "llama", {}, [
        ("blk.0.ffn_up.weight", bad, tg.TQ2_0, None),
        ("blk.0.ffn_gate.weight", np.zeros(64, np.uint8), 99, [4, 64]),
        ("blk.0.ffn_down.weight", spec_i2_s(np.zeros((4, 256)), 1.0), I2_S_TYPE, [4, 256])])
    with pytest.raises(ValueError, match=r"'blk.0.ffn_up.weight'.*invalid code 3 \(expected 0, "
                                         r"1 or 2: -1, 0, \+1\) at weight \[2, 7\]"):
        tg.read_ternary(path, "blk.0.ffn_up.weight")
    with pytest.raises(ValueError, match=r"'blk.0.ffn_gate.weight' \(unknown type 99.*not "
                                         "supported"):
        tg.GGUFFile(path).data("blk.0.ffn_gate.weight")
    with pytest.raises(ValueError, match=r"'blk.0.ffn_gate.weight'.*expected one of"):
        tg.read_ternary(path, "blk.0.ffn_gate.weight")
    data = (tmp_path / "bad.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:-40])
    with pytest.raises(ValueError, match=r"'blk.0.ffn_down.weight' \(I2_S.*past the end of the "
                                         "file"):
        tg.read_ternary(tmp_path / "cut.gguf", "blk.0.ffn_down.weight")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a GGUF file"):
        tops.load_gguf(tmp_path / "junk.gguf")
    with pytest.raises(ValueError, match="architecture 'gpt2' is not supported"):
        tops.load_gguf(write_gguf(tmp_path / "g.gguf", "gpt2", {}, []))
    with pytest.raises(ValueError, match="i2_s_layout='arm' is not supported"):
        tops.load_gguf(path, i2_s_layout="arm")
    model = converted(tiny_llama())
    tops.save_gguf(model, tmp_path / "m.gguf")
    kv, tensors = saved_parts(tmp_path / "m.gguf")
    extra = write_gguf(tmp_path / "extra.gguf", "llama", kv, list(tensors.values()) + [
        ("rope_freqs.weight", np.ones(32, np.float32), None, None)])
    with pytest.raises(ValueError, match=r"'rope_freqs.weight'.*no place for this tensor"):
        tops.load_gguf(extra)
    del tensors["blk.1.ffn_norm.weight"]
    missing = write_gguf(tmp_path / "missing.gguf", "llama", kv, list(tensors.values()))
    with pytest.raises(ValueError, match=r"lacks tensors the model needs: "
                                         r"\['model.layers.1.post_attention_layernorm.weight'\]"):
        tops.load_gguf(missing)


def saved_parts(path):
    """The metadata and tensors of a file ``save_gguf`` wrote (TQ2_0 and F32), to write again
    with changes."""
    f = tg.GGUFFile(path)
    kv = {k: v for k, v in f.metadata.items() if not k.startswith("general.")}
    tensors = {}
    for n, t in f.tensors.items():
        if t.type == tg.TQ2_0:
            tensors[n] = (n, f.data(n).numpy().reshape(t.shape[0], -1), t.type, None)
        else:
            tensors[n] = (n, f.data(n).view(torch.float32).reshape(t.shape).numpy(), None, None)
    return kv, tensors


def test_other_types_load_through_gguf(tmp_path):
    # a quantized embedding and head (Q8_0, as llama.cpp's tools write them) load dequantized,
    # F16 norms as they are
    model = converted(tiny_llama())
    tops.save_gguf(model, tmp_path / "m.gguf")
    kv, tensors = saved_parts(tmp_path / "m.gguf")
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name in ("token_embd.weight", "output.weight"):
        w = tensors[name][1]
        tensors[name] = (name, gguf.quants.quantize(w, q8), q8, None)
    norm = tensors["output_norm.weight"][1].astype(np.float16)
    tensors["output_norm.weight"] = ("output_norm.weight", norm, None, None)
    path = write_gguf(tmp_path / "q8.gguf", "llama", kv, list(tensors.values()))
    back = tops.load_gguf(path)
    for name, module in (("token_embd.weight", back.model.embed_tokens),
                         ("output.weight", back.lm_head)):
        want = gguf.quants.dequantize(tensors[name][1], q8)
        np.testing.assert_array_equal(module.weight.detach().numpy(), want)
    assert torch.equal(back.model.norm.weight, torch.from_numpy(norm).float())
    c0, s0 = parts(model, "model.layers.1.self_attn.k_proj")
    c1, s1 = parts(back, "model.layers.1.self_attn.k_proj")
    assert torch.equal(c0, c1) and torch.equal(s0, s1)


def test_gguf_is_optional(monkeypatch):
    out = subprocess.run([sys.executable, "-c", "import sys, ternary_ops; "
                          "print('gguf' in sys.modules)"], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match=r"pip install 'ternary-ops\[gguf\]'"):
        tops.load_gguf("any.gguf")


def test_vocab_round_trip(tmp_path):
    model = converted(tiny_llama())
    tops.save_gguf(model, tmp_path / "a.gguf")
    vocab = tg.gguf_vocab(tmp_path / "a.gguf")
    assert vocab == tg.placeholder_vocab(300)
    vocab["tokenizer.ggml.add_bos_token"] = True
    tops.save_gguf(model, tmp_path / "b.gguf", vocab=vocab)
    assert tg.gguf_vocab(tmp_path / "b.gguf") == vocab
    with pytest.raises(ValueError, match="needs vocab_size >= 259"):
        tg.placeholder_vocab(100)


# ---- BitNet files ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["bitnet", "bitnet-b1.58"])
def test_bitnet_files(tmp_path, arch):
    """A llama.cpp ``bitnet`` file (TQ2_0, SiLU, a ``.scale`` tensor) and a bitnet.cpp
    ``bitnet-b1.58`` one (I2_S, squared ReLU), written here by hand, against transformers'
    BitNet model holding the same weights densely. Neither permutes q / k."""
    config = transformers.BitNetConfig(
        vocab_size=300, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=True, hidden_act="silu" if arch == "bitnet" else "relu2")
    torch.manual_seed(0)
    ref = transformers.BitNetForCausalLM(config).eval()
    kv = {f"{arch}.{k}": v for k, v in dict(
        block_count=2, context_length=128, embedding_length=256, feed_forward_length=512,
        **{"attention.head_count": 4, "attention.head_count_kv": 2,
           "attention.layer_norm_rms_epsilon": 1e-5, "rope.freq_base": 10000.0}).items()}
    tensors = []
    names = dict(tg._BLOCK_NAMES, **tg._GLOBAL_NAMES)
    for gname, hf in names.items():
        for i in (range(2) if gname in tg._BLOCK_NAMES else [None]):
            full = hf if i is None else f"model.layers.{i}.{hf}"
            g = gname if i is None else f"blk.{i}.{gname}"
            try:
                module = ref.get_submodule(full)
            except AttributeError:
                continue
            w = module.weight.data
            if isinstance(module, torch.nn.Linear) and full != "lm_head":
                codes, s = tops.quantize(w)
                s = s.half().float()
                w.copy_(codes.float() * s)
                if arch == "bitnet":  # block scale d = s / 2 times a per-tensor .scale of 2
                    tensors.append((g + ".weight", tg.ternary_bytes(codes, s / 2), tg.TQ2_0,
                                    None))
                    tensors.append((g + ".scale", np.array([2.0], np.float32), None, None))
                else:
                    tensors.append((g + ".weight", spec_i2_s(codes.numpy(), s), I2_S_TYPE,
                                    list(codes.shape)))
            elif full != "lm_head":
                if full.endswith("norm"):
                    w.copy_(1 + 0.2 * torch.randn_like(w))
                tensors.append((g + ".weight", w.numpy().copy(), None, None))
    path = write_gguf(tmp_path / "b.gguf", arch, kv, tensors)
    model = tops.load_gguf(path, act="none", fold_norms=False)
    assert type(model).__name__ == "BitNetForCausalLM" and model.config.hidden_act == (
        config.hidden_act)
    q = model.model.layers[0].self_attn.qkv_proj
    assert isinstance(q, tops.TernaryLinear) and q.granularity == "channel"
    with torch.no_grad():
        torch.testing.assert_close(logits(model), ref(PROMPT).logits, rtol=1e-4, atol=1e-4)
