# A CPU TorchServe pool: the int8 MARs (and the gpu/fp32 MARs, which run their fp32 program
# on a CPU, for the cpu-only overlay). Build the MARs first, then from the repository root:
#   tiergate build-models
#   docker build -f k8s/images/pool-cpu.Dockerfile -t tiergate/pool-cpu:0.1.0 .
# An int8 MAR holds native code for the vector ISA of the CPU that built it (variant.json "isa"):
# build on the CPU type of the pool's nodes (or a narrower one), or its workers serve the fp32
# program the MAR also carries, reporting cpu-fp32.
FROM python:3.11-slim-bookworm
# checkov:skip=CKV_DOCKER_2:Kubernetes probes check health (k8s/base); a HEALTHCHECK is ignored there

# A CPU-only torch wheel index saves ~4 GB of CUDA libraries; empty means PyPI's default build.
ARG TORCH_INDEX_URL=""
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.14.1 torchvision==0.29.1 \
 && pip install --no-cache-dir torchserve==0.12.0 "pillow>=10" "pyyaml>=6" "numpy>=1.26" "captum>=0.8"

# uid 10001 matches the pods' securityContext (gateway/k8s_render/common.py POOL_UID).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/model-server model-server \
 && mkdir -p /home/model-server/run && chown 10001:10001 /home/model-server/run
# Every MAR the build made (the .dockerignore beside this file lets only MARs in).
COPY --chown=10001:10001 artifacts/model-store/ /home/model-server/model-store/

USER 10001
WORKDIR /home/model-server/run
CMD ["torchserve", "--start", "--foreground", "--ncs", "--model-store", "/home/model-server/model-store", "--ts-config", "/etc/torchserve/config.properties"]
