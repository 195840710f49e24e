"""The architectures built on the memory (paper §3.3-4, Eqs. 19-31; notebooks 07-11).

    attention      07     causal, sliding-window and segment masks (Fig. 3), RoPE, the KV cache, the backends
    flex           07     the FlexAttention path for long sequences on GPU
    persistent     07     persistent memory (Eq. 19) and the parts every hybrid is made of
    blocks         07     the pre-norm residual block, SwiGLU, and the gate of Eqs. 25 and 28
    lmm            10     the memory alone as the sequence mixer
    mac            08     memory as a context (Eqs. 21-25)
    mag            09     memory as a gate (Eqs. 26-28)
    mal            10     memory as a layer (Eqs. 29-31)
    baselines      07     Transformer++ and sliding-window attention
    config         08-11  ModelConfig, the variants and the presets from tiny to the paper's 760M
    lm             08-11  the language model around any mixer, and build_model
    generate       08-10  streaming generation with a carried state
"""
