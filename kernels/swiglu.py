from kernels.reference import swiglu  # TEMPORARY: replaced by the Triton kernel module
