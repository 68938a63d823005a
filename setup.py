"""Install Hamner: `pip install -e .` (add `[test]` for the test suite, `[flash]` for flash-attn,
`[fla]` for flash-linear-attention's kernels under the Hebbian memory)."""
from setuptools import setup

setup(
    name="hamner",
    version="0.1.0",
    description="A fast trainer for small Llama-style language models with a staged curriculum",
    python_requires=">=3.10",
    packages=["hamner", "hamner.kernels", "hamner.data"],
    package_data={"hamner": ["curricula/*.toml"]},
    install_requires=[
        "torch>=2.5",
        "triton; platform_system=='Linux'",
        "numpy",
        "numba",
        "tokenizers",
        "datasets",
        "safetensors",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "transformers", "pyarrow"],
        "flash": ["flash-attn"],
        "fla": ["flash-linear-attention"],
    },
)
