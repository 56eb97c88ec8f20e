#!/bin/sh
# pip for the image builds. The index comes from pip's own build arguments (PIP_INDEX_URL, ...);
# a CA bundle given as the build secret `pip-ca` (--secret id=pip-ca,src=ca.pem) is trusted for
# this one command, and is never part of a layer.
set -eu
if [ -s /run/secrets/pip-ca ]; then
    PIP_CERT=/run/secrets/pip-ca
    export PIP_CERT
fi
exec pip "$@"
