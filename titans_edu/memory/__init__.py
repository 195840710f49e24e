"""The neural long-term memory of Titans (paper §3.1-3.2, Eqs. 8-18; notebooks 01-06).

Each fast path sits beside its plain twin, and the tests hold them equal in float64:

    networks       01-02  the memory networks M: linear (depth 1), MLP, any nn.Module; the loss of Eq. 12
    naive          03-05  the update rule as a per-token loop: surprise, momentum, forgetting (Eqs. 8-15);
                          the reference for everything else
    coefficients   06     the scalars of one chunk (Eqs. 16-18) and the decay matrices they are built from
    chunked        06     the chunked rule: the plain dual form of one chunk, and the loop over chunks
    fused_chunk    06     the same chunk step as one autograd node with a hand-written backward pass
    state                 the memory state carried between calls: M_t, M_{t'}, S_t, the position
    layer          03-08  NeuralMemory: projections, convolutions, gates, the rule, the output (§4.4)
"""
