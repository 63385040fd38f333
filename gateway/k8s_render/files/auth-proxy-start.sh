#!/bin/sh
# Wait for TorchServe's key file, render the nginx config with both tokens, run nginx.
set -eu
key_file=/run/torchserve/key_file.json
inference_key=""
until [ -n "$inference_key" ]; do
    # key_file.json is written once TorchServe is up; read it flattened, retry until complete.
    inference_key=$( (tr -d ' \n' < "$key_file") 2>/dev/null | sed -n 's/.*"inference":{"key":"\([^"]*\)".*/\1/p')
    [ -n "$inference_key" ] || sleep 1
done
printf '%s' "$inference_key" > /tmp/torchserve-inference-key
POOL_TOKEN=$(cat /var/run/secrets/tiergate/pool-token/token)
TORCHSERVE_INFERENCE_KEY=$inference_key
export POOL_TOKEN TORCHSERVE_INFERENCE_KEY
envsubst '${POOL_TOKEN} ${TORCHSERVE_INFERENCE_KEY}' < /etc/tiergate/auth-proxy.conf.template > /tmp/nginx.conf
exec nginx -c /tmp/nginx.conf -g 'daemon off;'
