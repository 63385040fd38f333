# The GPU TorchServe pool: the gpu MARs with Torch-TensorRT to load their TensorRT FP16 engine.
# The engine inside the MAR is compiled for the GPU that built it, so run `tiergate build-models`
# on a host with the cluster's GPU model, CUDA and torch-tensorrt; elsewhere the MAR carries the
# fp32 program only and the handler reports inductor-cuda. Then, from the repository root:
#   docker build -f k8s/images/pool-gpu.Dockerfile -t tiergate/pool-gpu:0.1.0 .
# The NVIDIA driver comes from the node (GPU operator / container toolkit), not from this image.
FROM python:3.11-slim-bookworm
# checkov:skip=CKV_DOCKER_2:Kubernetes probes check health (k8s/base); a HEALTHCHECK is ignored there

RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
# PyPI's torch 2.14.1 wheel carries its CUDA libraries; torch-tensorrt 2.14 is built against it.
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 "torch-tensorrt==2.14.*" \
 && pip install --no-cache-dir torchserve==0.12.0 "pillow>=10" "pyyaml>=6" "numpy>=1.26" "captum>=0.8"

RUN useradd --uid 10001 --user-group --create-home --home-dir /home/model-server model-server \
 && mkdir -p /home/model-server/run && chown 10001:10001 /home/model-server/run
COPY --chown=10001:10001 artifacts/model-store/*-gpu.mar /home/model-server/model-store/

USER 10001
WORKDIR /home/model-server/run
CMD ["torchserve", "--start", "--foreground", "--ncs", "--model-store", "/home/model-server/model-store", "--ts-config", "/etc/torchserve/config.properties"]
