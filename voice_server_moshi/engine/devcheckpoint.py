"""The dev model: a tiny, random, Moshi-shaped Mimi + LM + tokenizer, built on the spot.

It has Moshi's structure (Mimi at 24 kHz and 12.5 Hz with 1920-sample frames, an LM with
8 + 8 audio streams and a depformer of 8, Moshi's delays and text special ids) at a
fraction of the size, with random weights. It **babbles**: it exists for plumbing, tests
and benchmarks, never for conversation quality. The weights and the tokenizer are a pure
function of the seed (same bytes every time). :mod:`.checkpoints` writes them to disk as a
checkpoint the ``moshi`` package's own loaders (and Kyutai's ``moshi.server``) read.
Needs the ``embedded`` extra (torch, moshi, sentencepiece, safetensors).
"""

from __future__ import annotations

import io
from typing import Any

#: The files of a dev checkpoint directory (:mod:`.checkpoints` reads them).
CONFIG_NAME = "config.json"
MOSHI_WEIGHTS_NAME = "dev_moshi.safetensors"
MIMI_WEIGHTS_NAME = "dev_mimi.safetensors"
MIMI_CONFIG_NAME = "dev_mimi_config.json"
TOKENIZER_NAME = "dev_tokenizer.model"

#: Text vocabulary (``text_card``) of the dev LM; the tokenizer is trained to this size.
TEXT_CARD = 128
#: Audio codebook size of the dev Mimi (``bins``) and LM (``card``).
AUDIO_CARD = 256

#: The first QUIET_CODES codes of Mimi's first (semantic) codebook decode to silence, and
#: the LM keeps emitting them once it has started (see ``_wire_turn_taking``).
QUIET_CODES = 12
#: RMS the dev Mimi decoder is scaled to for non-quiet codes (about -20 dBFS).
AGENT_RMS = 0.1
#: Spread of the per-code gains of the semantic codebook, so the level follows the tokens.
#: Wide, as between syllables: the agent detector's floor is the quietest frame of the last
#: 3 s, and with 15 dB a turn longer than that became the floor and went undetected.
GAIN_SPREAD_DB = 30.0

#: Tiny Mimi. Only the sizes shrink: ratios [8, 6, 5, 4] (hop 960, 25 Hz encoder frames,
#: one learnt 2x downsample to 12.5 Hz), 24 kHz, causal, split RVQ of 8 codebooks.
DEV_MIMI_CONFIG: dict[str, Any] = {
    "sample_rate": 24000,
    "channels": 1,
    "frame_rate": 12.5,
    "seanet": {
        "channels": 1,
        "dimension": 32,
        "causal": True,
        "n_filters": 4,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": [8, 6, 5, 4],
        "true_skip": True,
    },
    "quantizer": {
        "dimension": 16,
        "n_q": 8,
        "bins": AUDIO_CARD,
        "input_dimension": 32,
        "output_dimension": 32,
    },
    "transformer": {
        "d_model": 32,
        "num_heads": 2,
        "num_layers": 1,
        "causal": True,
        "layer_scale": 0.01,
        "context": 250,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": 64,
        "input_dimension": 32,
        "output_dimensions": [32],
    },
}

