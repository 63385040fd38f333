#!/bin/sh
# Liveness: the key nginx was started with is still the one TorchServe accepts.
tr -d ' \n' < /run/torchserve/key_file.json | grep -qF "\"inference\":{\"key\":\"$(cat /tmp/torchserve-inference-key)\""
