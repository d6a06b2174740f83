#!/usr/bin/env bash
# `make demo`: an offline demo CA, certificates and an HTTP certificate bundle in ./certctl-demo.
set -euo pipefail
DEMO=${CERTCTL_DEMO_DIR:-certctl-demo}
CERTCTL=.venv/bin/certctl
if [ -e "$DEMO" ]; then
  echo "$DEMO/ exists already; remove it for a fresh demo. What it holds:"
  find "$DEMO" -maxdepth 2 | sort
  exit 0
fi
mkdir -p "$DEMO"
$CERTCTL ca create --out "$DEMO/ca" --cn "certctl demo CA"
$CERTCTL cert issue --ca "$DEMO/ca" --cn localhost --dns localhost --ip 127.0.0.1 --ip ::1 --out "$DEMO/server"
$CERTCTL cert issue --ca "$DEMO/ca" --cn demo-client --profile client --out "$DEMO/client"
$CERTCTL http --non-interactive --ca "$DEMO/ca" --node node-1 --dns localhost --ip 127.0.0.1 \
  --pem --profile generic --out "$DEMO/http-bundle.zip"
$CERTCTL verify --ca "$DEMO/ca/ca.crt" "$DEMO/server/tls.crt" --hostname 127.0.0.1
cat <<TXT

Demo PKI in $DEMO/:
  CA                $DEMO/ca/ca.crt (key $DEMO/ca/ca.key, mode 0600)
  server cert       $DEMO/server/tls.crt, tls.key  (localhost, 127.0.0.1, ::1)
  client cert       $DEMO/client/tls.crt, tls.key
  HTTP bundle       $DEMO/http-bundle.zip (certutil-style: node folder, client folder, samples)
Try:  $CERTCTL inspect $DEMO/server/tls.crt
      openssl verify -CAfile $DEMO/ca/ca.crt $DEMO/server/tls.crt
TXT
