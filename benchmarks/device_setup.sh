# Source this on a lent GPU machine from the repository root: `. benchmarks/device_setup.sh`.
# The image has torch, transformers and accelerate but not DeepSpeed, pydantic, hjson, jsonschema or torchao, and no
# network: carry them as wheels in .whl/ (pip download --no-deps --only-binary=:all: --python-version 3.12 ...; DeepSpeed
# 0.19.8 as its sdist) and this installs them under /tmp/site, with DeepSpeed's ops left to JIT-build on first use.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
  DS_BUILD_OPS=0 python3 -m pip install -q --no-build-isolation --no-deps --no-index --target /tmp/site \
    .whl/deepspeed-0.19.8.tar.gz &&
  export PYTHONPATH="/tmp/site:$PWD"
