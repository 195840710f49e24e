"""Widgets and static figures for the notebooks. Each explorer is a function that returns an ipywidgets
box; its update callback is a plain function of the slider values, unit-tested without a browser.

    memory_views      notebooks 01-02: key-value recall, capacity, the weight heatmap
    stream_trace      notebooks 03-05: a stream written token by token, every step measured
    surprise_views    notebooks 03-05: surprise, momentum and forgetting on a stream
    chunk_views       notebook 06: chunk size, the decay matrices, drift from the online rule
    stability_views   notebook 06: a chunk's total step against eta, and where the plain rule diverges
    layer_views       notebook 06b: the layer's gates and surprise token by token, what each output depends on
    mask_views        notebook 07: the masks of Fig. 3 and their explorer
    attention_views   notebooks 07-08: attention weights, attention sinks, one MAC segment step by step
    gate_views        notebooks 09-10: MAG's gate and branches, MAL and LMM
    architecture_views notebooks 08-10: the data flow of MAC, MAG and MAL (Figs. 2, 4, 5), equations on the arrows
    explorer          the ipywidgets wiring every explorer shares: controls, readout, figure area
"""
