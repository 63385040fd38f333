# The gateway image: Ray 2.60 with the tiergate package. Build from the repository root:
#   docker build -f k8s/images/gateway.Dockerfile -t tiergate/gateway:0.1.0 .
FROM rayproject/ray:2.60.0-py311
# checkov:skip=CKV_DOCKER_2:Kubernetes probes check health (k8s/base); a HEALTHCHECK is ignored there

# The gateway never loads a model: install the package without its torch/TorchServe
# dependencies, then only what the gateway imports (ray[serve] and starlette are in the base).
COPY --chown=ray:users pyproject.toml README.md /tmp/tiergate/
COPY --chown=ray:users gateway /tmp/tiergate/gateway
COPY --chown=ray:users torchserve_backend /tmp/tiergate/torchserve_backend
RUN pip install --no-cache-dir --no-deps /tmp/tiergate \
 && pip install --no-cache-dir "httpx==0.28.1" "pydantic>=2.7,<3" "pyyaml>=6" "prometheus-client>=0.20" "orjson>=3.10" "uvloop>=0.19" "aiohttp>=3.9" "jsonschema>=4.23" "numpy>=1.26" \
 && rm -rf /tmp/tiergate \
 && python -c "import gateway.app"

USER 1000
