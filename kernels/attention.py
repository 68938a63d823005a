from kernels.reference import attention  # TEMPORARY: replaced by the dispatch module

def attention_backend() -> str:
    return "reference"
