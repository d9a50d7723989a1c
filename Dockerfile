# GPU image for ncf: a CUDA build of PyTorch, the tool's requirements, then its source.
#
#   docker build -t ncf .
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:<another tag> -t ncf .
#   docker run --gpus all --ipc=host -v "$PWD/data:/workspace/ncf/data" ncf \
#       torchrun --standalone --nproc_per_node=8 ncf.py --data data/ml20m --amp
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /workspace/ncf

# Requirements before the source, so that editing the code does not reinstall them. The base image's torch is
# pinned as a constraint, so pip keeps that CUDA build instead of fetching another.
COPY requirements.txt .
RUN python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > /tmp/constraints.txt \
    && pip install --no-cache-dir -r requirements.txt -c /tmp/constraints.txt \
    && rm /tmp/constraints.txt

COPY . .

# Without arguments the container trains on the built-in demo dataset; pass a command to run anything else.
CMD ["python", "ncf.py"]
