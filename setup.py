"""Build the optional compiled kernels of the CPU search (everything else is in pyproject.toml).

``optional=True``: where no C compiler is found the install goes on without
them and the search uses its numpy merge (trainleak._topk.native() is None).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "trainleak._ctopk",
            ["src/trainleak/_ctopk.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