#: Tiny LM with Moshi's stream layout: text + 8 agent + 8 user codebooks, depformer over
#: the 8 agent codebooks, Moshi's delays, PAD = 3 and EPAD = 0 as in the real tokenizer.
DEV_LM_CONFIG: dict[str, Any] = {
    "dim": 64,
    "text_card": TEXT_CARD,
    "existing_text_padding_id": 3,
    "n_q": 16,
    "dep_q": 8,
    "card": AUDIO_CARD,
    "num_heads": 4,
    "num_layers": 2,
    "hidden_scale": 4.125,
    "causal": True,
    "layer_scale": None,
    "context": 3000,
    "max_period": 10000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "depformer_dim": 32,
    "depformer_dim_feedforward": 132,
    "depformer_num_heads": 2,
    "depformer_num_layers": 1,
    "depformer_layer_scale": None,
    "depformer_multi_linear": True,
    "depformer_context": 8,
    "depformer_max_period": 10000,
    "depformer_gating": "silu",
    "depformer_pos_emb": "none",
    "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}

# Training text for the tokenizer: enough distinct material for a 128-piece unigram model.
_CORPUS = """\
Hello, thank you for calling. How can I help you today?
I would like to check the status of my order, please.
Sure, can you give me your order number and the name on the account?
The weather is lovely this morning, with a light breeze from the west.
Please hold the line while I transfer you to the right department.
We are open from nine in the morning until six in the evening.
Could you repeat that more slowly? The connection is a little noisy.
Of course. My phone number is five five five, one two three four.
The quick brown fox jumps over the lazy dog near the river bank.
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
Yesterday we walked to the market, bought fresh bread, cheese and a few apples.
Would you like a receipt by email or by text message?
Thanks a lot, have a wonderful day and goodbye.
Your appointment is confirmed for Tuesday at half past two in the afternoon.
I am sorry to hear that. Let me see what I can do for you right now.
Numbers: zero, one, two, three, four, five, six, seven, eight, nine, ten.
Questions, answers, jokes and stories: people talk about everything on the phone.
A journey of a thousand miles begins with a single step, they say.
Just a moment, I am looking that up in our system.
Everything looks fine on our side; the package should arrive on Friday.
"""


def train_tokenizer(vocab_size: int, seed: int) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    lines = _CORPUS.splitlines()
    # The seed picks a deterministic rotation of the corpus, so different seeds give
    # different (still deterministic) tokenizers without randomness inside sentencepiece.
    k = seed % len(lines)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines[k:] + lines[:k]),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        # Moshi's ids: 0 is EPAD (here <unk>), 3 is PAD; the server hides both.
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def _state_bytes(state: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    # One metadata key only: safetensors writes its metadata map in hash order.
    # Copies: safetensors refuses tensors that share storage, and wants contiguous data.
    flat = {k: v.detach().contiguous().clone() for k, v in state.items()}
    data: bytes = save(flat, metadata={"format": "pt"})
    return data


def _init_codebooks(mimi: Any, seed: int) -> None:
    """Give every RVQ level centroids drawn from the latents it will see.

    An untrained codebook is all zeros, and random centroids far from the random encoder's
    latents make every input map to the same code, so the LM would never hear the caller.
    Sampling centroids from encoded audio (k-means++'s first step, level by level on the
    residuals) keeps the dev model input-dependent, which the equivalence tests need.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    sr = DEV_MIMI_CONFIG["sample_rate"]
    bins = int(mimi.quantizer.rvq_first.vq.layers[0]._codebook.codebook_size)
    # 24 s: 300 latent frames at 12.5 Hz, more than AUDIO_CARD centroids per level; a
    # larger codebook (dev-personaplex's 2048) gets as many seconds as it needs.
    seconds = 24 if bins <= 256 else bins // 12 + 4
    t = torch.arange(seconds * sr, dtype=torch.float32) / sr
    # Gliding tones under a syllable-rate envelope, plus noise: varied, speech-like input.
    f0 = 120 + 80 * torch.sin(2 * torch.pi * 0.3 * t) + 40 * torch.rand(1, generator=gen)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / sr
    env = 0.5 + 0.5 * torch.sin(2 * torch.pi * 4.0 * t + torch.rand(1, generator=gen) * 6)
    audio = 0.3 * env * (torch.sin(phase) + 0.5 * torch.sin(3.1 * phase))
    audio = audio + 0.05 * torch.randn(audio.shape, generator=gen)
    with torch.no_grad():
        emb = mimi._encode_to_unquantized_latent(audio[None, None])  # [1, D, T]
        q = mimi.quantizer
        for rvq in (q.rvq_first, q.rvq_rest):
            residual = rvq.input_proj(emb)  # [1, d, T]
            for layer in rvq.vq.layers:
                cb = layer._codebook
                x = layer._rearrange_input(residual)  # [1, T, d]
                x = layer.project_in(x)[0]  # [T, d]
                pick = torch.randperm(x.shape[0], generator=gen)[: cb.codebook_size]
                cb.embedding_sum.copy_(x[pick] + 1e-3 * torch.randn(
                    (cb.codebook_size, x.shape[1]), generator=gen))
                cb.cluster_usage.fill_(1.0)
                cb._initialized.fill_(1.0)
                cb._embedding = None  # drop the cached centroids
                residual = residual - layer.decode(layer.encode(residual))


def _shape_decoder(mimi: Any, seed: int) -> None:
    """Make the random Mimi decoder audible, and silent for the quiet codes.

    At PyTorch's default init every layer shrinks its input (the code-dependent signal
    reached the output at ~5e-5 RMS) while the biases add a constant at each layer, so the
    output was a fixed ~0.08 DC offset plus a hop-periodic ripple, the same whatever the
    codes. And the decoder transformer's branches, fed layer-normalised copies of that
    tiny signal, outweighed its residual path and smeared past frames into silent ones.
    So: no biases on the decode path (zero latent -> zero audio), no transformer branches
    (a pass-through, layer scales 0), the last conv scaled so that ordinary codes decode
    at ``AGENT_RMS``, the acoustic levels (``rvq_rest``) turned down under the semantic
    one, per-code gains on the semantic codebook (``GAIN_SPREAD_DB``, so the level follows
    the tokens), and the first ``QUIET_CODES`` semantic centroids set to zero: silence.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        for name, param in mimi.named_parameters():
            if name.endswith(".bias") and name.startswith(("decoder", "upsample")):
                param.zero_()
        for layer in mimi.decoder_transformer.transformer.layers:
            layer.layer_scale_1.scale.zero_()
            layer.layer_scale_2.scale.zero_()
        # Real Mimi's first levels carry most of the energy; -30 dB keeps the acoustic
        # codes audible as texture but leaves quiet frames ~20 dB under speech.
        mimi.quantizer.rvq_rest.output_proj.weight.mul_(0.03)
        cb = mimi.quantizer.rvq_first.vq.layers[0]._codebook
        bins = int(cb.codebook_size)
        gains = 10 ** (-GAIN_SPREAD_DB / 20 * torch.rand(bins, generator=gen))
        cb.embedding_sum.mul_(gains[:, None])
        cb.embedding_sum[:QUIET_CODES] = 0.0
        cb._embedding = None  # drop the cached centroids
        codes = torch.randint(QUIET_CODES, bins, (1, 8, 50), generator=gen)
        rms = float(mimi.decode(codes).pow(2).mean().sqrt())
        # Three significant digits: the factor is computed through convolutions, and
        # rounding it keeps last-bit differences between kernels out of the bytes.
        scale = float(f"{AGENT_RMS / rms:.3g}")
        mimi.decoder.model[-1].conv.conv.weight.mul_(scale)


