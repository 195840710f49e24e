"""Training at any size, on one CPU, one GPU or many (paper §5; notebook 11).

    trainer        the loop: accumulation, clipping, AdamW with warmup and cosine decay, evals, checkpoints
    config         TrainConfig: the paper's recipe as defaults, overrides from a file or the command line
    data           the embedded corpus, text files and token memmaps; which windows each step trains on
    prepare        tokenising a corpus once into memmaps
    tokenizer      bytes, or a tokenizer.json
    checkpoint     atomic checkpoints that resume a run exactly
    run_log        metrics, the loss plot, text samples
    parallel       devices, precision, DDP/FSDP, activation checkpointing, torch.compile
    scaling        parameters, FLOPs and training memory of the presets, counted from the code
"""
