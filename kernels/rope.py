from kernels.reference import rope_cache, apply_rope  # TEMPORARY: replaced by the Triton kernel module