def _wire_turn_taking(lm: Any) -> None:
    """Give the random LM a speaking/quiet state, so its babble comes in turns.

    Sampled from random logits, the agent's semantic codes are close to independent frame
    to frame, so a quiet code would only ever make 80 ms gaps. Real Moshi stays silent
    once it is, because its silence tokens predict silence. The same is wired here through
    channel 0 of the residual streams, which only this circuit writes: the embedding of a
    quiet agent semantic code (the main transformer's input at the next step) puts a
    constant there, the transformer layers and other embeddings never write it, the
    depformer's first step reads it and nothing else into its own channel 0, and the
    first codebook's output layer turns that channel into a logit bonus for the quiet
    codes. Falling quiet happens at the random-weight rate (~5% a frame with 12 of 256
    codes), staying quiet at ~94% a frame (mean ~1.3 s), so turns of a few seconds
    alternate with pauses of a second or so; the user streams still steer the other logits.
    """
    import torch

    with torch.no_grad():
        for emb in [lm.text_emb, *lm.emb]:
            emb.weight[:, 0] = 0.0
        lm.emb[0].weight[:QUIET_CODES, 0] = 4.0  # emb[0]: the agent's semantic stream
        for layer in lm.transformer.layers:
            layer.self_attn.out_projs[0].weight[0, :] = 0.0
            layer.gating.linear_out.weight[0, :] = 0.0
        dep_in = lm.depformer_in[0].weight  # depformer step 0: the semantic codebook
        dep_in[0, :] = 0.0
        dep_in[:, 0] = 0.0
        dep_in[0, 0] = 1.0
        lm.depformer_text_emb.weight[:, 0] = 0.0
        for layer in lm.depformer.layers:
            layer.self_attn.out_projs[0].weight[0, :] = 0.0
            layer.gating[0].linear_out.weight[0, :] = 0.0
        lm.linears[0].weight[:, 0] = 0.0
        lm.linears[0].weight[:QUIET_CODES, 0] = 1.5


def build_weights(seed: int) -> tuple[bytes, bytes]:
    import torch

    # One intra-op thread while building: the codebooks and the decoder's scale come from
    # convolutions over audio, whose float sums depend on how the work is split between
    # threads: built with 1 and with 2 threads, the same seed gave different Mimi bytes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build_weights_one_thread(seed)
    finally:
        torch.set_num_threads(threads)


def _build_weights_one_thread(seed: int) -> tuple[bytes, bytes]:
    mimi, lm = build_models(seed, DEV_MIMI_CONFIG, DEV_LM_CONFIG)
    return _state_bytes(mimi.state_dict()), _state_bytes(lm.state_dict())


def build_models(seed: int, mimi_config: dict[str, Any], lm_config: dict[str, Any]
                 ) -> tuple[Any, Any]:
    """The dev Mimi and LM of these configurations (their weights a pure function of
    ``seed``), as modules; one intra-op thread expected (see :func:`build_weights`)."""
    import torch
    from moshi.models import loaders
    from moshi.models.lm import LMModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mimi = loaders.get_mimi(None, mimi_config, device="cpu", num_codebooks=8)
        _init_codebooks(mimi, seed)
        _shape_decoder(mimi, seed)
        torch.manual_seed(seed + 2)
        lm = LMModel(device="cpu", dtype=torch.float32, **lm_config)
        _wire_turn_taking(lm)
    return mimi, lm
