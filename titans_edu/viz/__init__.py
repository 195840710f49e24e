"""Widgets and static figures for the notebooks. Each explorer is a function that returns an ipywidgets
box; its update callback is a plain function of the slider values, unit-tested without a browser.

    memory_views     notebooks 01-02: key-value recall, capacity, the weight heatmap
    surprise_views   notebooks 03-05: surprise, momentum and forgetting on a stream
    chunk_views      notebook 06: chunk size, the decay matrices, speed
"""
