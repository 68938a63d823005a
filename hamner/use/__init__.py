"""Using a trained model: loading it with its tokenizer, generating text, exporting it.

    load       the one loader: a run, a checkpoint or a Hugging Face directory -> model (+ tokenizer)
    generate   sampling with cached decoding
    hf         Hugging Face Llama format: config, state-dict names, tokenizer files
    export     where `hamner export` may write a Hugging Face Llama directory (never into a run)
"""
